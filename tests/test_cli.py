"""`dit-compress`'s options, one-line errors and launch notes (its stops and interrupts:
tests/test_cli_interrupts.py)."""

import pytest

from compress import cli


def test_every_option_says_what_it_does():
    """`dit-compress COMMAND --help` explains each option (a bare `--json` says nothing)."""
    import argparse

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = [f"{name} {action.option_strings[0]}" for name, sub in commands.choices.items()
              for action in sub._actions
              if action.option_strings and action.help is None]
    assert silent == []


@pytest.mark.parametrize("command", ["inspect", "bench", "lora", "eval"])
def test_commands_reading_an_output_say_they_take_a_cached_hub_id(capsys, command):
    """inspect, bench, lora and eval read an output folder or a Hub id whose cached copy is one
    (commands.cached_output_said, hub_output): their help says both (eval's said only 'output folder
    or teacher source such as toy:pixart')."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "output folder of `dit-compress run`, or the Hub id (ORG/NAME) of one in the Hugging Face cache" in said


@pytest.fixture
def an_output(monkeypatch, tmp_path):
    """A folder `out` where the command runs: an output not there is refused before the command (cli.main)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()


@pytest.mark.usefixtures("an_output")
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


@pytest.mark.usefixtures("an_output")
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
    assert err.startswith(f"dit-compress {argv[0]}: error: ") and words in err and "\n" not in err and not ran


@pytest.mark.usefixtures("an_output")
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
    """`run`'s teacher options are checked in the Runner's words, once where they are refused: by the CLI,
    before its locks (T3 stop 51: a held run folder said so in place of `--teacher ''`'s words), which the
    Runner then never reaches; options that pass are checked again by the Runner (for the Python API)."""
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
    assert err.startswith("dit-compress run: error: ") and words in err and "\n" not in err
    refused_by_them = option[0] != "--teacher" or option[1] == ""
    assert len(checked) == (1 if refused_by_them else 2) and checked[0][-1] == "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "r.yaml"]


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
    (["bench", "out", "--repeats", "0"], "--repeats must be an integer ≥ 1, got 0"),
    (["importance", "toy:pixart", "--buckets", "-2"], "error: --buckets must be an integer ≥ 1, got -2"),
    (["bench", "out", "--batch", "0"], "error: --batch must be an integer ≥ 1, got 0")])
