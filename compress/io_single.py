"""Single-file teacher checkpoints: a BFL Flux file (diffusers converts it), an original PixArt-Σ
`.pth` (compress.arch.pixart_convert) or a file with diffusers' keys, each with the diffusers config
of its transformer beside it or given (`--teacher-config`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.arch import SUPPORTED, get_adapter
from compress.errors import UserError
from compress.io import (SINGLE_FILE_SUFFIXES, cast, check_loading_info, from_config, load_error, model_class, one_line,
                         read_config, read_state_dict)

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


def checked_family(path: Path, keys, family: str | None) -> str:
    """The family of a checkpoint's keys; `family` (the one the caller needs) where the keys do not
    tell, and a UserError where they tell another."""
    try:
        found = detect_family(keys)
    except UserError:
        if family:
            return family
        raise
    if family and found != family:
        raise UserError(f"{path} holds a {found} transformer, not the {family} one needed here")
    return found


def load_single_file(path: Path, dtype=torch.float32, config: str | None = None,
                     family: str | None = None) -> nn.Module:
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"unsupported checkpoint file type '{path.suffix}' ({path}); "
                        f"expected one of {', '.join(SINGLE_FILE_SUFFIXES)}")
    sd = read_state_dict(path)
    family = checked_family(path, sd.keys(), family)
    adapter = get_adapter(family)
    cls = model_class(adapter.class_name)
    cfg_dir = config_dir(path, config)
    if family == "flux":
        return load_flux_file(path, sd, cls, cfg_dir, dtype)
    from compress.arch.pixart_convert import convert_original_pixart

    try:
        sd = convert_original_pixart(sd)  # no-op for diffusers-format keys
    except KeyError as e:
        raise UserError(f"{path}: {e.args[0]}") from None
    model = from_config(cls, read_config(cfg_dir / "config.json"), cfg_dir / "config.json")
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise UserError(f"{path} does not match the config in {cfg_dir}: {load_error(e)}") from None
    check_loading_info(path, {"missing_keys": missing, "unexpected_keys": unexpected})
    return cast(model, dtype).eval()


def load_flux_file(path: Path, sd: dict, cls, cfg_dir: Path, dtype) -> nn.Module:
    """A BFL Flux checkpoint (diffusers' from_single_file converts it, from the tensors already
    read) or one with diffusers' keys. diffusers converts as many blocks as the file holds and
    only logs the rest, so the block counts are checked against the config first."""
    sd = without_prefix(sd)
    config = read_config(cfg_dir / "config.json")
    from accelerate import init_empty_weights

    with init_empty_weights():
        empty = from_config(cls, config, cfg_dir / "config.json")
    bfl = any(k.startswith(("double_blocks.", "single_blocks.")) for k in sd)
    if bfl:
        check_flux_blocks(path, sd, empty, cfg_dir)
    else:  # diffusers' keys: they must be the model's, exactly
        expected = empty.state_dict().keys()
        check_loading_info(path, {"missing_keys": expected - sd.keys(), "unexpected_keys": sd.keys() - expected})
    try:
        model = cls.from_single_file(sd, config=str(cfg_dir), local_files_only=True, torch_dtype=dtype)
    except KeyError as e:  # diffusers' conversion pops each BFL tensor it needs
        raise UserError(f"cannot load Flux single file {path}: it lacks the tensor {e.args[0]!r}") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load Flux single file {path}: {one_line(e)}") from None
    unfilled = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if unfilled:
        check_loading_info(path, {"missing_keys": unfilled})
    return model.eval()


def without_prefix(sd: dict) -> dict:
    """The transformer's tensors of a checkpoint saved with a ComfyUI prefix, the prefix removed
    (diffusers removes only `model.diffusion_model.`); other components (VAE, text encoders) dropped."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def check_flux_blocks(path: Path, sd: dict, model: nn.Module, cfg_dir: Path) -> None:
    """The double and single blocks of a BFL checkpoint are those its config counts."""
    def count(group: str) -> int:
        found = {int(k.split(".")[1]) for k in sd if k.startswith(group + ".") and k.split(".")[1].isdigit()}
        return max(found) + 1 if found else 0

    have = (count("double_blocks"), count("single_blocks"))
    want = (model.config.num_layers, model.config.num_single_layers)
    if have != want:
        raise UserError(f"{path} holds {have[0]} double and {have[1]} single blocks; the config in {cfg_dir} "
                        f"says num_layers {want[0]}, num_single_layers {want[1]}")


def config_dir(path: Path, config: str | None) -> Path:
    if config:
        c = Path(config).expanduser()
        c = c.parent if c.name == "config.json" else c
        if not (c / "config.json").is_file() and (c / "transformer" / "config.json").is_file():
            c = c / "transformer"  # a pipeline folder
        if not (c / "config.json").is_file():
            raise UserError(f"--teacher-config {config}: no config.json there")
        return c
    if (path.parent / "config.json").is_file():
        return path.parent
    raise UserError(f"single file {path} has no config.json beside it; pass --teacher-config with "
                    "the diffusers config of the transformer (a folder or config.json)")
