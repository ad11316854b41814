"""--resume over a run that saved no pass but measured (block statistics, output Fishers) for another teacher:
it read back nothing, though its note said it read them back, and measured them again. It is refused as the
plain rerun refuses it, with the advice that fits: a config edited in place undone, the weights changed in
place put back (not 'rerun with that teacher', which no teacher named can do)."""

import json

import pytest
from safetensors.torch import load_file, save_file

from compress.cli import main
from tests.runner_helpers import SIMPLE

SVD = "  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"


@pytest.fixture
def measured(tmp_path, monkeypatch, capsys):
    """(teacher folder, run arguments) of an svd pass stopped by a Ctrl-C before it saved its stage, its block
    statistics and Fishers kept in the run folder."""
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart

    teacher = tmp_path / "teacher"
    tiny_pixart().save_pretrained(teacher)
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=teacher, passes=SVD))
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(SVDPass, "_compress", interrupt)
        assert main(args) == 130
    assert list((tmp_path / "run" / "calib").rglob("*.pt"))
    capsys.readouterr()
    return teacher, args


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_resume_refuses_what_a_config_edited_in_place_measured(measured, capsys):
    teacher, args = measured
    config = teacher / "config.json"
    original = config.read_bytes()
    config.write_text(json.dumps(dict(json.loads(original), norm_eps=1e-5)))
    assert main([*args, "--resume"]) == 2
    said = _said(capsys)
    assert "reading back" not in said
    assert f"holds what was measured with another teacher ({config} changed since the run" in said
    assert said.endswith(f"which this run does not read back: undo the change to {config} and rerun with --resume "
                         "to read it back, rerun with --restart to discard it, or choose another --run-dir"), said
    config.write_bytes(original)  # undone: --resume reads them back
    assert main([*args, "--resume"]) == 0
    assert "reading back what an earlier run measured there" in _said(capsys)


def test_resume_and_a_rerun_say_the_weights_changed_in_place(measured, capsys):
    teacher, args = measured
    weights = teacher / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name] + 1}, weights)
    changed = f"the weights of {teacher} changed since the run (its config holds the same)"
    assert main(args) == 2
    said = _said(capsys)
    assert f"measured with another teacher ({changed};" in said, said
    assert said.endswith(f"put back the weights {teacher} had to read it back, add --restart to discard it, or "
                         "choose another --run-dir"), said
    assert main([*args, "--resume"]) == 2
    said = _said(capsys)
    assert f"measured with another teacher ({changed};" in said, said
    assert said.endswith(f"put back the weights {teacher} had and rerun with --resume to read it back, rerun with "
                         "--restart to discard it, or choose another --run-dir"), said
    assert "holds other weights or config" not in said and "rerun with that teacher" not in said
    assert "reading back" not in said  # it said, before the teacher loaded, that it read them back


def test_resume_says_what_it_reads_back_only_once_the_calibration_is_that_runs(measured, capsys):
    """--resume with another seed: it said it was 'reading back what an earlier run measured there', then
    refused what 'another teacher or calibration' measured; now only the refusal, naming the seed."""
    teacher, args = measured
    assert main([*args, "--resume", "--set", "calibration.seed=3"]) == 2
    said = _said(capsys)
    assert "reading back" not in said, said
    assert "was measured with this teacher and another calibration (calibration.seed was 0, now 3;" in said
    assert said.endswith("rerun with that calibration and --resume to read it back, rerun with --restart to discard "
                         "it, or choose another --run-dir"), said
