import pytest

from compress import cli, interrupts
from compress.errors import UserError
from compress.passes.distill_trainer import StepLimitReached, TrainingInterrupted


@pytest.mark.parametrize("raised, said, code", [
    (TrainingInterrupted("distill: stopped at step 3/6 on a stop signal"),
     "dit-compress: distill: stopped at step 3/6 on a stop signal", 130),
    (TrainingInterrupted("distill: stopped at step 3/6 on a stop signal", 15),  # SIGTERM: 128 + 15, as a shell says
     "dit-compress: distill: stopped at step 3/6 on a stop signal", 143),
    (StepLimitReached("distill: stopped at step 3/6 on max_steps_this_run=3"),  # planned: rerun, not Ctrl-C
     "dit-compress: distill: stopped at step 3/6 on max_steps_this_run=3", 75),
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
    ("run", "dit-compress: interrupted; nothing was saved yet: a rerun starts over"),
    ("bench", "dit-compress: interrupted"),
    ("importance", "dit-compress: interrupted"),
    ("eval", "dit-compress: interrupted"),
])
def test_an_interrupt_says_resume_only_where_the_command_has_it(monkeypatch, capsys, tmp_path, command, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)  # runs/x: no run folder
    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert cli.main([command, "x"]) == 130
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("flags, said", [
    ([], "dit-compress: interrupted; runs/r keeps its work (1 of 3 passes done): rerun with --resume to continue"),
    (["--resume"], "dit-compress: interrupted; runs/r keeps its work (1 of 3 passes done): rerun with --resume "
                   "to continue"),
    (["--restart"], "dit-compress: interrupted; nothing was saved yet: a rerun starts over"),
])
def test_an_interrupt_before_the_run_offers_resume_only_for_saved_work(monkeypatch, capsys, tmp_path, flags, said):
    """Ctrl-C while `run` imports or reads its recipe leaves the run folder as it was: an interrupted
    run's saved work is offered to --resume, unless --restart was about to discard it."""
    import json

    stage = tmp_path / "runs" / "r" / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": {"passes": [{"svd": {}}] * 3}}))
    monkeypatch.chdir(tmp_path)

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", "r.yaml", *flags]) == 130
    assert capsys.readouterr().err.strip() == said


RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {{num_prompts: 4, timesteps: 2, batch_size: 8}}
passes:
  - svd: {{targets: [attention], ratio: {ratio}, progress: false}}
  - svd: {{targets: [mlp], ratio: 0.5}}
"""


@pytest.mark.parametrize("saved_ratio, progress, said", [
    (0.5, "true", "dit-compress: interrupted; runs/r keeps its work (1 of 2 passes done): rerun with --resume to "
                  "continue"),
    (0.25, "false", "dit-compress: interrupted; runs/r holds an interrupted run of another recipe (it differs in "
                    "passes.0.svd.ratio; 1 of 2 passes done): a rerun needs --restart to discard it, or another "
                    "--run-dir"),
])
def test_an_interrupt_before_the_run_offers_resume_only_for_this_recipes_work(monkeypatch, capsys, tmp_path,
                                                                             saved_ratio, progress, said):
    """Ctrl-C before the run checked its folder offered --resume for another recipe's saved work, which
    --resume refuses; the recipes are compared as --resume does (progress changes no result)."""
    import importlib
    import json

    from compress.recipe import parse_recipe

    saved = parse_recipe(RECIPE.format(ratio=saved_ratio).replace("false", progress), "r.yaml").raw
    stage = tmp_path / "runs" / "r" / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": saved}))
    (tmp_path / "r.yaml").write_text(RECIPE.format(ratio=0.5))
    monkeypatch.chdir(tmp_path)

    def interrupted(args):
        importlib.import_module("compress.runner")  # Ctrl-C once `run`'s imports are done
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", "r.yaml"]) == 130
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("kills, apart", [(1, 0.0), (2, 0.0), (2, 1.0)])
def test_an_interrupt_while_importing_is_held_to_the_end_and_a_second_raised_at_once(monkeypatch, kills, apart):
    """SIGINT inside torch's C++ start-up aborted the interpreter or was lost: the first is held to
    the end of the block, then raised; a second (an import that hangs) is raised at once, unless it
    comes right after the first (`timeout -s INT` signals the command, then its process group: one
    stop, twice; raised inside torch's start-up it aborted the interpreter, exit -6)."""
    import os
    import signal

    clock = iter([100.0, 100.0 + apart])
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: next(clock))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("held: the block goes on")
                if kills == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                done.append("the rest of the block")
        raised_at_once = kills == 2 and apart >= interrupts.SECOND_INTERRUPT_S
        assert done == ["held: the block goes on", "the rest of the block"][:1 if raised_at_once else 2]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_makes_its_imports_with_a_ctrl_c_held(monkeypatch, command):
    """Each command's imports (torch's start-up among them) go through the one place that holds a
    Ctrl-C (cli.imports_held): all made, then the interrupt raised, before the command runs."""
    import argparse
    import os
    import signal

    imported = []

    class Module:
        def __getattr__(self, name):
            return lambda *args, **kwargs: pytest.fail(f"`{command}` ran after a Ctrl-C during its imports")

    def import_module(name):
        if not imported:  # one Ctrl-C: a second would be raised at once
            os.kill(os.getpid(), signal.SIGINT)
        imported.append(name)
        return Module()

    monkeypatch.setattr(cli, "import_module", import_module)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
    try:
        with pytest.raises(KeyboardInterrupt):
            cli.COMMANDS[command](argparse.Namespace())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert imported and all(name.startswith("compress.") for name in imported)
    if command == "plan":
        assert imported == ["compress.plan", "compress.plan_words", "compress.recipe", "compress.report"]


