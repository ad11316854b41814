"""`dit-compress`'s checks of a command's arguments after parsing, before its imports (torch's start-up among
them, seconds): integer options in range (`OptionOutOfRange`), lora's --scale, an empty --teacher or a
--teacher-config not there, the paths a command reads there; each a one-line UserError (cli.main says it)."""

from __future__ import annotations

import math
from pathlib import Path

from compress.errors import UserError, not_at_least_one


SEED_LIMIT = 2**32  # compress.toy.evaluate.SEED_LIMIT's, here so the check imports no torch (tested equal)
POSITIVE = ("buckets", "repeats", "batch")  # options counting something: ≥ 1


class OptionOutOfRange(UserError):
    """An option's value out of its range, found after parsing (`bench OUT --batch -1`): said as argparse's
    own errors of the command are, 'dit-compress bench: error: --batch must be an integer ≥ 1, got -1'."""


def _check_numbers(args) -> None:
    """Integer options out of range: a one-line UserError before any work (a negative --seed failed
    in numpy after sampling, a huge one overflowed a C long; --buckets 0 after the calibration)."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise OptionOutOfRange(f"--seed must be an integer from 0 to {SEED_LIMIT - 1}, got {seed}")
    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise OptionOutOfRange(not_at_least_one(f"--{name}", value))
    if args.command == "lora":  # before its paths: what it says first of OUT and LORA (_check_paths_there)
        _check_scale(args.scale)


def _check_scale(scale) -> None:
    """lora's --scale: a finite number other than 0 (merge_lora refuses NaN and 0 again, for the API)."""
    if not isinstance(scale, (int, float)):  # `--scale=--`: argparse hands over []
        raise OptionOutOfRange("--scale needs a number (the LoRA's strength, e.g. --scale 0.8)")
    if not math.isfinite(scale):
        raise OptionOutOfRange(f"--scale must be a finite number, got {scale}")
    if scale == 0:
        raise OptionOutOfRange("--scale 0: a scale of 0 merges nothing")


def _check_teacher_options(args) -> None:
    """An empty --teacher or a --teacher-config that is not there: a UserError before anything loads, `run`'s
    before its locks too, as --out '' is (a run folder another run holds said that instead); its Runner checks
    them again, for the Python API."""
    teacher, config = getattr(args, "teacher", None), getattr(args, "teacher_config", None)
    if teacher is not None or config is not None:
        from compress.io_source import check_teacher_options

        check_teacher_options(teacher, config, args.command)  # in words that fit the command


OUTPUT_ARGS = {"inspect": "out", "eval": "model", "bench": "out"}  # the output (a path) each of them reads


def _check_paths_there(args) -> None:
    """A path the command reads not there: its one line before its imports, torch's start-up among them
    (seconds); the command says it alike. The output folder of inspect, eval and bench
    (output_names.missing_here), lora's OUT (output_names.missing_lora_output) and LORA (io_source.no_lora_there,
    where OUT is an output and NEW not there: what lora says first of them, it says first), convert's FILE
    (io_source.no_checkpoint_file; a blank one: its own words)."""
    from compress.io_source import no_checkpoint_file, no_lora_there
    from compress.output_names import is_output, missing_here, missing_lora_output

    missing = None
    if args.command in OUTPUT_ARGS:
        missing = missing_here(getattr(args, OUTPUT_ARGS[args.command]), args.command)
    elif args.command == "lora":
        missing = missing_lora_output(args.out)
        if missing is None and is_output(Path(args.out).expanduser()) and not path_there(args.new):
            missing = no_lora_there(args.lora)
    elif args.command == "convert" and args.file.strip():
        missing = no_checkpoint_file(args.file)
    if missing is not None:
        raise UserError(missing)


def path_there(path: str) -> bool:
    """Whether `path` is there (a dangling link too), as commands refuse to write a new folder there, and
    a path starting with '-' that argparse took for an option is one given (cli_parser.dash_named_path)."""
    p = Path(path).expanduser()
    return p.exists() or p.is_symlink()
