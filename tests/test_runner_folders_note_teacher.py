"""Ctrl-C's note (runner_folders.interrupt_note) over an interrupted run of another teacher: said as the
plain rerun's refusal says it (runner_folders.other_teacher: the source, and the --teacher-config by what it
holds), with its advice, never 'rerun with --resume to continue', which --resume refuses."""

import importlib

from compress import cli
from compress.cli import main
from tests.test_runner_folders_teacher import _changed_in_place, _single_file_interrupted


def _ctrl_c_note(monkeypatch, capsys, args) -> str:
    """What a Ctrl-C says once `run`'s imports are done, before its Runner (the tester's 0.3 s), in one line."""
    def interrupted(_):
        importlib.import_module("compress.runner")
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setitem(cli.COMMANDS, "run", interrupted)
        assert cli.main(args) == 130
    return " ".join(capsys.readouterr().err.split())


def _runners_note(tmp_path, args) -> str:
    """What the Runner's own note says (a Ctrl-C as the teacher loads: the tester's 5 s), in one line."""
    from pathlib import Path

    from compress.recipe import load_recipe
    from compress.runner import Runner

    config = args[args.index("--teacher-config") + 1] if "--teacher-config" in args else None
    runner = Runner(load_recipe(args[1]), Path(args[args.index("--out") + 1]), Path(args[args.index("--run-dir") + 1]),
                    teacher_config=config)
    return " ".join(f"dit-compress: interrupted{runner.interrupt_note()}".split())


def test_ctrl_c_over_a_run_of_a_teacher_config_edited_in_place_gives_the_refusals_advice(tmp_path, monkeypatch,
                                                                                          capsys):
    """The tester's run: a single file's --teacher-config edited in place after an interrupted run; a Ctrl-C
    of the rerun said 'rerun with --resume to continue', which --resume refused ('the teacher changed')."""
    args = [*_single_file_interrupted(tmp_path, monkeypatch, capsys), "--teacher-config", "cfgA/config.json"]
    config = tmp_path / "cfgA" / "config.json"
    assert "rerun with --resume to continue" in _ctrl_c_note(monkeypatch, capsys, args)  # the same teacher
    _changed_in_place(config)
    assert main(args) == 2
    refusal = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("dit-compress run: error: ")
    assert f"for another teacher (--teacher-config {config} changed since the run" in refusal
    for said in (_ctrl_c_note(monkeypatch, capsys, args), _runners_note(tmp_path, args)):
        assert said == f"dit-compress: interrupted; {refusal}"
        assert "rerun with --resume to continue" not in said
        assert said.endswith(f"undo the change to {config} and add --resume to continue, or add --restart to "
                             "start over")


def test_ctrl_c_over_a_run_of_another_teacher_says_so(tmp_path, monkeypatch, capsys):
    """Another --teacher-config named (a single file's): the note names both, as the refusal does."""
    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    args = [*args, "--teacher-config", "cfgB"]
    said = _ctrl_c_note(monkeypatch, capsys, args)
    assert f"for another teacher (--teacher-config was {tmp_path / 'cfgA' / 'config.json'}, now {tmp_path / 'cfgB'}" \
        in said, said
    assert said.endswith("add --restart to start over, or rerun with that teacher and --resume to continue"), said
