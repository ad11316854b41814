"""`dit-compress`: argument parsing and printing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from importlib import import_module
from pathlib import Path

import compress
from compress.errors import NumericError, UserError, did_you_mean
from compress.interrupts import forget_stops, interrupts_held, stop_status


OUT_HELP = "output folder of `dit-compress run`, or the Hub id (ORG/NAME) of one in the Hugging Face cache"


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    _recipe_options(p)


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """--teacher, --teacher-config and --set: what run, plan and importance change of a recipe."""
    p.add_argument("--teacher", help="override the recipe's teacher (hub id, folder, file, toy:NAME)")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file teacher, "
                   "in place of the recipe's teacher_config (a toy or folder teacher reads none: warned); one not "
                   "there is refused whatever the teacher, where the recipe's is only warned of for those")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe key, e.g. --set passes.2.svd.ratio=0.4 (repeatable)")


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: arguments it does not know are its own error (its usage, the option meant),
    not the top-level parser's, whose usage names no option of the command."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._meant(extras)}")
        return parsed, extras

    def _meant(self, extras: list[str]) -> str:
        """'; did you mean '--out'?' for the first unknown option, or where it names a positional
        argument (convert F --out O), that it is given by its place, or that --version is dit-compress's
        own; else ''."""
        option = next((e.partition("=")[0] for e in extras if e.startswith("-")), None)
        if option is None:
            return ""
        if option == "--version":  # the top-level parser's
            return "; --version goes before the command (dit-compress --version)"
        place = [a.dest for a in self._actions if not a.option_strings]
        if (name := option.lstrip("-").replace("-", "_")) in place:
            return f"; {name} is given by its place, without {option} ({self.prog} {' '.join(place)})"
        return did_you_mean(option, [s for a in self._actions for s in a.option_strings])


def _default_folder(parent: str) -> str:
    """The help's default of --out and --run-dir (output_names.default_name)."""
    return f"default: {parent}/<recipe name>; for an output's own recipe.yaml, {parent}/<that output's name>"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dit-compress", description="Low-rank / SVD compression compiler for diffusion "
        "transformers (PixArt-Σ, Flux.1-dev).")
    parser.add_argument("--version", action="version", version=f"dit-compress {compress.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser("run", help="compress a teacher as the recipe says")
    _recipe_args(p)
    p.add_argument("--out", help=f"output folder ({_default_folder('out')})")
    p.add_argument("--run-dir", help=f"run folder for caches and checkpoints ({_default_folder('runs')})")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the passes (and distill checkpoint) it saved")
    p.add_argument("--restart", action="store_true",
                   help="discard an interrupted run's saved passes and checkpoints in --run-dir and start over "
                        "(without --resume or --restart, a run refuses to discard them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of dit-compress (or an empty folder) at --out")

    p = sub.add_parser("plan", help="dry run: resolved targets, ranks, blocks, params before/after")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON (parameters by block too)")

    p = sub.add_parser("inspect", help="per-layer ranks, params, losses against the closed-form optimum, removed "
                       "blocks and distill passes of a compressed model")
    p.add_argument("out", help=OUT_HELP)
    p.add_argument("--json", action="store_true", help="print every layer's row and the run's report as JSON")
    p.add_argument("--plot", metavar="DIR", help="write rank-budget and spectrum PNGs into DIR")

    p = sub.add_parser("importance", help="block-importance scan: table, JSON and heatmap PNG")
    p.add_argument("source", help="a recipe YAML (a real teacher is scanned through a recipe naming it), or a toy "
                   "teacher (toy:pixart, toy:flux)")
    p.add_argument("--buckets", type=int, help="timestep buckets, at most the calibration timesteps (default: the "
                   "recipe's importance pass's buckets, else 3)")
    p.add_argument("--json", metavar="FILE", help="write the scan as JSON (- : on standard output, in place of the table)")
    p.add_argument("--png", metavar="FILE", help="heatmap path (default importance-<family>.png)")
    _recipe_options(p)  # of a recipe source only (commands_importance.importance says so of a toy)

    p = sub.add_parser("eval", help="teacher-relative fidelity and toy quality scores")
    p.add_argument("model", help="output folder or teacher source such as toy:pixart")
    p.add_argument("--teacher", help="teacher to compare against (default: the one recorded)")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file teacher "
                   "(default: the one recorded, also with a --teacher that is a single file without one beside it)")
    p.add_argument("--lora", action="append", metavar="PATH",
                   help="where the LoRA the output took (dit-compress lora) is now, if it moved since it was "
                        "merged (default: the place the output recorded); once per LoRA, in the order it took them")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--grid", metavar="PNG", help="write a sample grid")
    p.add_argument("--seed", type=int, default=None,
                   help="toy models: seed of the sampled digits (default 0); a real model is measured on "
                        "its run's held-out inputs")

    p = sub.add_parser("bench", help="latency / memory of teacher vs student, as ratios")
    p.add_argument("out", help=OUT_HELP)
    p.add_argument("--teacher", help="teacher (default: the one recorded in the output)")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file teacher "
                   "(default: the one recorded, also with a --teacher that is a single file without one beside it)")
    p.add_argument("--lora", action="append", metavar="PATH",
                   help="where the LoRA the output took (dit-compress lora) is now, if it moved since it was "
                        "merged (default: the place the output recorded); once per LoRA, in the order it took them")
    p.add_argument("--repeats", type=int, default=20, help="timed denoising steps of each model, after 3 warm-ups (default 20)")
    p.add_argument("--batch", type=int, default=2,
                   help="images per step (default 2); classifier-free guidance doubles the rows for "
                        "PixArt-Σ and the toys")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")

    p = sub.add_parser("convert", help="a single-file checkpoint as a diffusers transformer folder (for stream: true)")
    p.add_argument("file", help="single-file checkpoint: BFL Flux, original PixArt-Σ .pth, or diffusers keys")
    p.add_argument("out", help="the folder to write (must not exist): config.json and safetensors shards")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of the file's transformer "
                   "(default: the config.json beside the file)")

    p = sub.add_parser("lora", help="a LoRA trained on the teacher merged into a compressed model, as a new output")
    p.add_argument("out", help=OUT_HELP)
    p.add_argument("lora", help="the LoRA: a .safetensors file or folder (Flux: any format diffusers reads; PixArt-Σ: diffusers- or kohya-style keys), a peft adapter folder, or a Hub id in the Hugging Face cache (ORG/NAME or ORG/NAME/FILE.safetensors)")
    p.add_argument("new", help="the output folder to write (must not exist)")
    p.add_argument("--scale", type=float, default=1.0, help="strength of the LoRA (default 1)")
    p.add_argument("--teacher", help="the teacher the LoRA was trained on, read only for a DoRA's norms "
                   "(default: the one recorded in the output, or where that is itself an output, the first teacher of its chain)")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file --teacher")
    return parser


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
    """A `cmd_*` handed, after args, what it imports (each "module:name"), imported with a Ctrl-C
    held to their end (interrupts_held): torch's and diffusers' start-up (seconds) among them. The
    command itself runs as it is (`run` ends its passes on a Ctrl-C)."""
    def wrap(command):
        @functools.wraps(command)
        def imported(args) -> int:
            with interrupts_held():
                found = [getattr(import_module(module), name)
                         for module, _, name in (need.partition(":") for need in needs)]
            return command(args, *found)
        return imported
    return wrap


