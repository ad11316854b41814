"""`dit-compress`: argument parsing and printing only; the work lives in the modules it calls."""

from __future__ import annotations

import errno
import functools
import os
import sys
from importlib import import_module
from pathlib import Path

from compress.cli_checks import _check_numbers, _check_paths_there, _check_teacher_options
from compress.cli_parser import build_parser, empty_path
from compress.errors import NumericError, UserError, folder_named, too_long
from compress.interrupts import forget_stops, interrupts_held, stop_status
from compress.recipe_shipped import take_shipped


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C in `run`; its text says what the run folder offers a rerun (Runner.interrupt_note)."""


def _run_dir(args) -> Path:
    from compress.output_names import default_name

    return Path(args.run_dir or Path("runs") / default_name(args.recipe)).expanduser()  # no shell expands --run-dir=~/r


def _out(args) -> Path:
    """--out, else out/<recipe name> (an output's own recipe.yaml: that output's name, output_names.default_name)."""
    from compress.output_names import default_name

    return Path(args.out or Path("out") / default_name(args.recipe)).expanduser()  # nor --out=~/x


def imports_held(*needs: str):
    """A `cmd_*` handed, after args, what it imports (`held_imports`). The command itself runs as
    it is (`run` ends its passes on a Ctrl-C)."""
    def wrap(command):
        @functools.wraps(command)
        def imported(args) -> int:
            return command(args, *held_imports(*needs))
        return imported
    return wrap


def held_imports(*needs: str) -> list:
    """What `needs` names (each "module:name"), imported with a Ctrl-C held to their end
    (interrupts_held): torch's and diffusers' start-up (seconds) among them. A command imports
    compress.recipe alone first (no torch) and loads its recipe with it: a recipe it refuses is refused
    in a moment, and the Recipe it loads is the one it uses."""
    with interrupts_held():
        return [getattr(import_module(module), name) for module, _, name in (need.partition(":") for need in needs)]


@imports_held("compress.recipe:load_recipe")
def cmd_run(args, load_recipe) -> int:
    from compress.output_names import saved_in_output
    from compress.report import console, note, notes_from_rank_zero
    from compress.runner_folders import check_clear_of_teacher
    from compress.runner_lock import refuse_held
    from compress.runner_ranks import one_process_note

    notes_from_rank_zero()
    if launched := one_process_note():  # accelerate launch asked for several processes, started one
        console.print(launched, markup=False, highlight=False)
    recipe = load_recipe(args.recipe, args.overrides, command="run")  # every check of the recipe: no torch
    args.loaded_recipe = recipe  # what a Ctrl-C before the Runner runs compares the run folder with (_this_recipe)
    out, run_dir = _out(args), _run_dir(args)
    if not (args.out and args.run_dir) and (saved := saved_in_output(args.recipe)) is not None:
        note(_defaults_note(args, saved, out, run_dir))
    refuse_held(run_dir, out)  # folders another run holds, as the Runner's locks say it: no torch either
    # an output or run folder in the teacher's (through a link too): refused before the locks make anything there
    check_clear_of_teacher(out, args.teacher or recipe.teacher, None, run_dir)
    [Runner] = held_imports("compress.runner:Runner")
    runner = Runner(recipe, out, run_dir, teacher=args.teacher, teacher_config=args.teacher_config,
                    resume=args.resume, overwrite=args.overwrite, restart=args.restart)
    try:
        runner.run()
    except KeyboardInterrupt:
        raise RunInterrupted(runner.interrupt_note()) from None
    return 0


def _defaults_note(args, saved, out: Path, run_dir: Path) -> str:
    """The note of a run of an output's own recipe.yaml: the default folders it takes that output's name
    for, only those --out / --run-dir left to their default (a folder given is no default)."""
    defaults = [(f, flag) for f, flag, given in ((out, "--out", args.out), (run_dir, "--run-dir", args.run_dir))
                if not given]
    folders, flags = " and ".join(str(f) for f, _ in defaults), ", ".join(flag for _, flag in defaults)
    which = "its default folders take" if len(defaults) > 1 else "its default folder takes"
    return (f"{args.recipe} is the recipe saved in the output {saved}: {which} that output's name, {folders} "
            f"({flags} to choose {'others' if len(defaults) > 1 else 'another'})")


@imports_held("compress.recipe:load_recipe")
def cmd_plan(args, load_recipe) -> int:
    recipe = load_recipe(args.recipe, args.overrides)  # every check of the recipe: no torch
    make_plan, print_plan, to_json = held_imports(
        "compress.plan:make_plan", "compress.plan_words:print_plan", "compress.report:to_json")
    run_dir = _run_dir(args) if args.run_dir else None  # None: run's default, which the refusal says it measured
    if run_dir is not None:
        _warn_unwritable(run_dir)
    plan = make_plan(recipe, teacher=args.teacher, teacher_config=args.teacher_config, run_dir=run_dir)
    if args.json:
        print(to_json(plan))
    else:
        print_plan(plan)
    return 0


def _warn_unwritable(run_dir: Path) -> None:
    """plan's warning of a --run-dir that run would refuse as not writable, in run's words (runner_folders)."""
    from compress.report import warn
    from compress.runner_folders import unwritable

    if (words := unwritable(run_dir, f"run folder {run_dir}")) is not None:
        warn(f"{words}; `dit-compress run` would refuse this before it loads the teacher")


@imports_held("compress.inspect:inspect_output")
def cmd_inspect(args, inspect_output) -> int:
    inspect_output(args.out, as_json=args.json, plot_dir=args.plot)
    return 0


@imports_held("compress.commands_importance:importance")
def cmd_importance(args, importance) -> int:
    return importance(args)


@imports_held("compress.commands:evaluate")
def cmd_eval(args, evaluate) -> int:
    return evaluate(args)


@imports_held("compress.commands:convert")
def cmd_convert(args, convert) -> int:
    return convert(args)


@imports_held("compress.commands_lora:lora")
def cmd_lora(args, lora) -> int:
    return lora(args)


@imports_held("compress.bench:bench_command")
def cmd_bench(args, bench_command) -> int:
    return bench_command(args)


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "inspect": cmd_inspect, "importance": cmd_importance,
            "eval": cmd_eval, "bench": cmd_bench, "convert": cmd_convert, "lora": cmd_lora}


# what lowers the memory a command other than `run` needs (run names its pass and recipe keys)
MEMORY_HINTS = {
    "bench": "a smaller --batch",
    "importance": "a recipe with a smaller calibration.batch_size, compute_dtype: bfloat16 or stream: true",
    "eval": "a machine with more memory (a streamed run's output is evaluated streamed)",
    "plan": "a machine with more memory",
}
GPU_MEMORY_HINTS = {"bench": "a smaller --batch, or --device cpu"}  # where a GPU ran out: the CPU's memory may do


def _out_of_memory(command: str, e: BaseException) -> UserError | None:
    """The one-line error of a failed allocation in `command`, or None when `e` is another error."""
    from compress.runner_failures import OutOfMemory, is_out_of_memory, memory_in_words

    if not is_out_of_memory(e):
        return None
    memory = memory_in_words(e)  # 'GPU memory ...' or 'CPU memory ...'
    hints = GPU_MEMORY_HINTS if memory.startswith("GPU") and command in GPU_MEMORY_HINTS else MEMORY_HINTS
    hint = hints.get(command, "a machine with more memory")
    return OutOfMemory(f"`dit-compress {command}` ran out of {memory}; try {hint}")


# what each command writes where the user names it, and the option (or argument) that names it
WRITTEN = {"importance": ("png", "--png"), "eval": ("grid", "--grid"), "inspect": ("plot", "--plot"),
           "lora": ("new", "an output folder")}


def _cannot_write(args, e: BaseException) -> UserError | None:
    """The one-line error of a write that failed for want of space, quota, a writable file system or
    a file-size limit (runner_failures.disk_full_line) in a command other than run (whose Runner says
    it with what its run folder keeps), naming the file (else what the command was writing) and the
    option that puts it elsewhere; None for another error, or another command's (convert says its own)."""
    if args.command not in WRITTEN:
        return None
    from compress.runner_failures import DiskFull, disk_full_line, disk_full_words  # (torch: only for an error)

    if disk_full_words(e) is None:
        return None
    name, flag = WRITTEN[args.command]
    given = getattr(args, name, None)
    named = getattr(e, "filename", None)
    json = getattr(args, "json", None) if args.command == "importance" else None
    if json and json != "-" and named and Path(named).absolute() == Path(json).expanduser().absolute():
        given, flag = json, "--json"
    if named and not (given and _within(Path(named), Path(given).expanduser())):
        flag = None  # a file the command writes elsewhere (a cache): no option of its moves it
    return DiskFull(disk_full_line(e, f"dit-compress {args.command}", folder_named(Path(named or given or ".")), flag))