def test_integer_options_out_of_range_are_one_line_before_any_work(monkeypatch, capsys, argv, said):
    """A negative --seed failed in numpy after ~40 s of sampling, a huge one overflowed a C long."""
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: pytest.fail("the command ran"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_the_cli_seed_limit_is_the_toy_evaluations():
    """cli_checks keeps its own copy of the limit (no torch import before the check): the same number."""
    from compress import cli_checks
    from compress.toy import evaluate

    assert cli_checks.SEED_LIMIT == evaluate.SEED_LIMIT


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


COMMAND_ARGS = {"run": ["r.yaml"], "plan": ["r.yaml"], "importance": ["r.yaml"], "inspect": ["out"],
                "eval": ["out"], "bench": ["out"], "convert": ["f.safetensors", "o"], "lora": ["out", "l", "new"]}
TYPOS = {"run": ("--tacher", "--teacher"), "plan": ("--rundir", "--run-dir"), "importance": ("--pngg", "--png"),
         "inspect": ("--plt", "--plot"), "eval": ("--sed", "--seed"), "bench": ("--batchs", "--batch"),
         "convert": ("--teacher-confg", "--teacher-config"), "lora": ("--scael", "--scale")}


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_an_unknown_option_is_told_only_a_close_option(capsys, command):
    """`run R --bogus` said "did you mean '--out'?" and `importance R --bogus` '--buckets': the options
    were compared with their dashes, which every one shares (--bogus and --out: 0.67, over 0.6). Now
    their names are (as recipe keys'): no suggestion for a word close to none, the option for a typo."""
    said = {}
    for option in ("--bogus", "-x", TYPOS[command][0]):
        with pytest.raises(SystemExit):
            cli.main([command, *COMMAND_ARGS[command], option])
        said[option] = capsys.readouterr().err.strip().splitlines()[-1]
    start = f"dit-compress {command}: error: unrecognized arguments: "
    typo, meant = TYPOS[command]
    assert said == {"--bogus": f"{start}--bogus", "-x": f"{start}-x", typo: f"{start}{typo}; did you mean '{meant}'?"}


def test_resume_and_restart_are_one_or_the_other_in_run_s_usage(capsys):
    """`run --help` showed [--resume] [--restart] as independent, and both together were refused only
    once the run began. Now they are a mutually exclusive group: usage [--resume | --restart], and
    both are argparse's one-line error before anything runs."""
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "[--resume | --restart]" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "missing.yaml", "--resume", "--restart"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().splitlines()[-1] == "dit-compress run: error: argument --restart: not allowed with argument --resume"


@pytest.mark.parametrize("command, option, said", [
    ("run", "--teacher-config", "A path that does not exist is an error, for any teacher"),
    ("plan", "--teacher-config", "A toy or folder teacher reads none (a warning says so)."),
    ("importance", "--teacher-config", "A path that does not exist is an error, for any teacher"),
    ("eval", "--grid", "toy models only: write a grid of their sampled digits to PNG"),
    ("inspect", "--plot", "write rank-budget and spectrum PNGs into DIR (made if missing)")])
def test_option_help_is_plain_and_says_its_limits(capsys, command, option, said):
    """--teacher-config ended 'one not there is refused whatever the teacher, where the recipe's is only
    warned of for those'; eval --grid did not say it is the toys'; inspect --plot not that it makes DIR."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert said in text and "whatever the teacher" not in text


@pytest.mark.parametrize("argv, said", [
    (["run", "r.yaml", "--out", ""], "--out '' names no folder; give one, or leave --out out"),  # a tester's c59
    (["run", "r.yaml", "--run-dir", " "], "--run-dir ' ' names no folder; give one, or leave --run-dir out"),
    (["plan", "r.yaml", "--teacher-config", ""],
     "--teacher-config '' names no file or folder; give one, or leave --teacher-config out"),
    (["eval", "out", "--lora", "a", "--lora", ""], "--lora '' names no file or folder; give one, or leave --lora out"),
    (["bench", "out", "--teacher-config", ""],
     "--teacher-config '' names no file or folder; give one, or leave --teacher-config out"),
    (["plan", ""], "RECIPE '' names no file (dit-compress plan RECIPE)"),
    (["importance", ""], "SOURCE '' names no recipe or teacher (dit-compress importance SOURCE)"),
    (["inspect", ""], "OUT '' names no folder (dit-compress inspect OUT)"),
    (["eval", ""], "MODEL '' names no folder or teacher (dit-compress eval MODEL)"),
    (["convert", "f.safetensors", ""], "OUT '' names no folder (dit-compress convert FILE OUT)"),
    (["lora", "out", "", "new"], "LORA '' names no file or folder (dit-compress lora OUT LORA NEW)"),
])
def test_a_path_given_empty_is_refused_before_any_work(monkeypatch, capsys, argv, said):
    """`run r.yaml --out ''` ran the whole recipe (4 minutes) into the default out/r; an empty
    --teacher-config was the current folder, `inspect ''` read '.' and `plan ''` said ': a folder'."""
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: pytest.fail("the command ran"))
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"dit-compress {argv[0]}: error: {said}\n"


@pytest.mark.parametrize("flag, value, said", [
    ("--teacher", "", "--teacher is empty: give a hub id, folder, file or toy:NAME, or leave --teacher out to use the "
                      "recipe's (or the recorded) teacher"),
    ("--teacher-config", "nothing.json", "--teacher-config 'nothing.json': no such file or folder"),
    ("--out", "", "--out '' names no folder; give one, or leave --out out"),
])
def test_an_empty_teacher_is_refused_before_the_run_folders_lock(monkeypatch, tmp_path, capsys, flag, value, said):
    """T3 stop 51: `run r.yaml --teacher ''` was refused in one line before any work, except while another run
    held the run folder: then it said 'runs/r is in use by another dit-compress run ...' (its Runner checked
    --teacher after the CLI's lock check), where `--out ''` is refused first. Now both before the lock."""
    from compress.runner_lock import hold_run_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - svd\n")
    with hold_run_folder(tmp_path / "runs" / "r"):  # as another run holds it: the command's own open is refused
        assert cli.main(["run", "r.yaml", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dit-compress run: error: {said}") and "in use" not in err and len(err.splitlines()) == 1, err


def test_every_path_argument_checked_for_empty_is_one_of_its_command():
    """cli_parser.PATH_ARGUMENTS names arguments each command has (a renamed one would go unchecked)."""
    from compress.cli_parser import PATH_ARGUMENTS, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(PATH_ARGUMENTS) == set(commands)
    for command, paths in PATH_ARGUMENTS.items():
        actions = {a.dest: a for a in commands[command]._actions}
        for dest, (name, _) in paths.items():
            assert name in (actions[dest].option_strings or [dest.upper()]), (command, dest)


@pytest.mark.parametrize("argv", [["plan", "r.yaml", "--set", "calibration.timesteps", "4"],  # a tester's c03
                                  ["plan", "--set", "calibration.timesteps", "4", "r.yaml"],
                                  ["run", "r.yaml", "--set=calibration.timesteps", "4"]])
def test_set_given_its_value_apart_says_key_equals_value(capsys, argv):
    """`--set calibration.timesteps 4` printed the usage and 'unrecognized arguments: 4'."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"dit-compress {argv[0]}: error: --set takes KEY=VALUE: --set calibration.timesteps=4\n"


def test_a_rerun_of_an_outputs_recipe_calls_default_only_the_folders_left_to_their_default(monkeypatch, tmp_path,
                                                                                           capsys):
    """'run out/A/recipe.yaml --out out/A2' noted 'its default folders take that output's name, out/A2 and
    runs/A' (T5): out/A2 is the --out given, not a default; the note names the default one(s) alone."""
    import json

    import compress.runner

    monkeypatch.setattr(compress.runner, "Runner", lambda *a, **k: type("R", (), {"run": lambda self: None})())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "out" / "A"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel",
                                                    "compression": {"teacher": "toy:pixart"}}))
    (folder / "report.json").write_text("{}")
    (folder / "recipe.yaml").write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5}\n")

    def said(*given):
        assert cli.main(["run", "out/A/recipe.yaml", *given]) == 0
        return " ".join(capsys.readouterr().err.split())

    head = f"out/A/recipe.yaml is the recipe saved in the output {folder}: "
    assert head + "its default folder takes that output's name, runs/A (--run-dir to choose another)" in said(
        "--out", "out/A2")
    assert head + "its default folder takes that output's name, out/A (--out to choose another)" in said(
        "--run-dir", "runs/A2")
    assert head + "its default folders take that output's name, out/A and runs/A (--out, --run-dir to choose " \
                  "others)" in said()