@imports_held("compress.recipe:load_recipe", "compress.runner:Runner")
def cmd_run(args, load_recipe, Runner) -> int:
    from compress.output_names import saved_in_output
    from compress.report import console, note, notes_from_rank_zero
    from compress.runner_ranks import one_process_note

    notes_from_rank_zero()
    if launched := one_process_note():  # accelerate launch asked for several processes, started one
        console.print(launched, markup=False, highlight=False)
    recipe = load_recipe(args.recipe, args.overrides, command="run")
    out, run_dir = _out(args), _run_dir(args)
    if not (args.out and args.run_dir) and (saved := saved_in_output(args.recipe)) is not None:
        note(f"{args.recipe} is the recipe saved in the output {saved}: its default folders take that output's "
             f"name, {out} and {run_dir} (--out, --run-dir to choose others)")
    runner = Runner(recipe, out, run_dir, teacher=args.teacher, teacher_config=args.teacher_config,
                    resume=args.resume, overwrite=args.overwrite, restart=args.restart)
    try:
        runner.run()
    except KeyboardInterrupt:
        raise RunInterrupted(runner.interrupt_note()) from None
    return 0


@imports_held("compress.plan:make_plan", "compress.plan_words:print_plan", "compress.recipe:load_recipe",
              "compress.report:to_json")
