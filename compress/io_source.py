"""Teacher sources before anything loads: what a source names (a toy teacher, a local folder or
file, a Hugging Face id) and its model family read from its config alone, so that a mistake is one
line saying what and where (where the user gave it: recipe_where).

Relative paths: a teacher (`--teacher` or a recipe's `teacher:`) is taken from the current folder;
a recipe's `calibration.prompt_file` from the recipe's folder.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from compress.inputs import Sampling

# hub ids whose transformer config ships with dit-compress (compress/configs/): planned offline
KNOWN_CONFIGS = {
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "PixArt-Sigma-XL-2-1024-MS.json",
    "black-forest-labs/FLUX.1-dev": "FLUX.1-dev.json",
}
SOURCES = "toy:pixart, toy:flux, a Hugging Face id (OWNER/NAME), or a local folder or checkpoint file"


# what the refusal of a --teacher-config not there adds, by command (check_teacher_options): why it is
# refused even for a toy or folder teacher, which reads no config, where the recipe's `teacher_config:`
# not there is only warned of (recipe_teacher_config.teacher_config_of): the flag was typed for this
# command, the key may serve every --teacher the recipe is run with. eval, bench and lora read no recipe;
# convert has no teacher (the config is its file's, else the config.json beside the file)
READS = "a single-file teacher or a Hugging Face id"  # what reads a teacher config: this refusal's, `checked`'s
CHECKED = "; the flag is checked whatever the teacher, as given for this command: leave it out"
FLAG_WHY = f"{CHECKED} for a toy or folder teacher, which reads none"
RECIPE_NOTE = " (a recipe's teacher_config: not there is only warned of there)"
RECIPE_WHY = f"{FLAG_WHY}{RECIPE_NOTE}"
FLAG_WORDS = {"eval": (READS, FLAG_WHY), "bench": (READS, FLAG_WHY),
              "lora": (READS.replace("teacher", "--teacher", 1), FLAG_WHY),
              "convert": ("the file's transformer", "; leave it out to read the config.json beside the file")}


def flag_words(command: str, teacher: str | None) -> tuple[str, str]:
    """(whose config, why) the refusal of a --teacher-config not there says for `command` (FLAG_WORDS;
    RECIPE_WHY for run, plan, importance) with --teacher `teacher`: not given, the teacher read may be a toy or
    folder one; a toy or folder --teacher is named, said to read none; a single file is named, a Hub id (or
    a path not there, refused after) takes the config: neither is told to leave the flag out."""
    whose, why = FLAG_WORDS.get(command, (READS, RECIPE_WHY))
    if command == "convert" or teacher is None:
        return whose, why
    path = Path(teacher).expanduser()
    if teacher.startswith("toy:") or path.is_dir():  # as `checked` warns of it
        what = "a toy teacher" if teacher.startswith("toy:") else "a folder with its own config.json"
        return whose, f"{CHECKED}: teacher {teacher} is {what}, which reads none" + (RECIPE_NOTE * (why == RECIPE_WHY))
    if path.is_file():
        return f"the single-file teacher {teacher}", ""
    return whose, ""


def check_teacher_options(teacher: str | None, config: str | None, command: str = "run") -> None:
    """--teacher, when given, names something; --teacher-config, when given, exists (a UserError
    otherwise, before anything loads: an empty --teacher is not the recipe's teacher), said as fits
    `command` and the teacher (`flag_words`; run, plan, importance and the Runner API: RECIPE_WHY)."""
    if teacher is not None and not teacher.strip():
        raise UserError("--teacher is empty: give a hub id, folder, file or toy:NAME, or leave --teacher out "
                        "to use the recipe's (or the recorded) teacher")
    if config is not None and not Path(config).expanduser().exists():  # whatever the teacher: FLAG_WORDS
        whose, why = flag_words(command, teacher)
        raise UserError(f"--teacher-config {config!r}: no such file or folder (the diffusers config of {whose}: a "
                        f"folder, a pipeline folder or a JSON file such as config.json){why}")


# ---- what a source is -------------------------------------------------------------------------
# where a streamed run's teacher is an output's weight file: the folder given instead is refused too
# (stream_files.streamed_output), so the hint says what that refusal would
STREAMED_OUTPUT = (", and compress it further resident (stream: false in the recipe, or --set stream=false): "
                   "its factorized layers are not the dense per-block tensors stream: true reads a block at a time")


def check_source(source: str, where: str = "", recipe_dir: Path | None = None, stream: bool = False) -> str:
    """The kind of a teacher source, 'toy', 'folder', 'file' or 'hub', before anything is read; a
    UserError (after `where`, see teacher_where) for an empty one, an unknown toy teacher, a
    missing path, or a folder or file that is not a teacher. `recipe_dir`: the folder of the
    recipe that named it, where a path missing here may be (the message says so); `stream`: the
    recipe streams (an output's weight file: the folder to give cannot be streamed either)."""
    from compress.io import looks_local, transformer_folder
    from compress.io_tensors import SINGLE_FILE_SUFFIXES

    if not source.strip():
        raise UserError(f"{where}the teacher is empty; give {SOURCES}")
    if source.startswith("toy:"):
        from compress.toy.weights import check_toy_name

        prefixed(where, check_toy_name, source[4:])
        return "toy"
    path = Path(source).expanduser()
    if path.is_dir():
        prefixed(where, transformer_folder, path)
        return "folder"
    if path.is_file():
        prefixed(where, check_suffix, path)
        prefixed(where, check_header, path)
        if output_weights(path):
            from compress.io_convert import weights_folder

            folder = weights_folder(path)
            resident = STREAMED_OUTPUT if stream else ""  # the folder is refused too: both said at once
            if folder is None:  # a copy out of its folder: no folder to name
                raise UserError(f"{where}{path} is the weight file of a dit-compress output, copied out of its "
                                "folder: give the output folder it came from, which loads it with its ranks and "
                                f"block map{resident}")
            raise UserError(f"{where}{path} is a weight file of the dit-compress output {folder}: give that "
                            f"folder, which loads it with its ranks and block map{resident}")
        return "file"
    if path.suffix in SINGLE_FILE_SUFFIXES or looks_local(source):
        raise UserError(f"{where}{not_found(source, recipe_dir)}")
    from compress.io_hub import id_problem

    if (problem := id_problem(source)) is not None:  # acme/pix@v2, acme/pix/x: neither a path nor an id
        raise UserError(f"{where}{not_found(source, recipe_dir, problem)}")
    return "hub"


def output_weights(path: Path) -> bool:
    """Whether `path` is a weight file of a dit-compress output (output_record); no tensor is read."""
    return output_record(path) is not None


def output_record(path: Path) -> dict | None:
    """The compression section of the output whose weight file `path` is ({} where it cannot be read as
    one): the header metadata save_compressed writes (io_export.header_metadata), else the config.json
    beside it, which an output saved again with save_pretrained keeps (its header is plain); None for
    any other file. No tensor is read."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get("compression")
    except (SafetensorError, OSError, ValueError):
        return None  # the loader says what is wrong with it
    if text is None:
        return config_record(path.parent / "config.json")
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def config_record(config: Path) -> dict | None:
    """The compression section of the diffusers config `config` ({} where it is not a mapping); None
    where it has none, or cannot be read (its loader says why)."""
    try:
        record = json.loads(config.read_text()).get("compression")
    except (OSError, ValueError, AttributeError):
        return None
    return None if record is None else record if isinstance(record, dict) else {}


def prefixed(where: str, call, *args):
    """call(*args), a UserError it raises said after `where`."""
    try:
        return call(*args)
    except UserError as e:
        raise UserError(f"{where}{e}") from None


def check_suffix(path: Path, expected: str = "a teacher is a folder or a checkpoint file") -> None:
    """A single-file checkpoint has a suffix the loaders read."""
    from compress.io_tensors import SINGLE_FILE_SUFFIXES

    if path.suffix not in SINGLE_FILE_SUFFIXES:
        kind = f"file type '{path.suffix}'" if path.suffix else "no file type"
        raise UserError(f"{path} is not a checkpoint: {kind}; {expected} "
                        f"({', '.join(SINGLE_FILE_SUFFIXES)})")


def check_header(path: Path) -> None:
    """A .safetensors file opens (its header read, its length checked; no tensor read): a text file
    named so, an empty or cut one is said at once, before what a readable teacher would be told."""
    if path.suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    from compress.io_tensors import unreadable

    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


def not_found(source: str, recipe_dir: Path | None = None, problem: str | None = None) -> str:
    """'teacher not found: SOURCE (...)': the absolute path looked for and, for a recipe's relative
    path, the rule (from the current folder) and the path from the recipe's folder where that is it;
    an OWNER/NAME read as a path because OWNER is a folder here, said so; `problem`: why SOURCE is no
    Hugging Face id either (io_hub.id_problem)."""
    path = Path(source).expanduser()
    words = f"teacher not found: {source} (there is no {os.path.abspath(path)}"
    if problem is not None:
        return words + f", and it is not a Hugging Face id: {problem})"
    there = None if path.is_absolute() or recipe_dir is None else os.path.abspath(Path(recipe_dir) / path)
    owner = source.split("/")[0]
    if source.count("/") == 1 and not source.startswith((".", "/", "~")) and Path(owner).is_dir() and \
            not (there and Path(there).exists()):
        return words + (f"; it is read as a path, not as the Hugging Face id {source}, because {os.path.abspath(owner)}/ "
                        "is a folder here: to mean the Hub id, run from another folder or rename that one)")
    if there is not None:
        words += "; a recipe's relative teacher path is taken from the current folder, not the recipe's"
        if Path(there).exists():
            words += f", where {there} is: give that path instead"
    if "/" not in source:
        words += "; a Hugging Face id is OWNER/NAME"
    return words + ")"


# ---- configs and families, without weights ------------------------------------------------------
@dataclass
class TeacherSource:
    """A teacher source checked once (`kind`: check_source's), its config read once, on first use,
    without its weights: what plan and the checks pass along instead of checking the source and
    reading its config again. config_arg: --teacher-config; where: the start of an error about it
    (teacher_where); hub: a Hub id's transformer/config.json may be fetched; sampling: the recipe's
    calibration source checked against it (inputs.Sampling), where io_source_recipe.checked_sources made it."""

    source: str
    kind: str
    config_arg: str | None = None
    where: str = ""
    hub: bool = True
    sampling: Sampling | None = field(default=None, compare=False, repr=False)
    config_label: str = field(default="--teacher-config", compare=False, repr=False)  # checked's

    @functools.cached_property
    def config(self) -> dict:
        """Its diffusers config: a folder's (or its transformer/'s) config.json, a single file's
        (beside it, or --teacher-config), a toy's, the shipped one of a known Hub id (KNOWN_CONFIGS),
        with `hub` the Hub's transformer/config.json, else the Hugging Face cache's (a Hub id neither
        holds needs --teacher-config)."""
        from compress.io import read_config, read_json
        from compress.io_single import given_config

        if self.kind == "toy":
            from compress.toy.weights import toy_files

            return read_json(toy_files(self.source[4:])[0])
        if (file := self.config_file()) is not None:
            given = self.config_arg if self.kind != "folder" else None  # a folder reads its own
            return self._transformer_config(read_config(file) if given is None else
                                            given_config(file, given, self.config_label), file)
        if self.source in KNOWN_CONFIGS:
            return json.loads(resources.files("compress.configs").joinpath(KNOWN_CONFIGS[self.source]).read_text())
        if self.hub:
            return hub_config(self.source)
        from compress.io_hub import cache_only, cached_config, hub_cache
        from compress.io_hub_cache import held_otherwise

        if (cached := cached_config(self.source)) is not None:  # downloaded before: no request is made
            return read_config(cached[0])
        held = held_otherwise(self.source)
        held = "" if held is None else f"; the cache holds {held}"
        meant = did_you_mean(self.source, typos_of(self.source, KNOWN_CONFIGS))  # an id whose config ships
        raise UserError(f"{self.where}cannot find a config for teacher '{self.source}' {cache_only('plan')}: plan "
                        f"reads the configs of local teachers, of Hub ids in the Hugging Face cache {hub_cache()} and "
                        f"of {', '.join(KNOWN_CONFIGS)}{held}; pass --teacher-config with its transformer's "
                        f"config.json{meant}")

    def _transformer_config(self, config: dict, file: Path) -> dict:
        """A single file's config (beside it, or --teacher-config) names a transformer's class: one of
        no transformer's would be read as the class's defaults (a folder's says its class as it loads)."""
        if self.kind != "folder":  # a file's, or a Hub id's --teacher-config
            from compress.io_single import config_family

            prefixed(self.where, config_family, config, file, Path(self.source).expanduser())
        return config

    def config_file(self) -> Path | None:
        """The local config.json of a folder, a single file or --teacher-config; None for the others."""
        from compress.io import transformer_folder
        from compress.io_single import config_file

        path = Path(self.source).expanduser()
        if self.kind == "folder":
            return transformer_folder(path) / "config.json"
        if self.kind == "file" or self.config_arg:
            return prefixed(self.where, config_file, path, self.config_arg)
        return None

    def family(self) -> tuple[str, str] | None:
        """(family, class name) from its config (or, for a .safetensors file, its tensor names,
        checked against its config where it has one); None for a pickle or a file whose names do
        not tell (its loader checks it)."""
        from compress.arch import family_of_class, get_adapter

        if self.kind == "toy":
            family = self.source[4:]
        elif self.kind == "file":
            family = self._file_family()
            if family is None:
                return None
        else:
            from compress.pipeline_family import built_class

            config = self.config  # its errors are said after `where` already: not twice
            family = prefixed(self.where, lambda: family_of_class(built_class(config)))
        return family, get_adapter(family).class_name

    def has_config(self) -> bool:
        """Whether a config is at hand to read: a single file's only with --teacher-config or beside it."""
        path = Path(self.source).expanduser()
        return self.kind != "file" or bool(self.config_arg) or (path.parent / "config.json").is_file()

    def _file_family(self) -> str | None:
        from compress.io_single import check_config_family, detect_family, file_family

        path = Path(self.source).expanduser()
        has_config = self.has_config()
        config = self.config if has_config else None  # one of no transformer's is refused, a pickle's too
        family = file_family(path)  # the header's tensor names
        if family is None and path.suffix == ".safetensors" and not has_config:  # names of no transformer,
            # and no config to tell the family (with one, its loader checks the names: a toy Flux of no
            # single blocks has none that say Flux)
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                prefixed(f"{self.where}{path}: ", lambda: detect_family(list(f.keys())))
        if family is not None and has_config:
            prefixed(self.where, check_config_family, family, config, self.config_file(), path)
        return family


def typos_of(word: str, options, most: int = 2) -> list[str]:
    """The `options` `word` is a typo of: at most `most` letters added, dropped or changed, case aside
    (PixArt-Sigma-XL-2-1024-MSS of -MS), not another name near it (FLUX.1-schnell is no FLUX.1-dev)."""
    def edits(a: str, b: str) -> int:  # Levenshtein distance, one row at a time
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            row, last = [i], row
            for j, y in enumerate(b, 1):
                row.append(min(last[j] + 1, row[j - 1] + 1, last[j - 1] + (x != y)))
        return row[-1]

    return [o for o in options if edits(word.lower(), o.lower()) <= most]


def checked(source: str, config: str | None = None, where: str = "", hub: bool = True,
            recipe_dir: Path | None = None, stream: bool = False,
            config_label: str = "--teacher-config") -> TeacherSource:
    """`source` checked (check_source), as a TeacherSource; see there for the arguments. A
    --teacher-config a toy or folder teacher does not read is said, not silently dropped (`config_label`:
    how the warning names it: a recipe's 'PATH:LINE: teacher_config')."""
    kind = check_source(source, where, recipe_dir, stream)
    if kind == "hub":
        warn_if_beside_recipe(source, where, recipe_dir)
    if config and kind in ("toy", "folder"):
        from compress.report import warn

        what = "a toy teacher" if kind == "toy" else "a folder with its own config.json"
        found = "" if Path(config).expanduser().exists() else f" (nor found: {os.path.abspath(Path(config).expanduser())})"
        warn(f"{config_label} {config} is not read{found}: teacher {source} is {what} "
             f"({config_label.split(': ')[-1]} is the diffusers config of {READS})")
    return TeacherSource(source, kind, config, where, hub, config_label=config_label)


def warn_if_beside_recipe(source: str, where: str, recipe_dir: Path | None) -> None:
    """A warning where a teacher read as a Hub id (OWNER/NAME, no such path here) is a path from
    the recipe's folder: relative paths are taken from the current folder (not_found)."""
    if recipe_dir is None or Path(source).expanduser().is_absolute():
        return
    there = os.path.abspath(Path(recipe_dir) / Path(source).expanduser())
    if Path(there).exists():
        from compress.report import warn

        warn(f"{where}teacher {source} is read as a Hugging Face id: there is no {os.path.abspath(source)} (a "
             "recipe's relative teacher path is taken from the current folder, not the recipe's), but there is "
             f"{there}: give that path to use it")


def hub_config(repo_id: str) -> dict:
    """The transformer config of a Hub repo where a local copy of the repo has it (io.transformer_place's
    rule, by the Hub's file list): a pipeline's transformer/config.json, or a transformer-only repo's
    config.json (a few KB; io_hub.hub_config_file)."""
    from compress.io import read_config
    from compress.io_hub import hub_config_file

    return read_config(hub_config_file(repo_id)[0])


def source_family(source: str, config: str | None = None, where: str = "",
                  hub: bool = True) -> tuple[str, str] | None:
    """(family, class name) of a teacher source without reading weights (TeacherSource.family)."""
    return checked(source, config, where, hub).family()
