"""The memory and disk warnings before a run (compress/runner_stream.py): a teacher too big to hold
resident, a streamed run too big for its device, a disk too small for a streamed run's stages."""

import pytest
import torch

from compress.arch import get_adapter
from tests.conftest import tiny_flux, tiny_pixart
from tests.runner_helpers import run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_teacher_too_big_for_memory_is_named_before_loading(tmp_path, monkeypatch, capsys):
    import compress.runner_stream as rs

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
    import compress.runner_stream as rs
    from compress.runner_stream import streamed_weights, warn_if_streamed_too_big

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
    import compress.runner_stream as rs

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    monkeypatch.setattr(rs, "free_bytes", lambda folder: 1)
    run_recipe(tmp_path, text, "small")
    err = capsys.readouterr().err
    assert "warning: a streamed run writes up to about" in err and "--run-dir" in err
    monkeypatch.setattr(rs, "free_bytes", lambda folder: 2**50)
    run_recipe(tmp_path, text, "big")
    assert "warning" not in capsys.readouterr().err
