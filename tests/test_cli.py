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


@pytest.mark.parametrize("command, said", [
    ("run", "dit-compress: interrupted; rerun with --resume to continue"),
    ("bench", "dit-compress: interrupted"),
    ("importance", "dit-compress: interrupted"),
    ("eval", "dit-compress: interrupted"),
])
def test_an_interrupt_says_resume_only_where_the_command_has_it(monkeypatch, capsys, command, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert cli.main([command, "x"]) == 130
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("raised, said", [
    ("cuda", "dit-compress: out of memory: `dit-compress bench` ran out of GPU memory (tried to allocate "
             "20.00 GiB); try a smaller --batch, or --device cpu"),
    ("cpu", "dit-compress: out of memory: `dit-compress bench` ran out of CPU memory (tried to allocate "
            "2980.2 GiB); try a smaller --batch, or --device cpu"),
])
def test_out_of_memory_is_one_line_naming_the_command(monkeypatch, capsys, raised, said):
    import torch

    def command(args):
        if raised == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                         "capacity of 79.11 GiB of which 1.2 GiB is free.")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 3200000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setitem(cli.COMMANDS, "bench", command)
    assert cli.main(["bench", "out"]) == 1
    assert capsys.readouterr().err.strip() == said


def test_another_runtime_error_is_not_taken_for_out_of_memory(monkeypatch):
    def command(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setitem(cli.COMMANDS, "bench", command)
    with pytest.raises(RuntimeError, match="shapes"):
        cli.main(["bench", "out"])


@pytest.mark.parametrize("argv, words", [
    (["run", "r.yaml", "--teacher", ""], "--teacher is empty"),
    (["plan", "r.yaml", "--teacher", " "], "--teacher is empty"),
    (["eval", "out", "--teacher", ""], "--teacher is empty"),
    (["run", "r.yaml", "--teacher-config", "/nonexistent"], "--teacher-config '/nonexistent': no such file or folder"),
    (["plan", "r.yaml", "--teacher-config", "/nonexistent/config.json"], "no such file or folder"),
])
def test_an_empty_teacher_or_a_missing_teacher_config_is_refused(monkeypatch, capsys, argv, words):
    """Not the recipe's teacher in silence, nor a config recorded in report.json that is not there."""
    ran = []
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: ran.append(args) or 0)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dit-compress: error: ") and words in err and "\n" not in err and not ran


def test_a_reader_that_goes_away_is_no_traceback(monkeypatch):
    """`dit-compress inspect OUT --json | head -c 300` ended in a BrokenPipeError traceback."""
    import os

    from compress import cli

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setitem(cli.COMMANDS, "inspect", closed_pipe)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)  # pytest's captured stdout stays
    monkeypatch.setattr(cli.sys, "stdout", type("Out", (), {"fileno": lambda self: 1})())
    assert cli.main(["inspect", os.devnull]) == 0
