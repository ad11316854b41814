"""Single-file teacher checkpoints: a BFL Flux file (compress.arch.flux_convert), an original PixArt-Σ
`.pth` (compress.arch.pixart_convert) or a file with diffusers' keys, each with the diffusers config
of its transformer beside it or given (`--teacher-config`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from compress import json_read
from compress.arch import SUPPORTED, get_adapter
from compress.errors import UserError
from compress.io import cast, from_config, model_class, read_config
from compress.io_errors import load_error
from compress.io_tensors import read_state_dict

PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # BFL checkpoints as ComfyUI saves them


def detect_family(keys) -> str:
    keys = [k.removeprefix(p) for k in keys for p in PREFIXES if k.startswith(p)] or list(keys)
    if any(k.startswith(("single_transformer_blocks.", "single_blocks.", "double_blocks."))
           for k in keys):
        return "flux"
    if any(k.startswith(("adaln_single.", "t_block.", "y_embedder.")) for k in keys):
        return "pixart"
    raise UserError(f"cannot tell the model family from the checkpoint keys (first: {keys[:3]}); "
                    f"supported: {SUPPORTED}")


def file_family(path: Path) -> str | None:
    """The family a .safetensors file's tensor names tell, from its header alone (no tensor read);
    None for a pickle, or a file whose names do not tell or that cannot be opened (its loader says)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return detect_family(list(f.keys()))
    except (UserError, SafetensorError, OSError, ValueError):
        return None


class OtherFamily(UserError):
    """A checkpoint whose tensors are a `found` transformer where a `needed` one was (checked_family),
    said after where it was given (io_source.prefixed keeps its class); run words it as its recipe's other
    refusals of a teacher of another family do."""

    def __init__(self, path: Path, found: str, needed: str):
        super().__init__(f"{path} holds a {found} transformer, not the {needed} one needed here")
        self.path, self.found, self.needed = path, found, needed


class OtherConfig(UserError):
    """A checkpoint's config that describes another family's transformer than its tensors (check_config_family),
    said after where that config was given (io.load_teacher: a recipe's teacher_config: line)."""


def checked_family(path: Path, keys, family: str | None) -> str:
    """The family of a checkpoint's keys; `family` (the one the caller needs) where the keys do not
    tell, and a UserError where they tell another."""
    try:
        found = detect_family(keys)
    except UserError as e:
        if family:
            return family
        raise UserError(f"{path} holds no PixArt or Flux transformer: {e}") from None
    if family and found != family:
        raise OtherFamily(path, found, family)
    return found


def load_single_file(path: Path, dtype: torch.dtype | None = torch.float32, config: str | None = None,
                     family: str | None = None, read=read_state_dict, key: str = "--teacher-config") -> nn.Module:
    """The transformer of a single file, built empty from its diffusers config and filled with the
    file's tensors, converted to diffusers' keys (compress.arch.flux_convert / pixart_convert).
    dtype None: the file's own dtypes. `read`: path -> {name: tensor} (io_headers.header_tensors: meta
    tensors from the header alone, which plan checks against the config without reading weights). `key`:
    what gave `config`, as a refusal of it names it (check_config_family's)."""
    from compress.io_source import check_suffix

    check_suffix(path)
    sd = without_prefix(read(path))
    family = checked_family(path, sd.keys(), family)
    cfg = config_file(path, config, key)
    model = empty_model(family, cfg, path, key)  # the file's tensors are assigned
    sd = converted(path, sd, family, model, cfg)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise UserError(f"{path} does not match the config in {config_place(cfg)}: {load_error(e)}") from None
    check_file_loading(path, family, missing, unexpected, cfg, len(sd) - len(unexpected))
    return (model if dtype is None else cast(model, dtype)).eval()


GUIDANCE = "time_text_embed.guidance_embedder."  # FLUX.1-dev's; FLUX.1-schnell has none (guidance_embeds: false)


def check_file_loading(path: Path, family: str, missing: list[str], unexpected: list[str], cfg: Path,
                       taken: int) -> None:
    """The file's tensors fill the `family` model the config file `cfg` built, exactly: what does not said
    naming that config (a recipe's teacher_config, --teacher-config, or the config.json beside the file);
    a file none of whose tensors the model has is no PixArt or Flux transformer; a Flux file without the
    guidance embedder its config has is FLUX.1-schnell's against a guidance-distilled (FLUX.1-dev) config, and
    the other way round.
    `taken`: how many of the file's tensors the model took."""
    from compress.io_errors import check_loading_info

    place = config_place(cfg)
    if missing and not [k for k in missing if not k.startswith(GUIDANCE)] and not unexpected:
        raise UserError(f"{path} has no guidance embedder, as FLUX.1-schnell's weights have none, while the config "
                        f"in {place} has guidance_embeds: true (FLUX.1-dev's): give a config with guidance_embeds: false, such "
                        "as FLUX.1-schnell's transformer/config.json")
    if unexpected and not [k for k in unexpected if not k.startswith(GUIDANCE)] and not missing:
        raise UserError(f"{path} holds a guidance embedder, as FLUX.1-dev's weights do, while the config in {place} "
                        "has guidance_embeds: false (FLUX.1-schnell's): give a config with guidance_embeds: true, such "
                        "as FLUX.1-dev's transformer/config.json")
    if unexpected and taken == 0:  # a VAE's file given with a transformer's config
        raise UserError(f"{path} holds no PixArt or Flux transformer: none of its tensors (first: "
                        f"{sorted(unexpected)[:3]}) is one of the {family} transformer the config in {place} builds")
    try:
        check_loading_info(path, {"missing_keys": missing, "unexpected_keys": unexpected})
    except UserError as e:  # its words name config.json: the one read, given, may be another file or elsewhere
        if cfg != path.parent / "config.json":
            e.args = (str(e).replace("do not match config.json", f"do not match {cfg}", 1), *e.args[1:])
        raise


