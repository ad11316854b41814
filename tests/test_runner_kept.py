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
