"""The diffusers config of a single-file teacher, and any config a teacher reads as its own or is given
(--teacher-config, load_teacher's config=): where it is (`config_file`: given, or the config.json beside the
file), read and told apart from a file that is none (`given_config`, `own_config`, `not_a_config`: a
checkpoint, a JSON array, not UTF-8, an empty file, told by its first bytes and size where it is large), and
how messages name it (`config_place`, `given_words`). Split from io_single (single-file checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from compress import json_read
from compress.errors import UserError
from compress.io import read_config


def config_file(path: Path, config: str | None, key: str = "--teacher-config") -> Path:
    """The diffusers config (a JSON file) of the single file `path`: --teacher-config's (a folder's or a
    pipeline folder's config.json, or a JSON file of any name but a pipeline's model_index.json), else the
    config.json beside the file. `key`: what gives `config`, as a refusal names it (load_teacher's config=)."""
    if config:
        c = Path(config).expanduser()
        if c.is_file() and c.name == "model_index.json":  # its numbers would be read as a transformer's
            raise UserError(f"{given_words(key, config)} is a pipeline's index, not a transformer config: give "
                            f"the pipeline folder {c.parent} or its transformer/config.json")
        if c.is_file():
            return c
        if not (c / "config.json").is_file() and (c / "transformer" / "config.json").is_file():
            c = c / "transformer"  # a pipeline folder
        if not (c / "config.json").is_file():
            raise UserError(f"{given_words(key, config)}{_no_config_file(c)}")
        return c / "config.json"
    beside = path.parent / "config.json"
    if beside.is_file():
        return beside
    why = f" ({_not_a_file(beside)})" if beside.exists() or beside.is_symlink() else ""
    raise UserError(f"single file {path} has no config.json beside it{why}; pass {key} with "
                    "the diffusers config of the transformer (a folder or config.json)")


def given_words(key: str, value) -> str:
    """A config given by `key` as a refusal names it: '--teacher-config PATH', a Python argument 'config=PATH'."""
    return f"{key}{value!r}" if key.endswith("=") else f"{key} {value}"


def given_config(file: Path, given: str, label: str = "--teacher-config") -> dict:
    """The diffusers config `file` that a teacher config `given` names (the file, or its folder's
    config.json), read; one that is not a JSON config (a text file, a checkpoint, a list: not_a_config)
    a UserError naming it as `label` says it ('--teacher-config', or a recipe's 'PATH:LINE:
    teacher_config'), not in the JSON decoder's words alone."""
    config = _config_or_why(file)
    if config is None:
        return read_config(file)  # its words: cannot read PATH
    if isinstance(config, dict):
        return config
    why, inside = config, "" if Path(given).expanduser() == file else f": {file}"
    raise UserError(f"{label} {given}{inside} is not a JSON config ({why}); give the diffusers config of the "
                    "transformer (its config.json, or the folder holding it)")


def own_config(file: Path, source: str, kind: str) -> dict:
    """The config.json the teacher `source` reads as its own, read: a folder's (or its transformer/'s,
    `kind` 'folder'), or the one beside a single file; one that is not a JSON config (not_a_config) a
    UserError in given_config's words, naming the teacher: 'teacher t: its config.json is not a JSON
    config (line 1, column 1: Expecting value); ...', not the JSON decoder's 'cannot read t/config.json:
    Expecting value: line 1 column 1 (char 0)'. Read once where it is one; a checkpoint or a file over
    CONFIG_MOST bytes is told by its first bytes and its size (_config_or_why), not read whole."""
    from compress import io as compress_io

    config = _config_or_why(file)  # opened once
    if isinstance(config, dict):
        return config
    if config is None:  # unreadable (a folder, no permission): read_config's words
        return compress_io.read_config(file)
    why = config
    if kind == "folder":
        inside = os.path.relpath(file, Path(source).expanduser())
        its = f"its {inside}" if not inside.startswith("..") else str(file)  # config.json, transformer/config.json
        fix = "put its transformer's diffusers config there (save_pretrained writes it)"
    else:
        its = f"the config.json beside it ({file})"
        fix = "give its transformer's diffusers config with --teacher-config, or put it there"
    raise UserError(f"teacher {source}: {its} is not a JSON config ({why}); {fix}")


JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def not_a_config(file: Path) -> str | None:
    """Why `file` is not a JSON config, in words for a parenthesis: 'line 1, column 1: Expecting value',
    'an empty file', 'not UTF-8 text', 'an array, not a JSON object', 'a safetensors file of weights'; None
    where it is one, or cannot be read (read_config says so)."""
    config = _config_or_why(file)
    return config if isinstance(config, str) else None


CONFIG_MOST = 4 * 2**20  # bytes: a diffusers config is a few KB; a larger file is none (a checkpoint given so)


def _glanced(head: bytes, size: int) -> str | None:
    """Why a file of `size` bytes starting with `head` is no config, told without reading it whole: a
    checkpoint (_checkpoint_kind) or a file over CONFIG_MOST bytes; None otherwise."""
    if (kind := _checkpoint_kind(head, size)) or size > CONFIG_MOST:
        from compress.calib_footprint import human_size

        return kind or f"a file of {human_size(size)}; a config is a few KB"
    return None


def _config_or_why(file: Path) -> dict | str | None:
    """The JSON config `file` holds (a dict, parsed once), else why it is none (not_a_config's words); None
    where it cannot be read. A checkpoint (its first bytes: _checkpoint_kind) or a file over CONFIG_MOST
    bytes is told as such, not read whole (a multi-GB checkpoint given as a config by mistake). Decoded as
    diffusers' from_pretrained reads it (UTF-8, a byte-order mark kept and refused by the JSON decoder),
    so what plan accepts a run loads: json.loads of the bytes would take UTF-16 and a BOM."""
    try:
        with open(file, "rb") as f:
            size, head = os.fstat(f.fileno()).st_size, f.read(16)
            if (why := _glanced(head, size)) is not None:
                return why
            data = head + f.read()
    except OSError:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if text.startswith("\ufeff"):
        return "a UTF-8 byte-order mark before its JSON, which diffusers refuses"
    try:
        config = json_read.parse(text)
    except ValueError as e:  # json.JSONDecodeError
        if not data.strip():
            return "an empty file"
        return f"line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
    if isinstance(config, dict):
        return config
    return f"{JSON_TYPES.get(type(config), type(config).__name__)}, not a JSON object"


def _checkpoint_kind(head: bytes, size: int) -> str | None:
    """What checkpoint a file of `size` bytes starting with `head` is: a safetensors file (a little-endian
    header length, then its JSON header), a zip archive (torch.save's), a pickle (an older torch.save's)."""
    if len(head) > 8 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") <= size - 8:
        return "a safetensors file of weights"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, as torch.save writes a checkpoint"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle, as an older torch.save writes a checkpoint"
    return None


def _no_config_file(given: Path) -> str:
    """Why `given`, a --teacher-config that is no file, holds no config file to read, as the rest of its
    error: its config.json (or a pipeline folder's transformer/config.json) is there but is a folder, a
    link to nothing or another thing, not a file; it is itself a folder named as a JSON file would be;
    else none is there."""
    inside = (given / "config.json", given / "transformer" / "config.json")
    there = next((c for c in inside if c.exists() or c.is_symlink()), None)
    if there is not None:
        return f": {_not_a_file(there)}"
    if given.suffix == ".json" and given.is_dir():
        return " is a folder, not a JSON file, and holds no config.json"
    return ": no config.json there"


def _not_a_file(path: Path) -> str:
    """Why `path`, which is there (or a link), is no config file to read, in words naming it."""
    if path.is_symlink() and not path.exists():
        return f"{path} is a link to {os.readlink(path)}, which is not there"
    return f"{path} is {'a folder, not a file' if path.is_dir() else 'not a regular file'}"


def config_place(cfg: Path) -> Path:
    """How messages name a config: its folder when it is a config.json, else the file."""
    return cfg.parent if cfg.name == "config.json" else cfg