"""`dit-compress`'s argument parser: its commands, their arguments and help, and a command's own
error for an argument it does not know (cli parses with it and prints)."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import compress
from compress.cli_checks import path_there
from compress.errors import closest


OUT_HELP = "output folder of `dit-compress run`, or the Hub id (ORG/NAME) of one in the Hugging Face cache"


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML, or a shipped recipe by name (toy-pixart, toy-flux, pixart-sigma-50, "
                   "flux-dev-lite, ...: recipes/ of the package)")
    _recipe_options(p)


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """--teacher, --teacher-config and --set: what run, plan and importance change of a recipe."""
    p.add_argument("--teacher", help="override the recipe's teacher (hub id, folder, file, toy:NAME)")
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file teacher, "
                   "in place of the recipe's teacher_config. A toy or folder teacher reads none (a warning says "
                   "so). A path that does not exist is an error, for any teacher")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe key, e.g. --set passes.2.svd.ratio=0.4 (repeatable)")


def _output_teacher_options(p: argparse.ArgumentParser) -> None:
    """--teacher-config and --lora: where eval and bench find what an output recorded, if it moved."""
    p.add_argument("--teacher-config", help="diffusers config (folder or config.json) of a single-file teacher "
                   "(default: the one recorded, also with a --teacher that is a single file without one beside it)")
    p.add_argument("--lora", action="append", metavar="PATH",
                   help="where the LoRA the output took (dit-compress lora or compress.merge_lora) is now, if it moved "
                        "since it was merged (default: the place the output recorded); once per LoRA, in the order it "
                        "took them")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, its lines broken only between words: at a narrow terminal it broke names at
    their hyphens and inside words ('pixart-' / 'sigma-50', 'impor' / 'tance-<family>.png'); a word
    longer than the line runs past it, whole, to be copied as it is."""

    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False,
                             break_long_words=False)

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))


class _Parser(argparse.ArgumentParser):
    """A parser of dit-compress, whose help is _HelpFormatter's."""

    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


class _TopParser(_Parser):
    """dit-compress's own parser: with nothing given, its help (the commands); a command mistyped, the one
    meant ('runn': did you mean 'run'?); an option it does not know named (--versoin: did you mean
    '--version'?), not taken for a command missing."""

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        given = getattr(self, "given", [])
        if not given:  # `dit-compress` alone: the command list, as --help shows it
            self.print_help(sys.stderr)
            self.exit(2)
        commands = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction)).choices
        command = next((i for i, t in enumerate(given) if t in commands), len(given))
        unknown = unknown_options(given[:command], self)
        if message.startswith("the following arguments are required") and unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        if message.startswith("unrecognized arguments: ") and unknown:
            message += meant_option(unknown[0].partition("=")[0], list(self._option_string_actions))
        elif (typed := re.search(r"invalid choice: '(.*?)' \(", message)) is not None:
            best = closest(typed.group(1), commands)
            message += (f"; did you mean '{best}'?" if best is not None else
                        "; dit-compress --help says what each does" if typed.group(1) == "help" else "")
        super().error(message)