def cmd_plan(args, make_plan, print_plan, load_recipe, to_json) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe, teacher=args.teacher, teacher_config=args.teacher_config)
    if args.json:
        print(to_json(plan))
    else:
        print_plan(plan)
    return 0


@imports_held("compress.inspect:inspect_output")
def cmd_inspect(args, inspect_output) -> int:
    inspect_output(Path(args.out).expanduser(), as_json=args.json, plot_dir=args.plot)
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


SEED_LIMIT = 2**32  # compress.toy.evaluate.SEED_LIMIT's, here so the check imports no torch (tested equal)
POSITIVE = {"buckets": "importance: buckets must be an integer ≥ 1, got {}",  # as compress.passes.importance.scan
            "repeats": "bench needs --repeats of at least 1 (got {})", "batch": "bench needs --batch of at least 1 (got {})"}


def _check_numbers(args) -> None:
    """Integer options out of range: a one-line UserError before any work (a negative --seed failed
    in numpy after sampling, a huge one overflowed a C long; --buckets 0 after the calibration)."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise UserError(f"--seed must be an integer from 0 to {SEED_LIMIT - 1}, got {seed}")
    for name, message in POSITIVE.items():
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(message.format(value))


def _check_teacher_options(args) -> None:
    """An empty --teacher or a --teacher-config that is not there: a UserError before anything loads
    (`run`'s are checked by its Runner, for the Python API too)."""
    teacher, config = getattr(args, "teacher", None), getattr(args, "teacher_config", None)
    if args.command != "run" and (teacher is not None or config is not None):
        from compress.io_source import check_teacher_options

        check_teacher_options(teacher, config, args.command)  # in words that fit the command


def _out_of_memory(command: str, e: BaseException) -> UserError | None:
    """The one-line error of a failed allocation in `command`, or None when `e` is another error."""
    from compress.runner_failures import OutOfMemory, is_out_of_memory, memory_in_words

    if not is_out_of_memory(e):
        return None
    memory = memory_in_words(e)  # 'GPU memory ...' or 'CPU memory ...'
    hints = GPU_MEMORY_HINTS if memory.startswith("GPU") and command in GPU_MEMORY_HINTS else MEMORY_HINTS
    hint = hints.get(command, "a machine with more memory")
    return OutOfMemory(f"`dit-compress {command}` ran out of {memory}; try {hint}")


def main(argv: list[str] | None = None) -> int:
    forget_stops()  # the exit status of a stop is that of the signal that stopped this command
    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        _check_teacher_options(args)
        try:
            return COMMANDS[args.command](args)
        except (RuntimeError, MemoryError) as e:
            error = _out_of_memory(args.command, e)
            if error is None:
                raise
            raise error from None
    except UserError as e:
        if not (_follower() and _stop(e)):  # a requested stop: rank 0 says it
            print(f"{_who()}: {e.label}{e}", file=sys.stderr)
        return e.exit_code
    except NumericError as e:
        print(f"{_who()}: numeric error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `dit-compress inspect OUT --json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0
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


def _who() -> str:
    """'dit-compress', and the rank of a distributed launch's other processes (whose errors may
    differ from rank 0's)."""
    from compress.runner_ranks import rank

    return f"dit-compress (rank {rank()})" if _follower() else "dit-compress"


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
    """(Recipe, passes) of `run`'s recipe, which the run folder's saved work is compared with; (None, [])
    (not compared) when the Ctrl-C cut `run`'s imports short (loading the recipe would import torch now)
    or the recipe cannot be read (a rerun stops on that first)."""
    if "compress.runner" not in sys.modules:
        return None, []
    from compress.passes import build_passes
    from compress.recipe import load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        return recipe, build_passes(recipe)
    except UserError:
        return None, []


if __name__ == "__main__":
    sys.exit(main())
