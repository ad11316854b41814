"""--resume of a resident run stopped inside its svd pass (compress.runner_restore, calib_stats.StatsCache):
what it writes against an uninterrupted run's output."""

import json

import pytest
import torch

from compress.calib_stats import StatsCache
from compress.io_output import load_transformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stop_at", [0, 1])
def test_a_run_stopped_inside_its_svd_pass_resumes_to_the_weights_of_an_uninterrupted_run(pixart, monkeypatch, capsys,
                                                                                          stop_at):
    """A Ctrl-C while the svd pass measures and factorizes block by block (its output Fishers measured,
    then before its 1st block's statistics are saved, or after them and that block's factorization,
    before its 2nd's): --resume keeps pass 1 (remove_blocks), reads back what was measured, and writes
    what an uninterrupted run writes, bit for bit."""
    tmp_path, make, _ = pixart
    full = make(tmp_path / "full", tmp_path / "run-full").run()
    saves = []
    real = StatsCache.save

    def save(self, name, stats):
        saves.append(name)
        if len(saves) == stop_at + 1:
            raise KeyboardInterrupt("simulated Ctrl-C inside the svd pass")
        real(self, name, stats)

    with monkeypatch.context() as m:
        m.setattr(StatsCache, "save", save)
        with pytest.raises(KeyboardInterrupt):
            make(tmp_path / "out").run()
    assert len(saves) == stop_at + 1  # stopped while measuring, with stop_at blocks' statistics saved
    assert (tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json").is_file()
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    resumed = make(tmp_path / "out", resume=True).run()
    said = capsys.readouterr().err
    assert "resuming after pass 1/2 (remove_blocks)" in said
    assert f"  pass 2 (svd) read back all {12 + stop_at} files an earlier run measured\n" in said  # 12 Fishers
    report = json.loads((resumed / "report.json").read_text())
    assert len(report["svd"]["cache_hits"]) == stop_at  # what it measured before the stop is read back
    a, b = load_transformer(full).state_dict(), load_transformer(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