@pytest.mark.parametrize("argv, said", [
    (["runn", "r.yaml"], "); did you mean 'run'?"),  # after 'invalid choice: 'runn' (choose from ...' (as Python says it)
    (["help"], "); dit-compress --help says what each does"),
    (["--versoin"], "dit-compress: error: unrecognized arguments: --versoin; did you mean '--version'?"),
    (["--versoin", "run", "r.yaml"], "dit-compress: error: unrecognized arguments: --versoin; did you mean '--version'?"),
    (["run", "--hlep"], "dit-compress run: error: unrecognized arguments: --hlep; did you mean '--help'?"),
    (["plan", "--version"], "dit-compress plan: error: unrecognized arguments: --version; --version goes before the "
     "command (dit-compress --version)"),
    (["run"], "dit-compress run: error: the following arguments are required: recipe"),
    (["zzz"], ")"),  # close to no command: none said
])
def test_a_mistyped_command_or_option_is_named_with_the_one_meant(capsys, argv, said):
    """T2 stop 52 #6: `dit-compress runn R` said "invalid choice: 'runn' (choose from ...)" with no "did
    you mean 'run'?" (options get one); `dit-compress --versoin` and `run --hlep` said 'required: COMMAND'
    and 'required: recipe', naming no unknown option; `plan --version` said 'required: recipe', not that
    --version goes before the command. Now each names what was mistyped, as an unknown option is; the
    exit status stays 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines()[-1].endswith(said), err
    assert f"invalid choice: '{argv[0]}'" in err or argv[0] not in ("runn", "help", "zzz")
    assert argv[0] != "zzz" or "did you mean" not in err


def test_dit_compress_alone_shows_its_commands(capsys):
    """T2 stop 52 #6: `dit-compress` with no arguments printed its usage and 'the following arguments are
    required: COMMAND' alone; now its help, which lists the commands (exit status 2, as before)."""
    with pytest.raises(SystemExit) as e:
        cli.main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required" not in err
    assert all(f"    {command}" in err for command in COMMAND_ARGS), err


