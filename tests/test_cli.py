import pytest

from compress import cli
from compress.errors import UserError
from compress.passes.distill_trainer import TrainingInterrupted


@pytest.mark.parametrize("raised, said, code", [
    (TrainingInterrupted("distill: stopped at step 3/6 on a stop signal"),
     "dit-compress: distill: stopped at step 3/6 on a stop signal", 130),
    (UserError("bad key"), "dit-compress: error: bad key", 2),
])
def test_a_requested_stop_is_not_printed_as_an_error(monkeypatch, capsys, raised, said, code):
    def command(args):
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "plan", command)
    assert cli.main(["plan", "r.yaml"]) == code
    assert capsys.readouterr().err.strip() == said


def test_every_option_says_what_it_does():
    """`dit-compress COMMAND --help` explains each option (a bare `--json` says nothing)."""
    import argparse

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = [f"{name} {action.option_strings[0]}" for name, sub in commands.choices.items()
              for action in sub._actions
              if action.option_strings and action.help is None]
    assert silent == []
