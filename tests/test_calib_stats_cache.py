"""The svd passes' statistics cache (calib_stats.StatsCache): what report.json's svd.cache_hits lists."""

import json

import pytest
import torch

from compress.calib_stats import Stats, StatsCache
from compress.cli import main
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE

pytestmark = pytest.mark.usefixtures("one_thread")


def _stats() -> dict:
    return {"a": Stats(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), rows=3)}


def test_hits_are_files_read_back_that_the_cache_did_not_write_once_each(tmp_path):
    """T1 stop 52 #2: StatsCache.load listed every read, a file its own pass had just saved (a global allocation's
    second walk) and a file read twice alike: a fresh run's cache_hits named a file, a resumed run's one twice. Now
    only files it did not write, once each."""
    earlier = StatsCache(tmp_path)
    earlier.save("kept", _stats())
    cache = StatsCache(tmp_path)
    cache.save("mine", _stats())
    for name in ("mine", "kept", "mine", "kept"):
        assert cache.load(name)["a"].rows == 3
    assert cache.load("none") is None
    assert cache.hits == ["kept"]


def test_a_fresh_run_lists_no_cache_hit_and_a_rerun_those_it_says_it_read_back(tmp_path, capsys):
    """A fresh run of a global allocation (its pass walks the blocks twice, reading back what it saved on the first
    walk) listed that file in report.json's svd.cache_hits (docs/OUTPUTS.md: [] where every file was measured); a
    rerun listed more files than its 'read back all N files' line. Now [] and N, each named once."""
    tiny_pixart().save_pretrained(tmp_path / "t")
    passes = "  - svd: {targets: [attention, mlp], allocation: global, ratio: 0.5, multiple: 2}\n"
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "t", passes=passes))
    run = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(run) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["svd"]["cache_hits"] == []
    files = sorted(p.stem for p in (tmp_path / "run" / "calib").rglob("*.pt"))
    capsys.readouterr()
    assert main([*run, "--restart", "--overwrite"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    hits = json.loads((tmp_path / "out" / "report.json").read_text())["svd"]["cache_hits"]
    assert f"pass 1 (svd) read back all {len(files)} files" in said, said
    assert sorted(hits) == files
