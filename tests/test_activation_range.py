"""compress.activation_range: the largest |activation| of each block and linear, against an export dtype."""

import pytest
import torch

from compress.activation_range import (block_names, computed_wider_words, largest_abs, near_range, per_block,
                                       range_words, recording_maxima)
from compress.arch import get_adapter
from tests.conftest import pixart_inputs, tiny_flux, flux_inputs, tiny_pixart


def test_largest_abs_reads_a_tensor_or_a_tuple_and_counts_nan_as_inf():
    assert largest_abs(torch.tensor([1.0, -3.0])) == 3.0
    assert largest_abs((torch.tensor([2.0]), torch.tensor([-5.0]), None)) == 5.0  # Flux's double blocks: two
    assert largest_abs(torch.tensor([1.0, float("nan")])) == float("inf")
    assert largest_abs(torch.tensor([3, 4])) == 0.0 and largest_abs(None) == 0.0


def test_near_range_is_float16s_alone_from_half_its_max():
    maxima = {"a": 100.0, "b": 40000.0, "c": 1.4e7}
    assert near_range(maxima, torch.float16) == [("b", 40000.0), ("c", 1.4e7)]  # 40000 > 65504 / 2
    assert near_range(maxima, torch.bfloat16) == [] and near_range(maxima, torch.float32) == []


def test_range_words_name_the_largest_the_first_and_what_to_export():
    words = range_words([("blocks.1.ff", 1.4e5), ("blocks.2.to_q", 2.5e5)], torch.float16)
    assert words.startswith("export.dtype float16: on the held-out inputs the exported model's activations "
                            "reach 2.5e+05 at blocks.2.to_q, beyond float16's range (max 65504): run in float16 "
                            "it gives inf/NaN; first at blocks.1.ff (1.4e+05); 2 block or linear output(s)")
    assert words.endswith("export bfloat16 (float32's range) or float32")
    near = range_words([("blocks.0", 40000.0)], torch.float16)
    assert "reach 4e+04 at blocks.0, within 2x of float16's max 65504: other inputs may overflow" in near
    assert "first at" not in near


def test_per_block_folds_modules_into_their_block_and_keeps_the_others():
    maxima = {"t.linear": 2.0, "blocks.1.ff": 7.0, "blocks.1": 5.123456, "blocks.10.x": 1.0, "proj_out": 3.0}
    assert per_block(maxima, ["blocks.1", "blocks.10"]) == {"t.linear": 2.0, "blocks.1": 7.0, "blocks.10": 1.0,
                                                           "proj_out": 3.0}


def test_recording_maxima_sees_each_block_and_linear_and_leaves_no_hook():
    model = tiny_pixart()
    adapter = get_adapter(model)
    with torch.no_grad():
        model.transformer_blocks[1].ff.net[2].weight.mul_(10000)  # weights ~1e4 (float16 holds them)
        with recording_maxima(model, adapter) as maxima:
            model(**pixart_inputs(model))
    assert block_names(model, adapter) == ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]
    assert near_range(maxima, torch.float16)[0][0] == "transformer_blocks.1.ff.net.2"  # where it starts
    assert maxima["transformer_blocks.0"] < 1000 < 65504 < maxima["transformer_blocks.1"]
    assert not any(m._forward_hooks for m in model.modules())
    half = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in pixart_inputs(model).items()}
    with torch.no_grad():  # the same model run in float16 overflows: what the warning is for
        assert not torch.isfinite(model.half()(**half).sample).all()


def test_recording_maxima_reads_flux_blocks_tuples():
    model = tiny_flux()
    with torch.no_grad(), recording_maxima(model, get_adapter(model)) as maxima:
        model(**flux_inputs(model))
    assert {"transformer_blocks.0", "single_transformer_blocks.2"} <= set(maxima)
    assert all(0 < v < float("inf") for v in maxima.values())


def test_computed_wider_words_only_for_a_float16_output_computed_wider():
    words = computed_wider_words("out", "float16", "float32", {"blocks.0": 3.0, "blocks.1": 2.5e5})
    assert words == ("out holds float16 weights, computed here in float32 (its recipe's compute_dtype, as the run "
                     "measured them): an activation beyond float16's range (max 65504), inf/NaN run in float16, "
                     "does not show in this error; the run recorded activations up to 2.5e+05 (blocks.1; report.json "
                     "export.activation_max)")
    assert computed_wider_words("out", "float16", "bfloat16", None).endswith("does not show in this error")
    assert computed_wider_words("out", "bfloat16", "float32", {}) is None
    assert computed_wider_words("out", "float16", "float16", {}) is None


def test_narrower_tells_float16_alone():
    from compress.activation_range import narrower

    assert narrower(torch.float16, torch.float32) and narrower(torch.float16, torch.bfloat16)
    assert not narrower(torch.bfloat16, torch.float32) and not narrower(torch.float32, torch.bfloat16)
    assert near_range({"a": float("inf")}, torch.bfloat16) == []


