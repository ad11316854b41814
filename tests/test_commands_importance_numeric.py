"""`dit-compress importance` on damaged teachers (compress/commands_importance.py): a NaN in the
checkpoint, a weight beyond the compute dtype, a prediction that overflows or is zero, a block whose
skip overflows: one line naming what and where, exit 3, never a table of '-' headed "the cosine proxy
(no skip scan)" after a skip scan that ran."""

import math

import torch

from compress.cli import main
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE


def _recipe(tmp_path, edit=None):
    """A recipe naming a tiny PixArt teacher saved in tmp_path/teacher after edit(model)."""
    model = tiny_pixart()
    with torch.no_grad():
        if edit is not None:
            edit(model)
    model.save_pretrained(tmp_path / "teacher")
    svd = "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2}\n"
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=svd))
    return tmp_path / "r.yaml"


def _importance(tmp_path, recipe, *args):
    return main(["importance", str(recipe), "--png", str(tmp_path / "i.png"), "--json", str(tmp_path / "i.json"),
                 *args])


def _set(name: str, value: float):
    return lambda model: model.get_parameter(name).view(-1).__setitem__(3, value)


def test_a_nan_in_the_teacher_is_named_as_run_names_it(tmp_path, capsys):
    """It printed a table of '-' under 'the cosine proxy (no skip scan)' and exited 0; run refused it."""
    recipe = _recipe(tmp_path, _set("transformer_blocks.2.attn1.to_v.weight", math.nan))
    assert _importance(tmp_path, recipe) == 3
    captured = capsys.readouterr()
    assert captured.err == (f"dit-compress importance: numeric error: teacher weight transformer_blocks.2.attn1.to_v.weight in "
                            f"{tmp_path / 'teacher' / 'diffusion_pytorch_model.safetensors'} has 1 NaN/Inf values\n")
    assert "Block importance" not in captured.out and not (tmp_path / "i.json").exists()


def test_a_weight_beyond_float16_is_said_to_overflow_it(tmp_path, capsys):
    recipe = _recipe(tmp_path, _set("transformer_blocks.1.ff.net.0.proj.weight", 1.62e5))
    assert _importance(tmp_path, recipe, "--set", "compute_dtype=float16") == 3
    err = capsys.readouterr().err
    assert "transformer_blocks.1.ff.net.0.proj.weight (in " in err and "holds values up to 1.62e+05, beyond " \
        "float16's range (max 65504): use compute_dtype bfloat16 or float32" in err


def test_a_prediction_that_overflows_names_the_layer_where_it_does(tmp_path, capsys):
    """Finite weights whose product overflows float32: the scan's errors were all NaN."""
    recipe = _recipe(tmp_path, lambda m: m.transformer_blocks[1].ff.net[2].weight.mul_(1e38))
    assert _importance(tmp_path, recipe) == 3
    err = capsys.readouterr().err.splitlines()[-1]  # after the scan's progress
    assert err.startswith("dit-compress importance: numeric error: the teacher's prediction holds NaN/Inf on calibration batch "
                          "1 of 2 in compute_dtype float32: transformer_blocks.1.ff.net.2's output is the first to "
                          "hold it (its inputs were finite); the checkpoint's weights overflow even in float32"), err


def test_a_teacher_predicting_zero_says_no_skip_error_can_be_measured(tmp_path, capsys):
    def zero(model):
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()

    assert _importance(tmp_path, _recipe(tmp_path, zero)) == 3
    assert "the teacher predicts 0 on every calibration input, so no skip error can be measured" in \
        capsys.readouterr().err


def test_a_block_whose_skip_gives_nan_is_named(tmp_path, capsys, monkeypatch):
    """The teacher finite, the prediction with one block skipped not: that block is named (the scan's
    result stands in for a skip that overflows; the teacher's own prediction is computed for real)."""
    import compress.passes.importance as importance

    real = importance.scan

    def scan(*a, **k):
        result = real(*a, **k)
        result.blocks[1].scan = math.nan
        return result

    monkeypatch.setattr(importance, "scan", scan)
    assert _importance(tmp_path, _recipe(tmp_path)) == 3
    assert capsys.readouterr().err.splitlines()[-1] == (
        "dit-compress importance: numeric error: importance: skipping transformer_blocks.1 makes the teacher's prediction hold "
        "NaN/Inf in compute_dtype float32 (with every block it is finite), so its skip error cannot be measured")
    monkeypatch.setattr(importance, "scan", real)
    assert _importance(tmp_path, tmp_path / "r.yaml") == 0  # the same teacher scanned for real: finite
