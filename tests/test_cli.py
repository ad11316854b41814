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