def _within(path: Path, given: Path) -> bool:
    """Whether `path` is the path `given` or lies inside it, or inside the temp folder it is written as
    (io_atomic.atomic_folder's .NAME.tmp-XXXXXXXX beside it)."""
    path, given = path.absolute(), given.absolute()
    temp = [p for p in (path, *path.parents) if p.parent == given.parent and p.name.startswith(f".{given.name}.tmp-")]
    return path == given or given in path.parents or bool(temp)


def main(argv: list[str] | None = None) -> int:
    forget_stops()  # the exit status of a stop is that of the signal that stopped this command
    args = build_parser().parse_args(argv)
    try:
        if (empty := empty_path(args)) is not None:  # --out '' ran the whole recipe into out/NAME
            raise UserError(empty)
        take_shipped(args)  # `run toy-pixart`: the shipped recipes/toy-pixart.yaml, for a wheel without a checkout
        _check_numbers(args)
        _check_teacher_options(args)
        _check_paths_there(args)
        try:
            return COMMANDS[args.command](args)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised where it is neither
            memory = _out_of_memory(args.command, e) if isinstance(e, (RuntimeError, MemoryError)) else None
            error = memory or _cannot_write(args, e)
            if error is None:
                raise
            raise error from None
    except UserError as e:
        if not (_follower() and _stop(e)):  # a requested stop: rank 0 says it
            said = _who(args.command if e.label == UserError.label else None)  # a user error; not a stop, nor
            # the machine's trouble, whose words say what ran out (runner_failures: 'out of memory: ...')
            print(f"{said}: {e.label}{e}", file=sys.stderr)
        return e.exit_code
    except NumericError as e:
        print(f"{_who(args.command)}: numeric error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `dit-compress inspect OUT --json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG or not e.filename:  # a name or path over the system's limit
            raise
        print(f"{_who(args.command)}: error: {too_long(e.filename)}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt as e:
        if not _follower():  # what the run folder keeps: rank 0, which writes it, says it
            print(f"dit-compress: interrupted{_rerun_note(args, e)}", file=sys.stderr)
        return stop_status()  # 128 + the signal's number: 130 for a Ctrl-C, 143 for SIGTERM, 129 for SIGHUP


def _stop(e: UserError) -> bool:
    """A requested stop (a signal, max_steps_this_run: exit status 128 + the signal's number, or 75), or
    rank 0's, not an error of this process."""
    from compress.passes.distill_trainer import TrainingInterrupted  # imported by the run that raised it
    from compress.runner_ranks import MainStopped

    return isinstance(e, (TrainingInterrupted, MainStopped))


def _follower() -> bool:
    """A rank other than 0 of a distributed launch (runner_ranks imports no torch)."""
    from compress.runner_ranks import is_follower

    return is_follower()


def _who(command: str | None) -> str:
    """Who says an error found after parsing: 'dit-compress bench' for its `command` (as argparse's own errors
    name it: a user error, a numeric one), 'dit-compress' without one (a requested stop, as 'dit-compress:
    interrupted'; the machine's trouble), and the rank of a distributed launch's other processes (whose errors
    may differ from rank 0's)."""
    from compress.runner_ranks import rank

    who = f"dit-compress {command}" if command else "dit-compress"
    return f"{who} (rank {rank()})" if _follower() else who


def _rerun_note(args, e: KeyboardInterrupt) -> str:
    """`_interrupt_note`, and for `run` whose output folder is there (an earlier output its --overwrite
    had not replaced yet), that the rerun needs --overwrite too (output_names.rerun_needs_overwrite)."""
    from compress.output_names import rerun_needs_overwrite

    said = _interrupt_note(args, e)
    return rerun_needs_overwrite(_out(args), said) if args.command == "run" else said


def _interrupt_note(args, e: KeyboardInterrupt) -> str:
    """Whether a rerun can continue: only `run` saves its work as it goes, the other commands start
    again. A Ctrl-C before `run`'s Runner ran leaves the run folder as it was (--restart had not
    discarded it yet): said as the Runner's note says it before its teacher loads (Runner.interrupt_note:
    the recipe, its passes, its prompts and the teacher named compared with what the folder holds)."""
    if args.command != "run":
        return ""
    if isinstance(e, RunInterrupted):
        return str(e)
    from compress.recipe_teacher_config import config_by
    from compress.runner_folders import interrupt_note  # no torch: it may not be imported yet

    recipe, passes = _this_recipe(args)
    if recipe is None:
        return interrupt_note(_run_dir(args), args.restart)
    config = recipe.teacher_config if args.teacher_config is None else args.teacher_config  # as the Runner reads it
    return interrupt_note(_run_dir(args), args.restart, recipe.raw, passes, recipe=recipe,
                          source=args.teacher or recipe.teacher, teacher_config=config,
                          named=config_by(recipe, args.teacher_config))


def _this_recipe(args) -> tuple:
    """(Recipe, passes) of `run`'s recipe, which the run folder's saved work is compared with: the one
    cmd_run loaded (not parsed again), else (a Ctrl-C before cmd_run had it, in a process whose runner was
    imported already; a stand-in for the run command) read here; (None, []) (not compared) when the Ctrl-C
    cut `run`'s imports short (building its passes would import torch now), or the recipe cannot be read
    or its passes built (a rerun stops on that first)."""
    if "compress.runner" not in sys.modules:
        return None, []
    from compress.passes import build_passes
    from compress.recipe import load_recipe

    try:
        recipe = getattr(args, "loaded_recipe", None) or load_recipe(args.recipe, args.overrides)
        return recipe, build_passes(recipe)
    except UserError:
        return None, []


if __name__ == "__main__":  # `python -m compress.cli` (accelerate launch ... -m compress.cli): as the console
    from compress.cli_entry import main as entry  # script, SIGTERM and SIGHUP a Ctrl-C, a quiet exit after the end

    sys.exit(entry())