def converted(path: Path, sd: dict, family: str, model: nn.Module, cfg: Path) -> dict:
    """The file's tensors under diffusers' keys; a file already in diffusers' keys passes through."""
    from compress.arch.flux_convert import convert_bfl_flux, is_bfl_flux
    from compress.arch.pixart_convert import convert_original_pixart

    try:
        if family == "pixart":
            return convert_original_pixart(sd)
        if is_bfl_flux(sd):
            check_flux_blocks(path, sd, model, cfg)
        return convert_bfl_flux(sd, model.config.num_attention_heads * model.config.attention_head_dim)
    except (KeyError, ValueError) as e:  # a key without a diffusers counterpart, a fused tensor that does not split
        raise UserError(f"{path}: {e.args[0]}") from None


def empty_model(family: str, cfg: Path, path: Path | None = None, key: str = "--teacher-config") -> nn.Module:
    """The family's transformer built from the config file `cfg` (config_file), parameters on the meta
    device; a UserError where that config describes another family's (`path`: the checkpoint, for it;
    `key`: check_config_family's)."""
    from accelerate import init_empty_weights

    config = read_config(cfg)
    check_config_family(family, config, cfg, path, key)
    cls = model_class(get_adapter(family).class_name)
    with init_empty_weights():
        return from_config(cls, config, cfg)


def check_config_family(family: str, config: dict, cfg: Path, path: Path | None = None,
                        key: str = "--teacher-config") -> None:
    """The config of a checkpoint (`path`) whose tensors are a `family` transformer is that family's:
    built into the other family's class, its numbers fail as a shape mismatch naming neither. `key`: what
    gives the config, as the advice names it (a recipe's 'teacher_config'); an OtherConfig where it is not."""
    described = config_family(config, cfg, path, key)
    if described != family:
        raise OtherConfig(f"{f'{path}: ' if path else ''}the checkpoint's weights are a {family} transformer while "
                        f"the config in {config_place(cfg)} describes a {described} one; give the config of its own "
                        f"transformer ({key})")


def config_family(config: dict, cfg: Path, path: Path | None = None, key: str = "--teacher-config") -> str:
    """The family of the transformer a checkpoint's (`path`) config describes; a UserError for a config of
    no transformer's (a VAE's, `{}`, a report.json), which would be read as the class's defaults (`key`:
    check_config_family's)."""
    from compress.arch import family_of_class
    from compress.pipeline_family import built_class

    name = config.get("_class_name")
    try:
        return family_of_class(built_class(config))
    except UserError:
        what = f"describes {name}" if isinstance(name, str) and name else "has no _class_name"
        raise UserError(f"{f'{path}: ' if path else ''}the config in {config_place(cfg)} {what}, not a PixArt/Flux "
                        f"transformer config; give the config of its own transformer ({key})") from None


def key_converter(family: str, names: list[str], model: nn.Module):
    """(name, tensor) -> {diffusers name: tensor}, one tensor at a time: BFL Flux and original PixArt
    keys (told by all the file's `names`) converted, diffusers' keys passed through."""
    if family == "flux":
        from compress.arch.flux_convert import convert_bfl_key, is_bfl_flux

        width = model.config.num_attention_heads * model.config.attention_head_dim
        if is_bfl_flux(names):
            return lambda k, v: convert_bfl_key(k, v, width)
    else:
        from compress.arch.pixart_convert import convert_pixart_key, is_original_pixart

        if is_original_pixart(names):
            return convert_pixart_key
    return lambda k, v: {k: v}


def transformer_prefix(keys) -> str:
    """The ComfyUI prefix of a checkpoint's transformer tensors ('' where none)."""
    return next((p for p in PREFIXES if any(k.startswith(p) for k in keys)), "")


def without_prefix(sd: dict) -> dict:
    """The transformer's tensors of a checkpoint saved with a ComfyUI prefix, the prefix removed;
    other components (VAE, text encoders) dropped."""
    prefix = transformer_prefix(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)} if prefix else sd


def check_flux_blocks(path: Path, sd: dict, model: nn.Module, cfg: Path) -> None:
    """The double and single blocks of a BFL checkpoint are those its config counts. A file in
    diffusers' keys has neither group: its missing or extra tensors are named where it loads."""
    from compress.arch.flux_convert import is_bfl_flux

    if not is_bfl_flux(sd):
        return

    def count(group: str) -> int:
        found = {int(k.split(".")[1]) for k in sd if k.startswith(group + ".") and k.split(".")[1].isdigit()}
        return max(found) + 1 if found else 0

    have = (count("double_blocks"), count("single_blocks"))
    want = (model.config.num_layers, model.config.num_single_layers)
    if have != want:
        raise UserError(f"{path} holds {have[0]} double and {have[1]} single blocks; the config in {config_place(cfg)} "
                        f"says num_layers {want[0]}, num_single_layers {want[1]}")


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