KILL_WHILE_IMPORTING = """\
import importlib.abc, os, pathlib, signal, sys

class SigintAt(importlib.abc.MetaPathFinder):  # SIGINT as torch's C++ start-up imports numpy
    def find_spec(self, name, path, target=None):
        if name == "numpy._core.multiarray" and not os.path.exists(sys.argv[1]):
            pathlib.Path(sys.argv[1]).write_text("sent")
            os.kill(os.getpid(), signal.SIGINT)

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, SigintAt())
from compress import cli
sys.exit(cli.main(["run", sys.argv[2]]))
"""


def test_ctrl_c_while_torch_imports_ends_the_run(tmp_path):
    """A Ctrl-C that torch's start-up swallowed (it warns that NumPy failed to initialize and goes
    on) let `run` carry on; one that landed elsewhere in it could abort (SIGABRT). Held until the
    imports are done, it ends the run with the one line of any interrupt."""
    import subprocess
    import sys

    sent = tmp_path / "sent"
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_IMPORTING, str(sent), "missing.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if not sent.exists():
        pytest.skip("torch here imports numpy before or without numpy._core.multiarray")
    assert (done.returncode, done.stderr.strip()) == (
        130, "dit-compress: interrupted; nothing was saved yet: a rerun starts over")


@pytest.mark.parametrize("raised, said", [
    ("cuda", "dit-compress: out of memory: `dit-compress bench` ran out of GPU memory (tried to allocate "
             "20.00 GiB); try a smaller --batch, or --device cpu"),
    ("cpu", "dit-compress: out of memory: `dit-compress bench` ran out of CPU memory (tried to allocate "
            "2980.2 GiB); try a smaller --batch"),  # not --device cpu: it ran out there
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
    (["plan", "r.yaml", "--teacher", " "], "--teacher is empty"),
    (["eval", "out", "--teacher", ""], "--teacher is empty"),
    (["bench", "out", "--teacher", ""], "--teacher is empty"),
    (["plan", "r.yaml", "--teacher-config", "/nonexistent/config.json"], "no such file or folder"),
])
def test_an_empty_teacher_or_a_missing_teacher_config_is_refused(monkeypatch, capsys, argv, words):
    """Not the recipe's teacher in silence, nor a config recorded in report.json that is not there."""
    ran = []
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: ran.append(args) or 0)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dit-compress: error: ") and words in err and "\n" not in err and not ran


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_eval_and_bench_take_a_teacher_config_checked_as_runs(monkeypatch, capsys, command):
    """--teacher-config, as `run` takes it (a single-file teacher's config), handed to the command;
    one that is not there refused before it runs, in run's words."""
    ran = []
    monkeypatch.setitem(cli.COMMANDS, command, lambda args: ran.append(args) or 0)
    assert cli.main([command, "out", "--teacher-config", "/nonexistent"]) == 2
    assert "--teacher-config '/nonexistent': no such file or folder" in capsys.readouterr().err and not ran
    assert cli.main([command, "out", "--teacher-config", "/"]) == 0 and ran[0].teacher_config == "/"


