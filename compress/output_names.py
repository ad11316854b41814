"""What an output folder is, read without torch (the CLI names a run's folders before torch loads): whether
a folder is an output (`is_output`; a teacher as given, its pipeline's transformer/ too:
`is_output_teacher`), the name a recipe gives its default output and run folders (an
output's own recipe.yaml takes that output's name: `default_name`), what an output that --overwrite is
about to replace was made of (`replaced_note`), what a rerun after a stop needs where the output is
there (`rerun_needs_overwrite`), what the rerun of an output's recipe.yaml leaves out where the output took
a LoRA since (`lora_rerun_note`), and what a command that reads an output says of a local path that is not
there (`missing_output`: no such folder, the name meant; of a run folder runs/NAME, its output: `run_output`;
a finished run's whose output is gone: `lost_output`), why a folder cannot be the new one lora or convert
writes (`new_folder_taken`), and the refusal of plain diffusers an output's config.json carries (`REFUSAL`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from compress import json_read

SAVED_RECIPE = "recipe.yaml"  # the recipe an output holds (runner_export.output_files), and its report
REPORT = "report.json"


def output_config(folder: Path) -> dict | None:
    """The config.json of the output `folder` (its `compression` section says dit-compress wrote it);
    None where `folder` is not an output."""
    try:
        config = json_read.read(Path(folder) / "config.json")
    except (OSError, ValueError):  # (ValueError: json_read.NestedTooDeep too)
        return None
    return config if isinstance(config, dict) and "compression" in config else None


def compression_section(config: dict | None) -> dict:
    """The `compression` section of an output's config (output_config), {} where there is none or it is
    no mapping (a damaged config.json: null, a list, text): what reads it asks it for keys."""
    section = config.get("compression") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


# config.json's quantization_config where an output has factorized layers: diffusers' from_pretrained reads it and
# refuses a quant_method it does not know, in one line quoting it ('Unknown quantization type, got dit-compress (a
# low-rank output, ...) - supported types are: [...]'), where it would load those layers without weights; from_config
# ignores it. io_export writes it, a loaded output's save_pretrained too (io_live); what reads an output's config
# as a diffusers config leaves it out (`without_refusal`)
REFUSAL_KEY = "quantization_config"
REFUSAL = {"quant_method": "dit-compress (a low-rank output, not quantized: load it with compress.load_transformer)"}


def is_refusal(value) -> bool:
    """Whether `value`, a config's quantization_config, is an output's REFUSAL (of this or another wording)."""
    return isinstance(value, dict) and str(value.get("quant_method")).startswith("dit-compress")


def without_refusal(config: dict) -> dict:
    """`config` without an output's REFUSAL of plain diffusers (or the null a loaded output with no factorized
    layer saves in its place); a real quantization_config kept."""
    return {k: v for k, v in config.items() if k != REFUSAL_KEY or not (v is None or is_refusal(v))}


def is_output(folder: Path) -> bool:
    """Whether `folder` is an output of dit-compress: its config.json has a compression section."""
    return output_config(folder) is not None


def is_output_teacher(source) -> bool:
    """Whether a teacher as given (`source`: a path, a Hub id, toy:NAME) is a local dit-compress output:
    the folder load_teacher reads in it (io.transformer_folder: the folder, or a pipeline's transformer/)
    `is_output`; a folder it refuses is none. Imports torch (compress.io): for the run's and merge's
    checks, not the CLI's folders."""
    path = Path(str(source)).expanduser()
    if str(source).startswith("toy:") or not path.is_dir():
        return False
    from compress.errors import UserError
    from compress.io import transformer_folder

    try:
        return is_output(transformer_folder(path))
    except UserError:
        return False


def saved_in_output(recipe: str | Path) -> Path | None:
    """The output folder whose own recipe.yaml `recipe` is (beside its report.json, in an output), else None."""
    path = Path(recipe).expanduser()
    folder = path.parent.resolve()
    if path.name != SAVED_RECIPE or not (folder / REPORT).is_file() or not is_output(folder) or not folder.name:
        return None
    return folder


def lora_rerun_note(recipe: str | Path, out: Path) -> str | None:
    """Where `recipe` is an output's own recipe.yaml and that output took LoRAs after its run (its config's
    `loras`: dit-compress lora, or compress.merge_lora and a save), a note that this run (writing `out`)
    compresses the model before them and how to merge them again; else None. The recipe holds no LoRA:
    `lora` copies the run's recipe.yaml as it was."""
    folder = saved_in_output(recipe)
    loras = compression_section(output_config(folder)).get("loras") if folder is not None else []
    loras = [r for r in loras if isinstance(r, dict)] if isinstance(loras, list) else []
    if not loras:
        return None
    chain = _lora_chain(out, loras)
    them = "it" if len(loras) == 1 else "them"
    again = f"{chain} merges it again" if len(loras) == 1 and chain.startswith("`") else \
        f"merging {them} again takes{'' if len(loras) == 1 else ', in order,'} {chain}"
    return (f"{folder} took {'a LoRA' if len(loras) == 1 else f'{len(loras)} LoRAs'} after its run (dit-compress "
            f"lora or compress.merge_lora), which {SAVED_RECIPE} does not hold: this run compresses the model "
            f"before {them}; {again}")


def _lora_chain(out: Path, loras: list[dict]) -> str:
    """'`dit-compress lora OUT F1 NEW-1 --scale 0.8`, then `dit-compress lora NEW-1 F2 NEW --scale 0.5`': one
    lora command per LoRA (lora merges one), each from the last one's folder, the last writing NEW; paths
    quoted for a shell. A LoRA merged from a state dict (Python API) or recorded without its file is no
    command: that step says so (merge_lora of the same weights)."""
    folders = [str(out), *(f"NEW-{n}" for n in range(1, len(loras))), "NEW"]
    return ", then ".join(_lora_step(was, now, r) for was, now, r in zip(folders, folders[1:], loras))


def _lora_step(was: str, now: str, record: dict) -> str:
    """_lora_chain's merge of the LoRA `record` (config.json's `loras` entry) into `was`, written to `now`."""
    from shlex import quote

    from compress.lora_keys import STATE_DICT

    source, scale = record.get("source"), _merged_at(record.get("scale"))
    if isinstance(source, str) and source and source != STATE_DICT:
        if scale is None:  # no --scale S: `--scale None` is refused, and lora's default, 1, may not be it
            return (f"`dit-compress lora {quote(was)} {quote(source)} {quote(now)}` with the --scale it was merged "
                    "at (config.json records none)")
        return f"`dit-compress lora {quote(was)} {quote(source)} {quote(now)} --scale {scale}`"
    what, why = ("the same LoRA state dict", "it was merged from a state dict through the Python API") \
        if source == STATE_DICT else ("that LoRA", "config.json records no file of it")
    at = f"at scale {scale}" if scale is not None else "at the scale it was merged at (config.json records none)"
    return f"compress.merge_lora of {quote(was)} with {what} {at}, saved as {now} ({why}: no command names it)"


def _merged_at(scale):
    """A LoRA record's `scale` where it is one lora takes (a finite number, not 0: lora.check_scale's and
    commands_lora's refusals); None for none recorded or a damaged one (null, text, true, NaN)."""
    import math
    import numbers

    good = isinstance(scale, numbers.Real) and not isinstance(scale, bool) and math.isfinite(scale) and scale != 0
    return scale if good else None


def new_folder_taken(out: Path, given: str, writes: str) -> str | None:
    """Why `out` (`given`, as typed) cannot be the new folder `lora` or `convert` writes (`writes`: 'convert
    writes a new folder'): it exists; a mount point (a Docker volume, a bind mount) in run's words
    (io_atomic.mount_point: no output can replace one, a folder inside it can be one). None where it is not there."""
    if not (out.exists() or out.is_symlink()):
        return None
    from compress.io_atomic import is_mount_point, mount_point

    if out.is_dir() and not out.is_symlink() and is_mount_point(out):
        return mount_point(out)
    return f"{given} exists; {writes}"


def default_name(recipe: str | Path) -> str:
    """The name of a recipe's default output and run folders (out/NAME, runs/NAME): its file's stem, or
    for an output's own recipe.yaml, that output's folder name (`saved_in_output`): every output's
    recipe.yaml would otherwise run into out/recipe and runs/recipe, replacing one another there; a recipe
    read from a pipe, `stdin` or `pipe` (piped_name)."""
    if (piped := piped_name(recipe)) is not None:
        return piped
    folder = saved_in_output(recipe)
    return folder.name if folder is not None else Path(recipe).stem


# the names a shell gives a pipe: /dev/stdin, /dev/fd/N (bash's <(...)), /proc/self/fd/N (or a process's)
PIPE_NAME = re.compile(r"/dev/stdin|/dev/fd/(\d+)|/proc/(?:self|\d+)/fd/(\d+)")


def piped_name(recipe: str | Path) -> str | None:
    """'stdin' for a recipe read from standard input (/dev/stdin, fd 0), 'pipe' for another pipe's name
    (`run <(cat r.yaml)`: /dev/fd/63, whose stem gave out/63 and runs/63); None for any other path."""
    found = PIPE_NAME.fullmatch(str(recipe))
    if found is None:
        return None
    return "stdin" if (found[1] or found[2] or "0") == "0" else "pipe"


def replaced_note(out: Path, teacher: str, family: str) -> str | None:
    """'--overwrite replaces OUT, an output of another teacher and model family (toy:flux, flux; this
    run: toy:pixart, pixart)' where the output folder `out` is an output whose recorded teacher (its
    config's compression section, local paths absolute) or model family differs from this run's
    `teacher` (as given) and `family` (the recipe's model); None otherwise."""
    config = output_config(out)
    if config is None:
        return None
    from compress.arch import family_of_class
    from compress.errors import UserError

    was_teacher, was_family = compression_section(config).get("teacher"), config.get("_class_name")
    try:
        was_family = family_of_class(was_family)
    except UserError:  # a class no adapter has: named as it is
        pass
    local = Path(teacher).expanduser()
    now_teacher = str(local.resolve()) if local.exists() else teacher  # as a run records it
    differ = [what for what, was, now in (("teacher", was_teacher, now_teacher), ("model family", was_family, family))
              if was is not None and was != now]
    if not differ:
        return None
    return (f"--overwrite replaces {out}, an output of another {' and '.join(differ)} ({was_teacher}, {was_family}; "
            f"this run: {now_teacher}, {family})")


def rerun_needs_overwrite(out: Path, note: str) -> str:
    """`note` (what a stopped run's folder offers a rerun: Ctrl-C's, or a stop's kept work) followed by
    '; OUT exists: the rerun needs --overwrite too' where the output folder `out` is there (the run's
    --overwrite had not replaced it yet, or it was written since): a rerun with only the --resume the note
    names is refused ('output folder OUT exists; pass --overwrite to replace it'). `note` as it is otherwise."""
    out = Path(out)
    if not note or not (out.is_dir() and not out.is_symlink() and (is_output(out) or not any(out.iterdir()))):
        return note
    return f"{note}; {out} exists: the rerun needs --overwrite too"


DEFAULT_FOLDERS = ("out", "runs")  # where `run` writes its outputs and its run folders (default_name)
FILE_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin", ".json", ".yaml", ".yml")


def output_usage(command: str) -> str:
    """What `command` (inspect, eval, bench) takes, as its refusals of an output say it after the path."""
    if command == "eval":
        return "(eval takes a dit-compress output folder or a teacher)"
    return f"(dit-compress {command} OUT, OUT written by run)"


def missing_here(given: str, command: str) -> str | None:
    """`missing_output` of the output `given` to `command` (in its words, `output_usage`), said before the
    command imports torch (seconds): None where it would look in the Hugging Face cache first
    (`owner_is_a_folder`: that look imports it), which the command then does as it starts."""
    return None if owner_is_a_folder(given) else missing_output(given, output_usage(command))


def missing_output(given: str, usage: str) -> str | None:
    """What a command that reads an output (inspect, eval, bench) says of `given` where it is a local
    path that is not there: 'no such folder out/toy-pixart', then the folder of its parent it may have
    meant (errors.closest), or for a run folder runs/NAME the output out/NAME of that run, or that the
    default folder out/ (runs/) is not there either; then `usage` (which says what writes an output).
    None where `given` is there or reads as a Hub id (ORG/NAME, whose first part is no folder here, or is
    one but the cache holds ORG/NAME: owner_is_a_folder): the Hugging Face cache's copy is looked for then.
    Local: io_source.looks_local's (./, ../, /, ~, no owner, a first part that is a folder here), or under out/ or
    runs/ (a run's default folders, there or not)."""
    from compress.io_source import looks_local

    path = Path(given).expanduser()
    if path.exists() or not (looks_local(given) or _in_default(path)):
        return None
    if owner_is_a_folder(given):  # acme/model with ./acme/ here: the cache's copy of the Hub id first
        from compress.io_output import cached_copy

        if cached_copy(given)[0] is not None:
            return None
    noun = "file" if path.suffix in FILE_SUFFIXES else "folder"
    return f"no such {noun} {given}{_meant(path)} {usage}"


LOADED_USAGE = "(an output folder is written by dit-compress run, or compress.save_compressed)"


def missing_folder_words(out) -> str | None:
    """What load_transformer (io_output.missing_folder) says of a local path `out` that is not there
    (missing_output, in LOADED_USAGE's words); a pathlib.Path is always local. None where it is there,
    or reads as a Hub id (io_output.hub_output)."""
    said = missing_output(str(out), LOADED_USAGE)
    if said is None and isinstance(out, os.PathLike) and not Path(out).expanduser().exists():
        said = f"no such folder {out} {LOADED_USAGE}"
    return said


def missing_lora_output(given: str) -> str | None:
    """`dit-compress lora`'s words of its OUT `given` not there (load_transformer's of the path it loads:
    missing_folder_words), said before torch's import; local as missing_output's (out/NAME with no out/
    here too); None where `given` reads as a Hub id (lora's words then: io_output.hub_output, which looks
    in the cache) or the cache is looked in first (owner_is_a_folder), which the command then does as it starts."""
    from compress.io_source import looks_local

    path = Path(given).expanduser()
    if not (looks_local(given) or _in_default(path)) or owner_is_a_folder(str(path)):
        return None
    return missing_folder_words(path)


def owner_is_a_folder(given: str) -> bool:
    """Whether `given`, not there, reads as a local path (io_source.looks_local) only because its first part is a
    folder here (acme/model with ./acme/): an ORG/NAME not under out/ or runs/, not starting ./ ../ / ~,
    which may be a Hub id the Hugging Face cache holds (missing_output, io_output.cached_output look there)."""
    parts = given.split("/")
    return (len(parts) == 2 and all(parts) and not given.startswith((".", "/", "~", "toy:"))
            and parts[0] not in DEFAULT_FOLDERS and Path(parts[0]).is_dir() and not Path(given).exists())


def _meant(path: Path) -> str:
    """missing_output's hint: the output of the run folder `path` (`run_output`), else the closest
    name in `path`'s folder, or where that folder is out/ or runs/, that it is not there either."""
    from compress.errors import closest

    if (output := run_output(path)) is not None:
        return f"; the output of that run is {output}"
    parent = path.parent
    if parent.is_dir():
        meant = closest(path.name, [p.name for p in parent.iterdir()])  # by name: their folder makes all close
        return f"; did you mean '{parent / meant}'?" if meant else ""
    if _in_default(path) and len(path.parts) == 2:
        return f", and no {parent}/ here either"  # nothing run here yet: the usage says what writes it
    return ""


def _in_default(path: Path) -> bool:
    """Whether the relative `path` is under out/ or runs/, a run's default folders."""
    return len(path.parts) > 1 and path.parts[0] in DEFAULT_FOLDERS


def run_output(path: Path) -> Path | None:
    """The output of the run folder `path` where it is an output: the one its finished run recorded
    (stages/finished.json's `out`: wherever --out put it, whatever --run-dir named the folder), else,
    where it records none, out/NAME where `path` is runs/NAME (NAME any path below a folder runs/, in any
    folder): what `inspect runs/NAME` meant. None where that is not there or no output: out/NAME, an older
    run's output, is not this run's where it recorded another (lost_output says that one is gone)."""
    recorded = _recorded_output(path)
    if recorded is not None:
        return as_typed(recorded) if is_output(recorded) else None
    runs = next((folder for folder in path.parents if folder.name == "runs"), None)
    if runs is None:
        return None
    output = runs.parent / "out" / path.relative_to(runs)
    return output if is_output(output) else None


def lost_output(folder: Path, given: str, command: str) -> str | None:
    """The words for `command` (inspect, eval, bench) given the run folder `folder` (as `given`) of a
    finished run (stages/finished.json) whose output is gone (`run_output` found none): which output that
    was (the one it recorded, else out/NAME for runs/NAME) and how to get it back: --resume of its recipe,
    unchanged, writes it again from its last stage, computing nothing (with --out where it went elsewhere
    than out/NAME, --run-dir where the folder is no runs/NAME, as run reads them); where the run kept no
    stage, a plain rerun makes it again. None for another folder."""
    from compress.runner_resume import FINISHED, stage_dirs

    if not (folder / "stages" / FINISHED).is_file():
        return None
    recorded, default = _recorded_output(folder), Path("out") / folder.name
    runs = folder.parent.name == "runs"  # runs/NAME: run's default run folder for a recipe NAME.yaml
    out = as_typed(recorded) if recorded is not None else default if runs else None
    gone = ("its output is not there" if out is None else f"its output {out} is gone" if not out.exists()
            else f"its output folder {out} holds no output now") + beside_words(folder, recorded, command)
    flags = (f" --out {out}" if out is not None and not (runs and out == default) else "") \
        + ("" if runs else f" --run-dir {given}")
    then = f", then dit-compress {command} {out or 'its output'}"
    if not stage_dirs(folder):
        return f"{given} is the run folder of a finished run, but {gone} and the run kept no stage: " \
               f"rerun its recipe to make it again (dit-compress run RECIPE{flags}){then}"
    return (f"{given} is the run folder of a finished run, but {gone}: rerun its recipe, unchanged, with --resume "
            f"to write it again from the stages the run kept (dit-compress run RECIPE --resume{flags}){then}")


def beside_words(folder: Path, recorded: Path | None, command: str) -> str:
    """Where the run recorded an output, gone, and out/NAME of runs/NAME is an output: that it is there, an
    older run's or this one's moved with the project (finished.json records an absolute path; R3 stop 51),
    which nothing recorded tells apart; else ''."""
    runs = next((parent for parent in folder.parents if parent.name == "runs"), None)
    if recorded is None or runs is None:
        return ""
    there = runs.parent / "out" / folder.relative_to(runs)
    if not is_output(there) or there.resolve() == recorded.resolve():
        return ""
    return f" ({as_typed(there.resolve())} is there: an older run's output, or this one's moved: dit-compress {command} " \
           f"{as_typed(there.resolve())})"


def _recorded_output(run_dir: Path) -> Path | None:
    """The output folder the finished run in `run_dir` recorded (runner_export.mark_finished), or None."""
    from compress.runner_resume import FINISHED

    try:
        out = json_read.read(Path(run_dir) / "stages" / FINISHED).get("out")
    except (OSError, ValueError, AttributeError):  # (ValueError: json_read.NestedTooDeep too)
        return None
    return Path(out) if isinstance(out, str) and out else None


def as_typed(path: Path) -> Path:
    """`path` (absolute) relative to the working folder where it is below it: out/x, not /home/.../out/x."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