def test_a_streamed_stage_keeps_what_its_export_warns_from(capsys):
    from compress.activation_range import stage_maxima, streamed_maxima

    stage = stage_maxima({"b.0": 10.0, "b.1.ff": 1.23456e5, "b.1": 2e5, "out": 3.0}, ["b.0", "b.1"])
    assert stage == {"activation_max": {"b.0": 10.0, "b.1": 2e5, "out": 3.0},
                     "activation_near_float16": [["b.1.ff", 1.235e5], ["b.1", 2e5]]}
    assert streamed_maxima(stage, torch.bfloat16) == {"activation_max": stage["activation_max"]}
    assert "activations" not in capsys.readouterr().err  # bfloat16 holds them
    assert streamed_maxima(stage, torch.float16) == {"activation_max": stage["activation_max"]}
    assert "first at b.1.ff (1.24e+05)" in " ".join(capsys.readouterr().err.split())
    assert streamed_maxima({"relative_error": 0.1}, torch.float16) == {}  # a stage measured without them


def _output_recording(tmp_path, dtype, maxima: dict, extra: dict | None = None):
    """A toy PixArt output saved in `dtype` whose report.json records `maxima` as export.activation_max."""
    import json

    from compress import save_compressed
    from compress.toy import load_toy_teacher
    from tests.conftest import factorize

    model = factorize(load_toy_teacher("pixart"), ["transformer_blocks.0.ff.net.2"], rank=4)
    report = {"export": {"dtype": str(dtype).removeprefix("torch."), "activation_max": maxima}}
    return save_compressed(model, tmp_path / "out", dtype=dtype, extra=extra,
                           files={"report.json": json.dumps(report)})


def test_loading_in_float16_an_output_whose_run_recorded_activations_beyond_it_warns(tmp_path, capsys):
    """T1 stop 53: load_transformer of a float16 output whose run warned (8.25e+04 at a block) loaded it in
    float16 without a word, and its forward gave NaN. Now a warning names the block, the largest and the
    dtypes to load it in, loaded in float16 given or stored; none in bfloat16 / float32 or within the range."""
    from compress import load_pipeline, load_transformer

    out = _output_recording(tmp_path, torch.float16, {"transformer_blocks.0": 13.5, "transformer_blocks.2": 82460.0,
                                                      "transformer_blocks.3": 70000.0, "proj_out": 4.1},
                            extra={"teacher": "toy:pixart"})
    load_transformer(out)  # stored float16
    said = " ".join(capsys.readouterr().err.split())
    assert (f"{out}: loaded in float16, but its run recorded activations up to 8.25e+04 at transformer_blocks.2 "
            "(2 blocks or layers in all), beyond float16's range (max 65504; report.json export.activation_max): "
            "a forward in float16 gives inf/NaN; load it with torch_dtype=torch.bfloat16 (float32's range) or "
            "torch.float32") in said
    for dtype in (torch.bfloat16, torch.float32, "float32"):
        load_transformer(out, torch_dtype=dtype)
        assert "activations" not in capsys.readouterr().err
    load_pipeline(out)  # its transformer in the stored float16
    assert "recorded activations up to 8.25e+04 at transformer_blocks.2" in " ".join(capsys.readouterr().err.split())
    load_pipeline(out, torch_dtype=torch.bfloat16)
    assert "activations" not in capsys.readouterr().err


def test_loading_in_float16_given_warns_and_a_report_within_range_or_unreadable_says_nothing(tmp_path, capsys):
    from compress import load_transformer

    out = _output_recording(tmp_path, torch.bfloat16, {"transformer_blocks.1": 1.0e5})
    load_transformer(out, dtype="float16")
    assert "up to 1e+05 at transformer_blocks.1, beyond float16's range" in " ".join(capsys.readouterr().err.split())
    (out / "report.json").write_text('{"export": {"activation_max": {"transformer_blocks.1": 40000.0}}}')
    load_transformer(out, dtype=torch.float16)
    (out / "report.json").write_text("{not json")
    load_transformer(out, dtype=torch.float16)  # the commands that read it say it is damaged
    (out / "report.json").unlink()
    load_transformer(out, dtype=torch.float16)
    assert "activations" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", [{"teacher": 5}, {"svd": []}, {"svd": {"layers": {"x": 1}}}],
                         ids=["teacher", "svd", "svd-layer"])
def test_a_report_read_report_refuses_says_nothing_when_loaded_in_float16(tmp_path, capsys, damage):
    """Stop 53's diff read: warn_loaded_range read report.json by hand (json_read, its own except), so a report
    the commands refuse as damaged (report.read_report: 'teacher is 5, not text ...') still warned from its
    activation_max; it reads report.json as the commands do, and a report they refuse says nothing here."""
    import json

    from compress import load_transformer
    from compress.errors import UserError
    from compress.report import read_report

    out = _output_recording(tmp_path, torch.bfloat16, {"transformer_blocks.1": 1.0e5})
    report = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps({**report, **damage}))
    with pytest.raises(UserError, match="damaged"):
        read_report(out)
    load_transformer(out, dtype=torch.float16)
    assert "activations" not in capsys.readouterr().err
