"""The progress lines of a pipeline source (compress/calib_pipeline.py) say whether its records are
sampled or read back from the inputs folder a run wrote before (a resumed or repeated run)."""

import pytest
import torch

from compress.calib_pipeline import PipelineSource
from compress.io import load_teacher
from compress.recipe import CalibrationConfig
from tests.pipelines import pixart_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_label_tells_sampled_from_read_back():
    from compress.calib_pipeline import run_label

    assert run_label("held-out", 0, 2) == "sample held-out prompts"
    assert run_label("held-out", 2, 2) == "held-out prompts (read back)"
    assert run_label("calibration", 1, 3) == "sample calibration prompts (1 read back)"
    assert run_label("calibration", 0, 0) == "sample calibration prompts"


def test_a_sampling_bar_read_back_in_part_is_whole_at_80_columns():
    """'sample calibration prompts (120 of 400 calls read back)' (55 characters, the read-back count in
    calls beside the bar's in prompts) was cut at 80 columns: '(120 of 400 calls … ━━━  480/1600'. Now
    the read-back count is in prompts, as the bar's, and the label whole up to 4-digit counts."""
    from compress.calib_pipeline import run_label
    from tests.test_progress import _drawn

    for read_back, prompts in [(480, 1600), (1200, 9999), (9, 10)]:
        label = run_label("calibration", read_back, prompts)
        line = _drawn(label, prompts, read_back)
        assert line.startswith(label + " ") and line.endswith(f" {read_back}/{prompts} 0:00:00 -:--:--"), line
        assert len(line) <= 80 and "…" not in line, line


def heldout_sampler(tmp_path, capsys):
    """A function sampling the held-out records of a tiny PixArt pipeline (2 calls of 1 prompt) with the
    inputs folder tmp_path/inputs, returning the lines it wrote on stderr."""
    pipe = pixart_pipeline(tmp_path / "pipe")
    teacher = load_teacher(str(pipe / "transformer"))
    calib = CalibrationConfig(source="pipeline", prompts=[f"a {i}" for i in range(10)], heldout=None,  # 2 held out
                              prompts_per_call=1, sample_steps=2, timesteps=1)

    def heldout_err() -> list[str]:
        source = PipelineSource("pixart", calib, teacher, str(pipe))
        source.cache_dir = tmp_path / "inputs"
        capsys.readouterr()
        source.heldout()
        return capsys.readouterr().err.splitlines()

    return heldout_err


def test_held_out_records_read_back_say_so_in_their_progress_lines(tmp_path, capsys):
    """A resumed run read its held-out records back from runs/.../inputs/ (their files unchanged)
    and its progress lines said 'sample held-out prompts 1/2 ... 2/2', as if it sampled them."""
    heldout_err = heldout_sampler(tmp_path, capsys)

    def heldout_lines() -> list[str]:
        lines = heldout_err()  # also the pipeline's loading bars
        return [line.rsplit(" (", 1)[0] for line in lines if "held-out prompts" in line]  # less the elapsed time

    assert heldout_lines() == ["sample held-out prompts 1/2", "sample held-out prompts 2/2"]
    files = sorted((tmp_path / "inputs").glob("*.pt"))
    written = {p: p.stat().st_mtime_ns for p in files}
    assert heldout_lines() == ["held-out prompts (read back) 1/2", "held-out prompts (read back) 2/2"]
    assert {p: p.stat().st_mtime_ns for p in files} == written  # read, not written again
    files[0].unlink()
    assert heldout_lines() == ["sample held-out prompts (1 read back) 1/2",
                               "sample held-out prompts (1 read back) 2/2"]


def test_a_resumed_run_samples_a_damaged_call_again_in_one_note(tmp_path, capsys):
    """A sampled-inputs file of the run folder cut short or overwritten (RUN/inputs/<name>/<hash>.pt) was a
    traceback in `run --resume` (UnpicklingError 'Weights only load failed ...', OSError '[Errno 22] Invalid
    argument'); eval samples such a call again, in memory. run samples it again too, writes it anew, and
    says so in one note; the output is the one an undamaged run folder gives."""
    import json
    import shutil

    from compress.cli import main
    from tests.pipelines import RECIPE

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "")
    (tmp_path / "r.yaml").write_text(text.format(stream="false"))
    run = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(run) == 0
    error = json.loads((tmp_path / "out" / "report.json").read_text())["heldout"]
    calls = sorted((tmp_path / "run" / "inputs").rglob("*.pt"))
    whole = {c: c.read_bytes() for c in calls}
    for damage in (lambda b: b"not a torch file", lambda b: b[:len(b) // 2]):
        for c in calls:
            c.write_bytes(damage(whole[c]))
        shutil.rmtree(tmp_path / "out")
        capsys.readouterr()
        assert main(run + ["--resume"]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert err.count("note: the run folder's file ") == 1 and "Traceback" not in err, err
        assert f"note: the run folder's file {calls[0].parent}/" in err and \
            "is damaged (not as torch.save wrote it: cut short or overwritten since?): sampled again" in err, err
        assert json.loads((tmp_path / "out" / "report.json").read_text())["heldout"] == error
        again = [c for c in calls if c.read_bytes() != damage(whole[c])]  # the held-out call: written anew
        assert again and all(isinstance(torch.load(c, weights_only=True), list) for c in again)


def test_a_damaged_cached_call_is_not_counted_as_read_back(tmp_path, capsys):
    """A held-out call's file overwritten: its note said 'sampled again' while the progress label counted
    it as read back ('held-out prompts (read back) 1/2', from the file being there); now the label counts
    the calls that read back: 'sample held-out prompts (1 read back)'."""
    heldout_err = heldout_sampler(tmp_path, capsys)
    heldout_err()
    files = sorted((tmp_path / "inputs").glob("*.pt"))
    files[0].write_bytes(b"not a torch file")
    lines = heldout_err()
    bars = [line.rsplit(" (", 1)[0] for line in lines if "held-out prompts" in line]
    assert bars == ["sample held-out prompts (1 read back) 1/2", "sample held-out prompts (1 read back) 2/2"], lines
    assert sum("is damaged (not as torch.save wrote it" in line for line in lines) == 1, lines
    assert isinstance(torch.load(files[0], weights_only=True), list)  # sampled again, written anew
