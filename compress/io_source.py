"""Teacher sources before anything loads: what a source names (a toy teacher, a local folder or
file, a Hugging Face id) and its model family read from its config alone (io_source_config's
TeacherSource), so that a mistake is one line saying what and where (where the user gave it: recipe_where).

Relative paths: a teacher (`--teacher` or a recipe's `teacher:`) is taken from the current folder;
a recipe's `calibration.prompt_file` from the recipe's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from compress import json_read
from compress.errors import UserError

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


def looks_local(source: str) -> bool:
    """A path rather than a Hugging Face id (owner/name): it starts with . / ~, it names no owner
    (`out`: diffusion models on the Hub all have one) or its first part is a folder here (`out/typo`
    where out/ exists). toy:NAME is neither."""
    if source.startswith("toy:"):
        return False
    return source.startswith((".", "/", "~")) or "/" not in source or Path(source.split("/")[0]).is_dir()


def no_lora_there(lora: str) -> str | None:
    """What a LoRA given as a local path not there is told (lora_read; `dit-compress lora` says it before
    torch's import, cli_checks._check_paths_there); None where it is there or reads as a Hub id (the Hugging Face
    cache is looked in)."""
    if looks_local(lora) and not Path(lora).expanduser().exists():
        return f"{lora}: no LoRA there (a .safetensors file, or a folder holding one)"
    return None


def no_checkpoint_file(given: str) -> str | None:
    """convert's words for a FILE that is neither a file nor a folder (a folder: commands.not_a_file), said
    before torch's import (cli_checks._check_paths_there); None where it is one."""
    path = Path(given).expanduser()
    if path.is_file() or path.is_dir():
        return None
    if (url := file_url(given)) is not None:
        return url
    return f"{given}: no such file; convert reads a single-file checkpoint"


def file_url(given: str) -> str | None:
    """The words refusing a file:// URL given for a path ('file:///abs/x' would be read as the relative
    path file:/abs/x); None for anything else."""
    if not given.startswith("file://"):
        return None
    from urllib.parse import unquote, urlparse

    plain = unquote(urlparse(given).path) or given[len("file://"):]
    return f"{given}: file:// URLs are not read; give the plain path {plain}"


INDEX_FILE = re.compile(r".+\.(?:safetensors|bin)(?:\.\w+)?\.index(?:\.\w+)?\.json")  # a sharded checkpoint's index


def folder_part(path: Path) -> str | None:
    """The words refusing a file that is a part of a diffusers folder, not a checkpoint: a sharded checkpoint's
    index or the config.json of a folder holding weights; None for any other file."""
    if INDEX_FILE.fullmatch(path.name):
        return f"{path} is the index of the sharded checkpoint in {path.parent}: give the folder {path.parent}"
    if path.name == "config.json" and any(f.name.startswith("diffusion_pytorch_model") for f in path.parent.iterdir()):
        return f"{path} is the config of the transformer in {path.parent}: give the folder {path.parent}"
    return None


SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)((?:\.\w+)?\.(?:safetensors|bin))")  # a sharded checkpoint's part


def one_shard(path: Path) -> str | None:
    """The words refusing the file `path` where it is one shard of a sharded checkpoint
    (NAME-00001-of-00005.safetensors beside the other shards or their index): the folder holds the
    checkpoint, which loads from the folder; None for any other file."""
    m = SHARD.fullmatch(path.name)
    if m is None:
        return None
    number, total = int(m[2]), int(m[3])
    index = [f.name for f in path.parent.glob(f"{m[1]}*.index*.json")]
    others = [f for f in path.parent.iterdir() if f != path and SHARD.fullmatch(f.name)]
    if not index and not others:
        return None
    return (f"{path} is shard {number} of {total} of the checkpoint in {path.parent}, not a checkpoint of its own: "
            f"give the folder {path.parent}")


def check_source(source: str, where: str = "", recipe_dir: Path | None = None, stream: bool = False) -> str:
    """The kind of a teacher source, 'toy', 'folder', 'file' or 'hub', before anything is read; a
    UserError (after `where`, see teacher_where) for an empty one, an unknown toy teacher, a
    missing path, or a folder or file that is not a teacher. `recipe_dir`: the folder of the
    recipe that named it, where a path missing here may be (the message says so); `stream`: the
    recipe streams (an output's weight file: the folder to give cannot be streamed either)."""
    from compress.io import transformer_folder
    from compress.io_tensors import SINGLE_FILE_SUFFIXES

    if not source.strip():
        raise UserError(f"{where}the teacher is empty; give {SOURCES}")
    if (url := file_url(source)) is not None:
        raise UserError(f"{where}{url}")
    if source.startswith("toy:"):
        from compress.toy.weights import check_toy_name

        prefixed(where, check_toy_name, source[4:])
        return "toy"
    path = Path(source).expanduser()
    if path.is_dir():
        from compress.io_variants import weights_variant

        folder = prefixed(where, transformer_folder, path)
        prefixed(where, weights_variant, folder)  # two variants and no plain weights: said here, with `where`
        return "folder"
    if path.is_file():
        if (part := folder_part(path)) is not None:
            raise UserError(f"{where}{part}")
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
        if (shard := one_shard(path)) is not None:  # a diffusers checkpoint's shard (an output's: said above)
            raise UserError(f"{where}{shard}")
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
        record = json_read.parse(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def config_record(config: Path) -> dict | None:
    """The compression section of the diffusers config `config` ({} where it is not a mapping); None
    where it has none, or cannot be read (its loader says why)."""
    try:
        record = json_read.read(config).get("compression")
    except (OSError, ValueError, AttributeError):
        return None
    return None if record is None else record if isinstance(record, dict) else {}


def prefixed(where: str, call, *args):
    """call(*args), a UserError it raises said after `where` (as it is where `where` is ''): the same error,
    its message prefixed in place, so its class (exit code, label, a run's own wording of it) stays."""
    try:
        return call(*args)
    except UserError as e:
        if where:
            e.args = (f"{where}{e}", *e.args[1:])
        raise


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