@pytest.mark.parametrize("option, words", [
    (["--teacher", ""], "--teacher is empty"),
    (["--teacher-config", "/nonexistent"], "--teacher-config '/nonexistent': no such file or folder"),
    (["--teacher", "toy:pixart", "--out", "a_file/out"], "output folder a_file/out: a_file is a file"),
])
def test_run_checks_its_teacher_options_once(monkeypatch, capsys, tmp_path, option, words):
    """`run`'s teacher options are checked where the Python API checks them (Runner), not twice."""
    from compress import io_source, runner

    checked = []
    real = io_source.check_teacher_options
    monkeypatch.setattr(io_source, "check_teacher_options", lambda *a: (checked.append(a), real(*a))[1])
    monkeypatch.setattr(runner, "check_teacher_options", io_source.check_teacher_options)
    (tmp_path / "r.yaml").write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5}\n")
    (tmp_path / "a_file").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "r.yaml", *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dit-compress: error: ") and words in err and "\n" not in err
    assert len(checked) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "r.yaml"]


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


@pytest.mark.parametrize("argv, said", [
    (["eval", "toy:pixart", "--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
    (["eval", "toy:pixart", "--seed", "99999999999999999999999"], "got 99999999999999999999999"),
    (["bench", "out", "--repeats", "0"], "--repeats of at least 1 (got 0)"),
    (["importance", "toy:pixart", "--buckets", "-2"], "buckets must be an integer ≥ 1, got -2")])
def test_integer_options_out_of_range_are_one_line_before_any_work(monkeypatch, capsys, argv, said):
    """A negative --seed failed in numpy after ~40 s of sampling, a huge one overflowed a C long."""
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: pytest.fail("the command ran"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_the_cli_seed_limit_is_the_toy_evaluations():
    """cli keeps its own copy of the limit (no torch import before the check): the same number."""
    from compress import cli
    from compress.toy import evaluate

    assert cli.SEED_LIMIT == evaluate.SEED_LIMIT


def test_importance_takes_the_recipe_options_plan_and_run_take(monkeypatch, capsys):
    """--teacher, --teacher-config and --set, with plan's help and checks (an empty --teacher, a
    --teacher-config not there: refused before the command runs)."""
    ran = []
    monkeypatch.setitem(cli.COMMANDS, "importance", lambda args: ran.append(args) or 0)
    assert cli.main(["importance", "r.yaml", "--teacher", "org/model", "--teacher-config", "/",
                     "--set", "a=1", "--set", "b=2"]) == 0
    assert (ran[0].teacher, ran[0].teacher_config, ran[0].overrides) == ("org/model", "/", ["a=1", "b=2"])
    for option in (["--teacher", ""], ["--teacher-config", "/nonexistent"]):
        assert cli.main(["importance", "r.yaml", *option]) == 2 and len(ran) == 1
        assert capsys.readouterr().err.count("\n") == 1
    parser = cli.build_parser()
    helps = {sub: {a.dest: a.help for a in parser._subparsers._group_actions[0].choices[sub]._actions}
             for sub in ("plan", "importance")}
    assert all(helps["importance"][k] == helps["plan"][k] for k in ("teacher", "teacher_config", "overrides"))


SIMPLE_LAUNCHER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "ACCELERATE_USE_CPU": "True",
                   "ACCELERATE_MIXED_PRECISION": "no"}  # what accelerate launch --num_processes 2 sets, no GPU


def test_run_says_when_accelerate_launch_started_one_process_of_several(tmp_path, monkeypatch, capsys):
    """`accelerate launch --num_processes 2` (or with --cpu) on a machine without a GPU starts one
    process (its simple launcher), and nothing said so but report.json's "processes": 1. What it
    leaves: MASTER_ADDR and MASTER_PORT, without RANK or WORLD_SIZE (torchrun and --multi_gpu set them)."""
    for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SIMPLE_LAUNCHER.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2  # (the note comes first)
    err = capsys.readouterr().err
    assert err.startswith("note: accelerate launch started this run as one process")
    assert "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`" in err
    from compress.runner_ranks import one_process_note

    assert one_process_note(dict(SIMPLE_LAUNCHER, RANK="0", WORLD_SIZE="2")) is None  # --multi_gpu, torchrun
    assert one_process_note({k: v for k, v in SIMPLE_LAUNCHER.items() if k != "MASTER_PORT"}) is None  # one asked for
    assert one_process_note({"MASTER_ADDR": "h", "MASTER_PORT": "1"}) is None  # no accelerate launch
    assert one_process_note(dict(SIMPLE_LAUNCHER, OMPI_COMM_WORLD_SIZE="2")) is None  # its mpirun: several


PROMPTS_RECIPE = ("model: pixart\nteacher: toy:pixart\n"
                  "calibration: {{source: pipeline, prompts: {prompts}, sample_steps: 2, timesteps: 2, heldout: 1}}\n"
                  "passes:\n  - remove_blocks: {{blocks: {{blocks: [0]}}}}\n  - svd: {{targets: [mlp], ratio: 0.5}}\n")


@pytest.mark.parametrize("saved_prompts", ["[a 1, a 2]", "[a 3, a 4]"])
def test_an_interrupt_before_the_runner_says_what_the_runners_note_says(monkeypatch, capsys, tmp_path, saved_prompts):
    """A Ctrl-C before `run`'s Runner existed (loading the recipe, making the Runner) passed no recipe
    to the note: a stage calibrated on other prompts was offered 'rerun with --resume to continue',
    which --resume refuses. It says what the Runner's own note says."""
    import importlib
    import json
    from pathlib import Path

    from compress.calib_prompts import prompts_digest
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    saved = parse_recipe(PROMPTS_RECIPE.format(prompts=saved_prompts), "r.yaml")
    stage = tmp_path / "runs" / "r" / "stages" / "0-remove_blocks"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": saved.raw, "inputs": {
        "prompts": prompts_digest(list(saved.calibration.prompts)), "pipeline": None}}))
    (tmp_path / "r.yaml").write_text(PROMPTS_RECIPE.format(prompts="[a 3, a 4]"))
    monkeypatch.chdir(tmp_path)

    def interrupted(args):
        importlib.import_module("compress.runner")  # Ctrl-C once `run`'s imports are done, before its Runner
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", "r.yaml"]) == 130
    said = " ".join(capsys.readouterr().err.split())
    runners = Runner(parse_recipe((tmp_path / "r.yaml").read_text(), "r.yaml"), Path("out/r"), Path("runs/r"))
    assert said == " ".join(f"dit-compress: interrupted{runners.interrupt_note()}".split())
    changed = "the calibration prompts changed (calibration.prompts) since it ran"
    assert (changed in said) is (saved_prompts != "[a 3, a 4]")
    assert ("rerun with --resume to continue" in said) is (saved_prompts == "[a 3, a 4]")


