"""A plain rerun (no --resume, no --restart) in a run folder an interrupted run of the same recipe
left, given another teacher (--teacher): refused saying so, as --resume would, not offering --resume."""

import pytest

from compress.cli import main
from tests.conftest import tiny_pixart
from tests.runner_helpers import pixart_runner


@pytest.fixture
def pixart(tmp_path, monkeypatch):
    return pixart_runner(tmp_path, monkeypatch)


def _ctrl_c_at_first_stats_save(monkeypatch):
    """A Ctrl-C when the svd pass (pass 2) first saves block statistics: pass 1 is saved by then."""
    from compress.calib_stats import StatsCache

    def save(self, name, stats):
        raise KeyboardInterrupt

    monkeypatch.setattr(StatsCache, "save", save)


def _interrupted(pixart, monkeypatch, capsys) -> tuple:
    """(tmp_path, run folder, the run's arguments) of r.yaml (remove_blocks, then svd; its teacher
    tmp_path/teacher) stopped by a Ctrl-C once pass 1 is saved."""
    tmp_path = pixart[0]
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    with monkeypatch.context() as m:
        _ctrl_c_at_first_stats_save(m)
        assert main(args) == 130
    capsys.readouterr()
    return tmp_path, run, args


def test_a_rerun_with_another_teacher_after_an_interrupt_says_the_teacher_changed(pixart, monkeypatch, capsys):
    """The tester's run: interrupted after 1 of 2 passes, rerun with --teacher naming another folder
    said 'holds an interrupted run of this recipe ...: add --resume to continue', which --resume then
    refused ('the teacher changed since'). The same teacher named by a relative path is this teacher."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    tiny_pixart().save_pretrained(tmp_path / "teacher2")
    assert main([*args, "--teacher", str(tmp_path / "teacher2")]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress: error: {run} holds an interrupted run of this recipe for another "
                           f"teacher (was {tmp_path / 'teacher'}, now {tmp_path / 'teacher2'}; 1 of 2 passes done")
    assert said.endswith("): add --restart to start over, or rerun with that teacher and --resume to continue")
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--teacher", "teacher"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run} holds an interrupted run of this recipe (1 of 2 passes done" in said
    assert said.endswith("add --resume to continue, or --restart to start over")


def test_a_teacher_config_a_folder_teacher_does_not_read_is_no_other_teacher(pixart, monkeypatch, capsys):
    """A --teacher-config that a folder teacher does not read (warned 'is not read') was compared as
    another teacher's: the rerun was refused 'for another teacher (--teacher-config was None, now …)'
    and --resume refused 'the teacher changed'. It is as if not given: the ordinary refusal, and
    --resume continues."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((tmp_path / "teacher" / "config.json").read_text())
    with_config = [*args, "--teacher-config", str(tmp_path / "cfg" / "config.json")]
    assert main(with_config) == 2
    err = capsys.readouterr().err
    assert "is not read: teacher" in err and "another teacher" not in err
    assert err.strip().splitlines()[-1].endswith("add --resume to continue, or --restart to start over")
    assert main([*with_config, "--resume"]) == 0
    assert "teacher changed" not in capsys.readouterr().err
