"""The memory and disk warnings before a run (compress/runner_memory.py): a teacher too big to hold
resident, a streamed run too big for its device, a disk too small for a streamed run's stages."""

import re

import pytest
import torch

from compress.arch import get_adapter
from tests.conftest import tiny_flux, tiny_pixart
from tests.runner_helpers import one_svd, run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_teacher_too_big_for_memory_is_named_before_loading(tmp_path, monkeypatch, capsys):
    import compress.runner_memory as rs

    text = streamed_teacher(tmp_path, "pixart").format(stream="false")
    need = rs.resident_bytes(str(tmp_path / "teacher"), torch.float32)
    assert need == 2 * 4 * sum(p.numel() for p in tiny_pixart().parameters())
    monkeypatch.setattr(rs, "available_bytes", lambda: need - 1)
    run_recipe(tmp_path, text, "big")
    err = capsys.readouterr().err
    assert "warning: teacher and student need about" in err and "set stream: true" in err
    monkeypatch.setattr(rs, "available_bytes", lambda: need)
    run_recipe(tmp_path, text, "fits")
    assert "warning" not in capsys.readouterr().err
    from compress.cli import main  # importance loads the teacher alone

    (tmp_path / "r.yaml").write_text(text)
    for free, warned in ((need // 2, False), (need // 2 - 1, True)):
        monkeypatch.setattr(rs, "available_bytes", lambda free=free: free)
        assert main(["importance", str(tmp_path / "r.yaml"), "--png", str(tmp_path / "i.png")]) == 0
        assert ("warning: the teacher needs about" in capsys.readouterr().err) == warned


def test_a_streamed_run_too_big_for_its_device_is_named_before_it_starts(tmp_path, monkeypatch, capsys):
    """Two top levels, the largest block and the calibration activations (one batch when spilled)
    against the memory free on the run's device."""
    import compress.runner_memory as rs
    from compress.runner_memory import warn_if_streamed_too_big
    from compress.runner_stream import streamed_weights

    model = tiny_flux()
    weights = streamed_weights(model, get_adapter(model))
    f = {"bytes": 10_000, "batch_bytes": 1_000}
    need = (2 * weights["top_level_params"] + weights["largest_block_params"]) * 4 + 10_000
    for free, spilled, warned in ((need, False, False), (need - 1, False, True), (need - 1, True, False)):
        monkeypatch.setattr(rs, "available_bytes", lambda free=free: free)
        warn_if_streamed_too_big(weights, f, torch.float32, torch.device("cpu"), spilled)
        assert ("a streamed run holds about" in capsys.readouterr().err) == warned
    monkeypatch.setattr(rs, "available_bytes", lambda: need)  # sequential: the block dense and factorized
    warn_if_streamed_too_big(weights, dict(f, block_copies=2), torch.float32, torch.device("cpu"), False)
    assert "one block dense and factorized" in " ".join(capsys.readouterr().err.split())
    text = streamed_teacher(tmp_path, "flux").format(stream="true")
    monkeypatch.setattr(rs, "available_bytes", lambda: 1000)
    run_recipe(tmp_path, text, "small")
    assert "spill_activations: true" in " ".join(capsys.readouterr().err.split())


def test_a_disk_too_small_for_a_streamed_run_is_named(tmp_path, monkeypatch, capsys):
    import compress.runner_memory as rs

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    monkeypatch.setattr(rs, "free_bytes", lambda folder: 1)
    run_recipe(tmp_path, text, "small")
    err = capsys.readouterr().err
    assert "warning: a streamed run writes up to about" in err and "--run-dir" in err
    monkeypatch.setattr(rs, "free_bytes", lambda folder: 2**50)
    run_recipe(tmp_path, text, "big")
    assert "warning" not in capsys.readouterr().err


def test_the_disk_warning_counts_the_statistics_and_says_mib(tmp_path, monkeypatch, capsys):
    """Statistics count toward what a streamed run writes, and sizes under 1 GiB are said in MiB (a
    3 MiB disk read '0.0 GiB')."""
    import compress.runner_memory as rs

    monkeypatch.setattr(rs, "free_bytes", lambda folder: 3 * 2**20)
    rs.warn_if_short_of_disk(tmp_path, 2**20)  # three copies fit
    assert "warning" not in capsys.readouterr().err
    rs.warn_if_short_of_disk(tmp_path, 2**20, 5 * 2**20)
    err = " ".join(capsys.readouterr().err.split())
    assert "up to about 8 MiB" in err and "5 MiB of float64 calibration statistics" in err and "3 MiB are free" in err


def test_statistics_on_disk_is_what_the_svd_passes_cache(tmp_path):
    """The estimate (plan's per-block statistics) against the calib/ folder a streamed run leaves."""
    from compress.passes import build_passes
    from compress.plan_walk import svd_targets
    from compress.recipe import parse_recipe
    from compress.runner_memory import statistics_on_disk

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    run_recipe(tmp_path, text, "s")
    written = sum(p.stat().st_size for p in (tmp_path / "run-s" / "calib").rglob("*.pt"))
    recipe, model = parse_recipe(text, str(tmp_path / "s.yaml")), tiny_pixart()
    estimate = sum(statistics_on_disk(*svd_targets(p, spec, model, get_adapter(model)))
                   for p, spec in zip(build_passes(recipe), recipe.passes))
    assert 0.9 * written < estimate < 1.1 * written


def test_the_disk_warning_counts_the_statistics_once_the_passes_are_known(tmp_path, monkeypatch, capsys):
    """Room for the model copies but not the statistics: warned once the passes' targets are known
    (Runner.prepare); not twice where the copies alone were too much."""
    import compress.runner_memory as runner_memory
    import compress.runner_stream as rs
    from compress.passes import build_passes
    from compress.recipe import parse_recipe

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    recipe = parse_recipe(text, str(tmp_path / "s.yaml"))
    for free, first in ((1, True), (None, False)):
        models = rs.StreamedModels(tmp_path / "run")
        monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: free or 3 * models.model_bytes + 1)
        teacher = models.teacher(str(tmp_path / "teacher"), None)
        assert ("warning" in capsys.readouterr().err) is first
        models.warn_if_short_of_disk(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
        err = " ".join(capsys.readouterr().err.split())
        assert ("calibration statistics" in err) is not first and ("warning" in err) is not first


OUTPUT_TEACHER = one_svd("compute_dtype: {dtype}", "{targets}")


def test_an_output_as_teacher_is_counted_and_warned_as_a_folder_is(tmp_path, monkeypatch, capsys):
    """A dit-compress output as the teacher of a further compression (run --teacher out/X) was not
    counted (resident_bytes None: checkpoint_of refuses an output, for streaming), so a teacher too
    big to hold was not warned of; now its safetensors (the factors as stored) count, in the compute
    dtype load_teacher casts them to (the student a copy), as plan counts it, and the advice is not
    stream: true, which an output refuses."""
    import compress.plan_machine as plan_machine
    import compress.runner_memory as rs
    from compress.cli import main
    from compress.io import load_teacher
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    run_recipe(tmp_path, OUTPUT_TEACHER.format(teacher=tmp_path / "teacher", dtype="float32", targets="mlp"), "a")
    out = str(tmp_path / "out-a")
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        student = load_teacher(out, dtype)  # the run's teacher; its student a deepcopy
        assert {p.dtype for p in student.parameters()} == {dtype}
        need = rs.resident_bytes(out, dtype)
        assert need == 2 * dtype.itemsize * sum(p.numel() for p in student.parameters())
        recipe = parse_recipe(OUTPUT_TEACHER.format(teacher=out, dtype=name, targets="attention"),
                              str(tmp_path / "b.yaml"))
        recipe.device = "cpu"
        parts = {p["what"]: p for p in make_plan(recipe)["memory"]["parts"]}
        assert parts["teacher and student weights"]["bytes"] == need
        assert parts["teacher and student weights"]["fix"].startswith(rs.OUTPUT_HELD_WHOLE)  # not streamed
    (tmp_path / "b.yaml").write_text(OUTPUT_TEACHER.format(teacher="toy:pixart", dtype="float32",
                                                           targets="attention"))
    monkeypatch.setattr(rs, "available_bytes", lambda: 1000)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "b.yaml"), "--teacher", out, "--out", str(tmp_path / "out-b"),
                 "--run-dir", str(tmp_path / "run-b")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(r"warning: teacher and student need about \d+ KiB in float32, and 1000 bytes are available; a "
                     r"dit-compress output is held whole \(stream: true does not read its factorized layers\): set "
                     r"compute_dtype: bfloat16, or run where more memory is free", err), err
