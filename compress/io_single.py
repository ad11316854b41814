"""Single-file teacher checkpoints: a BFL Flux file (compress.arch.flux_convert), an original PixArt-Σ
`.pth` (compress.arch.pixart_convert) or a file with diffusers' keys, each with the diffusers config
of its transformer beside it or given (`--teacher-config`: io_single_config finds and reads it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.arch import SUPPORTED, get_adapter
from compress.errors import UserError
from compress.io import cast, from_config, model_class, read_config
from compress.io_errors import load_error
from compress.io_single_config import config_file, config_place
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