@pytest.mark.parametrize("argv, usage, said", [
    (["run", "r.yaml", "--outt", "x"], "usage: dit-compress run ",
     "dit-compress run: error: unrecognized arguments: --outt x; did you mean '--out'?"),
    (["run", "r.yaml", "--run_dir=x"], "usage: dit-compress run ",
     "dit-compress run: error: unrecognized arguments: --run_dir=x; did you mean '--run-dir'?"),
    (["convert", "f.safetensors", "--out", "o"], "usage: dit-compress convert ",
     "dit-compress convert: error: unrecognized arguments: --out; out is given by its place, without --out "
     "(dit-compress convert file out)"),
    (["eval", "out", "extra"], "usage: dit-compress eval ", "dit-compress eval: error: unrecognized arguments: extra"),
    (["plan", "r.yaml", "--version"], "usage: dit-compress plan ", "dit-compress plan: error: unrecognized "
     "arguments: --version; --version goes before the command (dit-compress --version)"),
])
def test_an_unknown_argument_of_a_command_prints_that_command_s_usage(capsys, argv, usage, said):
    """`run R --outt x` and `convert F --out O` printed the top-level usage (dit-compress [-h] [--version]
    COMMAND ...), which names no option of the command, and no suggestion (a tester's finding)."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and err.strip().splitlines()[-1] == said
