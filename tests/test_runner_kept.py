"""A run that stops on an error (out of memory, a full disk) says what its run folder keeps, as a Ctrl-C does (runner.Runner._kept -> runner_resume.resume_note)."""
import pytest

from compress.cli import main
from tests.runner_helpers import pixart_runner


@pytest.mark.parametrize("raised, said", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3200000000000 bytes."),
     "out of memory"),
    (OSError(28, "No space left on device", "/scratch/x.pt"), "cannot write"),
])
def test_a_stop_on_an_error_in_an_svd_pass_names_the_block_statistics_kept(tmp_path, monkeypatch, capsys,
                                                                           raised, said):
    """Out of memory or a full disk in the svd pass after it saved the statistics of its first block:
    the line said '1 of 2 passes done' only, though --resume reads those statistics back (a Ctrl-C's
    line names them)."""
    from compress.calib_stats import StatsCache

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks, then svd
    saves, real = [], StatsCache.save

    def save(self, name, stats):
        if len(saves) == 1:
            raise raised
        saves.append(name)
        return real(self, name, stats)
    monkeypatch.setattr(StatsCache, "save", save)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dit-compress: {said}") and last.endswith(
        f"; {tmp_path / 'run'} keeps its work (1 of 2 passes done, block statistics (1 file), output Fishers "
        "(12 files) measured so far): --resume continues from pass 2 (whose keys may change)"), last


def test_block_statistics_are_named_only_where_an_svd_pass_still_runs(tmp_path):
    """Only an svd pass reads the block statistics and Fishers back: a run stopped in a distill pass
    after its last svd pass said '2 of 3 passes done, block statistics (5 files) measured so far',
    which --resume never reads. They are named while an svd pass is to run, or the passes are not known."""
    from types import SimpleNamespace

    from compress.runner_resume import measured_so_far

    for name in ("blocks-0.pt", "blocks-1.pt", "fisher-x/0.pt"):
        path = tmp_path / "calib" / "fp" / "start" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    svd, distill = SimpleNamespace(name="svd", config=None), SimpleNamespace(name="distill", config=None)
    named = "block statistics (2 files), output Fishers (1 file)"
    assert measured_so_far(tmp_path, "fp", None, [svd, distill]) == named
    assert measured_so_far(tmp_path, "fp", None) == named
    assert measured_so_far(tmp_path, "fp", None, [distill]) == ""
    assert measured_so_far(tmp_path, "fp", None, []) == ""