def test_the_options_that_make_their_files_folder_say_so():
    """T2 stop 52 #10: `eval OUT --grid /nonexist/dir/g.png` made /nonexist/dir (parents included) without a
    word, where only --plot DIR said it makes its folder. Each file option written through
    report.output_file (which makes the folder) says so in its help, and docs/COMMANDS.md of --grid."""
    from pathlib import Path

    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    for command, dest in (("eval", "grid"), ("importance", "png"), ("importance", "json"), ("inspect", "plot")):
        action = next(a for a in commands[command]._actions if a.dest == dest)
        assert "made if missing" in action.help, (command, dest)
    doc = (Path(__file__).parents[1] / "docs" / "COMMANDS.md").read_text()
    assert "`--grid PNG` writes a grid of the sampled digits (its folder made if missing" in doc


def test_the_exit_statuses_are_stated_in_the_help_and_the_commands_doc_as_the_errors_set_them(capsys):
    """Neither docs/COMMANDS.md nor --help said which status means what (2 a user error as a usage error,
    3 numeric trouble): both now list cli_parser.EXIT_STATUSES, whose codes are the errors' own."""
    import re
    from pathlib import Path

    from compress.cli_parser import EXIT_STATUSES, exit_statuses
    from compress.errors import NumericError, UserError
    from compress.passes.distill_trainer import StepLimitReached, TrainingInterrupted
    from compress.runner_failures import DiskFull, OutOfMemory

    codes = dict(EXIT_STATUSES)
    assert UserError.exit_code == 2 and NumericError.exit_code == 3 and StepLimitReached.exit_code == 75
    assert OutOfMemory.exit_code == DiskFull.exit_code == 1 and TrainingInterrupted.exit_code == 130
    assert set(codes) == {0, 1, 2, 3, 75, 130}
    doc = (Path(__file__).parents[1] / "docs" / "COMMANDS.md").read_text()
    paragraph = next(p for p in doc.split("\n\n") if p.startswith("Exit status"))
    stated = [int(c) for c in re.findall(r"(?:: |; )`(\d+)` ", paragraph.replace("\n", " "))]
    assert stated == list(codes), paragraph
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert " ".join(exit_statuses().split()) in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [["bench", "out/x", "--batch", "-1"], ["eval", "toy:pixart", "--seed", "-1"],
                                  ["lora", "o", "l", "n", "--scale", "nan"]])
def test_an_option_out_of_range_names_its_command_as_argparses_errors_do(monkeypatch, capsys, argv):
    """'dit-compress: error: --batch must be an integer ≥ 1, got -1' beside argparse's 'dit-compress bench:
    error: argument --batch: invalid int value': now 'dit-compress bench: error: ...' too."""
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda args: pytest.fail("the command ran"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dit-compress {argv[0]}: error: {argv[-2]} ") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, said", [
    (["inspect", "nowhere"], "no such folder nowhere (dit-compress inspect OUT, OUT written by run)"),
    (["plan", "nope.yaml"], "no such recipe nope.yaml"),
    (["run", "r.yaml", "--out", ""], "--out '' names no folder; give one, or leave --out out"),
    (["plan", "r.yaml", "--set", "nokey"], "r.yaml (--set nokey): expected KEY.PATH=VALUE"),
    (["plan", "r.yaml", "--set", "calibration.seed", "3"], "--set takes KEY=VALUE: --set calibration.seed=3"),
])
def test_every_error_after_parsing_names_its_command(monkeypatch, tmp_path, capsys, argv, said):
    """F7 stop 52: the path checks', --set's and the commands' own errors said 'dit-compress: error: ...' where
    argparse's and the range errors (aadd6a4) say 'dit-compress run: error: ...'. Now each names its command."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5}\n")
    try:
        code = cli.main(argv)
    except SystemExit as e:  # the parser's own (--set KEY VALUE)
        code = e.code
    assert code == 2
    assert capsys.readouterr().err == f"dit-compress {argv[0]}: error: {said}\n"
