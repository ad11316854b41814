"""Stages a run saves and --resume restores (compress/runner_stages.py)."""

from compress.cli import main
from tests.runner_helpers import pixart_runner


def test_a_resumed_run_names_the_blocks_its_restored_removal_took(tmp_path, monkeypatch, capsys):
    """A run resumed after its remove_blocks pass said nothing of the blocks it removed (the pass does
    not run again): it says the restored pass's line, as the run that removed them did."""
    from compress.passes import svd

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]

    def stop(self, model, ctx):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(svd.SVDPass, "run", stop)
        main(argv)
    first = [line for line in capsys.readouterr().err.splitlines() if line.startswith("remove_blocks: removed")]
    assert first == ["remove_blocks: removed blocks [0] (teacher indices; listed in the recipe)"]
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("remove_blocks: removed")] == first
    assert err.index(first[0]) == next(i for i, line in enumerate(err) if line.startswith("resuming")) + 1