def unknown_options(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The options among `tokens` (before a '--') that `parser` does not know ('--hlep', '--jsn=x'); '-'
    (standard input) and negative numbers are no options."""
    tokens = tokens[:tokens.index("--")] if "--" in tokens else tokens
    return [t for t in tokens if t.startswith("-") and t != "-" and not parser._negative_number_matcher.match(t)
            and t.partition("=")[0] not in parser._option_string_actions]


class _CommandParser(_Parser):
    """A command's parser: arguments it does not know are its own error (its usage, the option meant),
    not the top-level parser's, whose usage names no option of the command; one given where an argument
    is missing (`run --hlep`, `plan --version`) is named, not the argument missing."""

    def error(self, message: str):
        given = getattr(self, "given", [])
        unknown = unknown_options(given, self)
        if message.startswith(("the following arguments are required", "unrecognized arguments")):
            message = dash_named_path(self, given) or message
        elif (value := re.fullmatch(r"argument (\S+): expected one argument", message)) is not None:
            message += dash_value(self, given, value.group(1).split("/"))
        if message.startswith("the following arguments are required") and unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}{self._meant(unknown)}"
        super().error(message)

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(args or [])
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and (meant := set_meant(list(args or []), extras)) is not None:  # --set KEY VALUE
            self.exit(2, f"{self.prog}: error: --set takes KEY=VALUE: {meant}\n")
        if extras and (mistyped := options_with_a_value_taken(self, self.given, parsed, extras)):
            self.error(f"unknown option{'s' if len(mistyped) > 1 else ''} {', '.join(mistyped)}"
                       f"{self._meant(mistyped)}")
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
        return meant_option(option, [s for a in self._actions for s in a.option_strings])


def options_with_a_value_taken(parser: argparse.ArgumentParser, given: list[str], parsed,
                               extras: list[str]) -> list[str]:
    """The options of `given` (a command's arguments) that `parser` does not know, where one of them
    (not a path there, as -x.yaml may be) is followed by a token taken for a positional argument of
    `parsed` and argparse left over (`extras`) more than those options: `importance --bukets 2 r.yaml`,
    whose 2 it took for SOURCE and whose r.yaml, the SOURCE typed, it listed as unrecognized. [] where
    none is (the arguments left over are then argparse's to list)."""
    head = _before_dashes(given)
    places = {getattr(parsed, a.dest, None) for a in parser._actions if not a.option_strings}
    unknown = unknown_options(head, parser)
    taken = any(token in unknown and "=" not in token and not path_there(token) and value in places
                and not value.startswith("-") for token, value in zip(head, head[1:]))
    return unknown if taken and any(e not in unknown for e in extras) else []


def dash_named_path(parser: argparse.ArgumentParser, given: list[str]) -> str | None:
    """"-x.yaml is taken for an option, ...: give the file as ./-x.yaml, or after -- (dit-compress run --
    -x.yaml)" where every option of `given` (a command's arguments) that `parser` does not know is a file or
    folder that is there, and with them the arguments given by their place are as many as the command
    takes: argparse took a path starting with '-' for an option ('unrecognized arguments: -x.yaml').
    None otherwise (a mistyped option, an argument too many: argparse's words)."""
    unknown = unknown_options(given, parser)
    if not unknown or not all(path_there(t) for t in unknown):
        return None
    options, places = _options_and_places(parser, given)
    if len(places) != len([a for a in parser._actions if not a.option_strings]):
        return None
    token = unknown[0]
    noun = "folder" if Path(token).expanduser().is_dir() else "file"
    example = " ".join([parser.prog, *options, "--", *places])
    return (f"{token} is taken for an option, as its name starts with '-': give the {noun} as ./{token}, or "
            f"after -- ({example})")


def dash_value(parser: argparse.ArgumentParser, given: list[str], option_strings: list[str]) -> str:
    """"; -x is taken for an option, as it starts with '-': give --out=-x" where the option (of
    `option_strings`) argparse found without its value ('expected one argument') is followed in `given`
    by a value starting with one '-' that is no option of `parser` (or by a path there, '--x'); else ''."""
    head = _before_dashes(given)
    for token, value in zip(head, head[1:]):
        option = _option_of(parser, token)
        if option is None or option.option_strings != option_strings or "=" in token:
            continue
        if value.startswith("-") and value != "-" and _option_of(parser, value) is None and (
                not value.startswith("--") or path_there(value)):
            return f"; {value} is taken for an option, as it starts with '-': give {token}={value}"
    return ""


def _before_dashes(given: list[str]) -> list[str]:
    """A command's arguments before '--' (after it every one is given by its place, none an option)."""
    return given[:given.index("--")] if "--" in given else given


def _option_of(parser: argparse.ArgumentParser, token: str) -> argparse.Action | None:
    """The option of `parser` that `token` gives ('--out', '--out=x', or a prefix of one option's
    name, as argparse takes '--ov' for --overwrite); None where it gives none or several."""
    name = token.partition("=")[0]
    if name in parser._option_string_actions:
        return parser._option_string_actions[name]
    starting = {a for s, a in parser._option_string_actions.items() if name.startswith("--") and s.startswith(name)}
    return starting.pop() if len(starting) == 1 else None


def _options_and_places(parser: argparse.ArgumentParser, given: list[str]) -> tuple[list[str], list[str]]:
    """`given` (a command's arguments) split in its options with their values, and the arguments given
    by their place (those after '--' too), in their order."""
    options, places, value_next = [], [], False
    for at, token in enumerate(given):
        if token == "--":
            return options, places + given[at + 1:]
        option = _option_of(parser, token)
        if value_next or option is not None:
            options.append(token)
            value_next = not value_next and option is not None and option.nargs != 0 and "=" not in token
        else:
            places.append(token)
    return options, places


def meant_option(option: str, options: list[str]) -> str:
    """"; did you mean '--out'?" for the option of `options` whose name is close to `option`'s (as
    recipe keys are matched: errors.closest), compared without their leading dashes, which every option
    shares (--bogus was told '--out', the dashes alone making them close); '' where none is."""
    names = {o.lstrip("-"): o for o in options}
    best = closest(option.lstrip("-"), names)
    return f"; did you mean '{names[best]}'?" if best is not None else ""


def set_meant(tokens: list[str], extras: list[str]) -> str | None:
    """'--set calibration.timesteps=4' where `tokens` (a command's arguments) give --set a KEY without
    '=' followed by a value, where argparse left arguments over (`extras`): `--set calibration.timesteps 4`,
    whose 4 was an unrecognized argument (or taken for the recipe, which was then). None otherwise."""
    for i, token in enumerate(tokens[:-1]):
        key, at = (tokens[i + 1], i + 2) if token == "--set" else (token.removeprefix("--set="), i + 1)
        if (token == "--set" or token.startswith("--set=")) and at < len(tokens) and "=" not in key:
            if not tokens[at].startswith("-"):  # left over, or taken for RECIPE and the recipe left over
                return f"--set {key}={tokens[at]}"
    return None


# the path arguments of each command, by dest, as its usage names them, and what they name: given
# empty ('' from an unset shell variable) they are refused (empty_path) before any work (an empty
# --out ran the whole recipe into the default out/NAME). Not here: --teacher (io_source's check),
# --plot, --json, --png, --grid (each says what it writes) and convert's FILE (its own words).
_CONFIG = ("--teacher-config", "file or folder")
PATH_ARGUMENTS = {
    "run": {"recipe": ("RECIPE", "file"), "out": ("--out", "folder"), "run_dir": ("--run-dir", "folder"),
            "teacher_config": _CONFIG},
    "plan": {"recipe": ("RECIPE", "file"), "run_dir": ("--run-dir", "folder"), "teacher_config": _CONFIG},
    "importance": {"source": ("SOURCE", "recipe or teacher"), "teacher_config": _CONFIG},
    "inspect": {"out": ("OUT", "folder")},
    "eval": {"model": ("MODEL", "folder or teacher"), "teacher_config": _CONFIG, "lora": ("--lora", "file or folder")},
    "bench": {"out": ("OUT", "folder"), "teacher_config": _CONFIG, "lora": ("--lora", "file or folder")},
    "convert": {"out": ("OUT", "folder"), "teacher_config": _CONFIG},
    "lora": {"out": ("OUT", "folder"), "lora": ("LORA", "file or folder"), "new": ("NEW", "folder"),
             "teacher_config": _CONFIG},
}


def empty_path(args) -> str | None:
    """"--out '' names no folder; give one, or leave --out out" where a path argument of the command
    (PATH_ARGUMENTS) is given empty or blank (each of a repeated --lora), None where none is."""
    for dest, (name, noun) in PATH_ARGUMENTS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        given = value if isinstance(value, list) else [value]  # --lora: one per LoRA
        blank = next((v for v in given if isinstance(v, str) and not v.strip()), None)
        if blank is not None and name.startswith("-"):
            return f"{name} {blank!r} names no {noun}; give one, or leave {name} out"
        if blank is not None:
            return f"{name} {blank!r} names no {noun} (dit-compress {args.command} {_positionals(args.command)})"
    return None


def _positionals(command: str) -> str:
    """`command`'s positional arguments as its usage names them: 'FILE OUT' (convert)."""
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return " ".join(a.metavar or a.dest.upper() for a in parser._actions if not a.option_strings)


def _default_folder(parent: str) -> str:
    """The help's default of --out and --run-dir (output_names.default_name)."""
    return f"default: {parent}/<recipe name>; for an output's own recipe.yaml, {parent}/<that output's name>"


def _run_dir_option(p: argparse.ArgumentParser, more: str = "") -> None:
    """run's --run-dir, and plan's: the same folder, whose free disk run's refusal of a peak counts."""
    p.add_argument("--run-dir", help=f"run folder for caches and checkpoints ({_default_folder('runs')}){more}")


# each exit status of a command and when (--help's epilog; docs/COMMANDS.md says them, tested against the
# errors' exit_code: errors.UserError 2, NumericError 3, runner_failures.OutOfMemory 1, StepLimitReached 75)
EXIT_STATUSES = (
    (0, "done"),
    (1, "the machine's trouble (out of memory, a full disk, a file gone while it ran) or a bug (a traceback)"),
    (2, "a user error: a usage error, an option out of range, a path, a recipe"),
    (3, "numeric trouble (NaN/Inf, a failed decomposition: the layer named)"),
    (75, "distill stopped at max_steps_this_run, checkpointed (rerun with --resume)"),
    (130, "stopped by Ctrl-C; 128 + a signal's number for another: 143 SIGTERM, 129 SIGHUP"),
)


def exit_statuses() -> str:
    """'exit status: 0 done; 1 ...; ...': the line --help ends with."""
    return "exit status: " + "; ".join(f"{code} {words}" for code, words in EXIT_STATUSES)


def build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(
        prog="dit-compress", description="Low-rank / SVD compression compiler for diffusion "
        "transformers (PixArt-Σ, Flux.1-dev).", epilog=exit_statuses())
    parser.add_argument("--version", action="version", version=f"dit-compress {compress.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser("run", help="compress a teacher as the recipe says")
    _recipe_args(p)
    p.add_argument("--out", help=f"output folder ({_default_folder('out')})")
    _run_dir_option(p)
    again = p.add_mutually_exclusive_group()  # one or the other: usage [--resume | --restart], both refused
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from the passes (and distill checkpoint) it saved")
    again.add_argument("--restart", action="store_true",
                       help="discard an interrupted run's saved passes and checkpoints in --run-dir and start over "
                            "(without --resume or --restart, a run refuses to discard them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of dit-compress (or an empty folder) at --out")

    p = sub.add_parser("plan", help="dry run: resolved targets, ranks, blocks, params before/after")
    _recipe_args(p)
    _run_dir_option(p, "; plan measures its free disk, as run does")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (parameters by block too)")

    p = sub.add_parser("inspect", help="per-layer ranks, params, losses against the closed-form optimum, removed "
                       "blocks and distill passes of a compressed model")
    p.add_argument("out", help=OUT_HELP)
    p.add_argument("--json", action="store_true", help="print every layer's row and the run's report as JSON")
    p.add_argument("--plot", metavar="DIR", help="write rank-budget and spectrum PNGs into DIR (made if missing)")

    p = sub.add_parser("importance", help="block-importance scan: table, JSON and heatmap PNG")
    p.add_argument("source", help="a recipe YAML or a shipped recipe's name (toy-pixart; a real teacher is scanned "
                   "through a recipe naming it), or a toy teacher (toy:pixart, toy:flux)")
    p.add_argument("--buckets", type=int, help="timestep buckets, at most the calibration timesteps (default: the "
                   "recipe's importance pass's buckets, else 3)")
    p.add_argument("--json", metavar="FILE", help="write the scan as JSON (- : on standard output, in place of the "
                   "table); its folder made if missing")
    p.add_argument("--png", metavar="FILE", help="heatmap path (default importance-<family>.png); its folder made if "
                   "missing")
    _recipe_options(p)  # of a recipe source only (commands_importance.importance says so of a toy)

    p = sub.add_parser("eval", help="teacher-relative fidelity and toy quality scores")
    p.add_argument("model", help=f"{OUT_HELP}, or a teacher source such as toy:pixart")
    p.add_argument("--teacher", help="teacher to compare against (default: the one recorded)")
    _output_teacher_options(p)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--grid", metavar="PNG", help="toy models only: write a grid of their sampled digits to PNG (its "
                   "folder made if missing)")
    p.add_argument("--seed", type=int, default=None,
                   help="toy models: seed of the sampled digits (default 0); a real model is measured on "
                        "its run's held-out inputs")

    p = sub.add_parser("bench", help="latency / memory of teacher vs student, as ratios")
    p.add_argument("out", help=OUT_HELP)
    p.add_argument("--teacher", help="teacher (default: the one recorded in the output)")
    _output_teacher_options(p)
    p.add_argument("--repeats", type=int, default=20, help="timed denoising steps of each model, after 3 warm-ups (default 20)")
    p.add_argument("--batch", type=int, default=2,
                   help="images per step (default 2); classifier-free guidance doubles the rows for "
                        "PixArt-Σ and the toys")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")

    p = sub.add_parser("convert", help="a single-file checkpoint (or a folder of .bin weights) as a diffusers "
                       "transformer folder (for stream: true)")
    p.add_argument("file", help="single-file checkpoint: BFL Flux, original PixArt-Σ .pth, or diffusers keys; or a "
                   "folder of .bin weights, one file or shards (save_pretrained(safe_serialization=False))")
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
