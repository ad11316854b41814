"""A LoRA read as diffusers and peft would apply it to the teacher (compress.lora merges it).

The LoRA is loaded onto an empty (meta-device) teacher of the student's family, with the teacher's
block counts, and each peft layer's A, B, scaling, lora_B bias (peft `lora_bias`) and DoRA magnitude
are read back. Readers, by what the LoRA is:
- a peft adapter folder (adapter_config.json + adapter_model.safetensors): peft's own config;
- any other LoRA of a Flux model: diffusers' FluxLoraLoaderMixin (its own format, kohya, XLabs, BFL);
- a LoRA file (or a folder holding one) of another family (PixArt-Σ): diffusers-style keys
  (`transformer.<module>.lora_A.weight`, `lora_B.weight`, `lora_B.bias`, `lora_magnitude_vector`) or
  kohya-style ones (`lora_unet_<module with _>.lora_down.weight`, `lora_up.weight`, `alpha`); the peft
  LoraConfig is built from the keys: each module's rank from its A, its alpha from its `alpha` key,
  else the file's diffusers metadata, else alpha = rank (scaling 1, diffusers' convention).
A Hub id (ORG/NAME, or ORG/NAME/FILE.safetensors naming its file) is read as its local file: the named
one, or the one LoRA file the Hugging Face cache holds of it, fetched by name (hub_lora: offline, or
without network, at once); else (Flux, nothing cached) diffusers guesses the name online.
Text-encoder modules a LoRA file also holds are listed, not merged: the student is the transformer.
The checks of the keys (weights a loader would drop, a second adapter, other widths) are compress.lora_keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress import json_read
from compress.errors import UserError
from compress.lora_keys import (STATE_DICT, TEXT_ENCODER, check_all_read, check_blocks, check_finite,
                                check_kohya_flux, check_linear, check_not_text_encoder_only, check_ranks,
                                check_shapes, lora_config, lycoris_dora, module_of, no_lora_weights, peft_keys,
                                quiet_loaders, short, text_encoder_modules, with_transformer_prefix,
                                without_adapter_names)

ADAPTER = "dit_compress_merge"
MAGNITUDE = "DoRA magnitude (lora_magnitude_vector)"


@dataclass
class LoraLayer:
    """One adapted linear as peft applies it: y = base(x) + s·(B A x + bias), or with DoRA
    y = diag(magnitude / ‖W + s·B A‖_row) (W + s·B A) x + base bias."""
    down: torch.Tensor  # A (r', in)
    up: torch.Tensor  # B (out, r')
    scaling: float  # s = alpha / r' (or alpha / √r' with rsLoRA)
    bias: torch.Tensor | None = None  # lora_B's bias (out,)
    magnitude: torch.Tensor | None = None  # DoRA's m (out,)


def label(lora) -> str:
    return STATE_DICT if isinstance(lora, dict) else str(lora)


def read_lora(student: nn.Module, adapter, lora, block_map: dict,
              base: str | None = None) -> tuple[dict[str, LoraLayer], list[str]]:
    """({teacher module name: LoraLayer} as diffusers / peft would apply them, the text-encoder
    modules the LoRA also holds). `base`: the model its blocks are read as (lora_teacher.LoraBase.source),
    named where a block is past its count."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UserError("merging a LoRA needs peft: pip install 'dit-compress[lora]' (or peft)")
    with quiet_loaders(label(lora)) as held:  # their warnings list every key; the errors here say what matters
        load, keys = _reader(adapter, lora, type(student).__name__, held)
        check_not_text_encoder_only(keys, label(lora))
        text_encoder = text_encoder_modules(keys)
        skeleton = _empty_teacher(student, adapter, block_map, [k for k in keys if not TEXT_ENCODER.match(k)],
                                  label(lora), base)
        load(skeleton)
    out = {name: _layer_of(name, module) for name, module in skeleton.named_modules() if _adapted(module)}
    if not out:
        raise UserError(f"{label(lora)}: no LoRA layers for the {adapter.family} transformer in it")
    return out, text_encoder


def _adapted(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer as PeftLayer

    return isinstance(module, PeftLayer) and ADAPTER in module.lora_A


def _layer_of(name: str, module) -> LoraLayer:
    a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight  # (r', in), (out, r')
    bias = module.lora_B[ADAPTER].bias
    dora = getattr(module, "lora_magnitude_vector", None) or {}
    magnitude = dora[ADAPTER].weight if ADAPTER in dora else None
    _check_loaded(name, {"lora_A": a, "lora_B": b, "lora_B bias": bias, MAGNITUDE: magnitude})
    return LoraLayer(a.detach().float(), b.detach().float(), float(module.scaling[ADAPTER]),
                     None if bias is None else bias.detach().float(),
                     None if magnitude is None else magnitude.detach().float())


def _check_loaded(name: str, parts: dict) -> None:
    """A UserError naming what the LoRA lacks for module `name` (a part peft made but it did not fill)."""
    missing = [part for part, t in parts.items() if t is not None and t.is_meta]
    if missing == [MAGNITUDE]:
        raise UserError(f"the LoRA has lora_A and lora_B but no {MAGNITUDE} for '{name}', though it has one for "
                        "other modules (a DoRA has one for each module it adapts)")
    if missing:
        raise UserError(f"the LoRA has no {' or '.join(missing)} for '{name}'")


def _reader(adapter, lora, class_name: str, held=None) -> tuple[Callable[[nn.Module], None], list[str]]:
    """(a function loading the LoRA onto an empty teacher as the family's loader would, its keys);
    `held`: quiet_loaders' namespace."""
    from compress.io_source import looks_local
    from compress.io_source import no_lora_there

    path = None if isinstance(lora, dict) else Path(str(lora)).expanduser()
    if path is not None and (missing := no_lora_there(str(lora))) is not None:
        raise UserError(missing)
    if path is not None and not looks_local(str(lora)):  # a Hub id: its file, where known, read as a local one
        path = hub_lora(str(lora)) or path
    if path is not None and (path / "adapter_config.json").is_file():
        return _peft_reader(path)
    if adapter.family == "flux":
        return _flux_reader(lora, path, held)
    if path is None:
        return _state_reader(lora, {}, STATE_DICT)
    if not path.exists():
        raise UserError(f"{lora}: diffusers has no Hub LoRA loader for {class_name}, and the Hugging Face cache "
                        "holds no LoRA file of it: name the file, as ORG/NAME/FILE.safetensors, or download it and "
                        "give the .safetensors file (or a peft adapter folder)")
    file = _one_file(path)
    return _state_reader(*_read_file(file), str(file))


LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights


def hub_lora(lora: str) -> Path | None:
    """The local copy of the Hub LoRA `lora` (ORG/NAME, or ORG/NAME/FILE.safetensors naming its file):
    the named file, else the one LoRA file (or peft adapter) the Hugging Face cache holds of the repo,
    fetched by name (hf_hub_download: online, the Hub's newer copy; without network, the cached one at
    once, where diffusers' guess of the name lists the repo first, retrying ~17 s). None where the name
    is not known (nothing cached: diffusers guesses it online); offline, that is a UserError."""
    from huggingface_hub import hf_hub_download

    from compress.io_hub import hub_cache, hub_error, offline, quiet_hub
    from compress.io_hub_cache import cached_snapshot, held_otherwise

    parts = lora.split("/")
    named = len(parts) > 2 and lora.endswith(".safetensors")
    repo_id, name = ("/".join(parts[:2]), "/".join(parts[2:])) if named else (lora, None)
    if name is None and len(parts) == 2:
        cached = cached_lora(repo_id)
        if isinstance(cached, Path):
            return cached
        name = cached
    if name is None:
        if offline() and len(parts) == 2:
            held = held_otherwise(repo_id)  # other revisions' snapshots are named
            held = "no LoRA file of it" if cached_snapshot(repo_id) or held is None else held
            raise UserError(f"{lora}: cannot fetch it from the Hugging Face Hub offline (HF_HUB_OFFLINE), and the "
                            f"Hugging Face cache ({hub_cache()}) holds {held}: fetch it once online, "
                            "or give a local .safetensors file")
        return None
    try:
        with quiet_hub():
            return Path(hf_hub_download(repo_id, name))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local LoRA file") from None


def cached_lora(repo_id: str) -> str | Path | None:
    """What the Hugging Face cache holds of the Hub LoRA `repo_id`: the name of its one LoRA file (as
    diffusers guesses it: diffusers' own name first; no scheduler, optimizer or checkpoint file), the
    cached snapshot folder of a peft adapter, or None (not cached). Several files: a UserError."""
    from compress.io_hub_cache import cached_snapshot

    snapshot = cached_snapshot(repo_id)  # as a teacher's: refs/main's (not a valid id: diffusers says so)
    if snapshot is None:
        return None
    if (snapshot / "adapter_config.json").is_file() and (snapshot / "adapter_model.safetensors").is_file():
        return snapshot
    found = sorted(str(f.relative_to(snapshot)) for f in snapshot.rglob("*.safetensors"))
    found = [f for f in found if not any(word in f for word in ("scheduler", "optimizer", "checkpoint"))]
    found = [f for f in found if f.endswith(LORA_FILE)] or found
    if len(found) > 1:
        raise UserError(f"{repo_id}: the Hugging Face cache holds {len(found)} .safetensors files of it "
                        f"({', '.join(found[:4])}{' …' if len(found) > 4 else ''}): name the LoRA's, as "
                        f"{repo_id}/{found[0]}")
    return found[0] if found else None


def _flux_reader(lora, path: Path | None, held=None):
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    from compress.io_hub import hub_error, quiet_hub

    own_keys = _check_flux_keys(lora, path) if path is None or path.exists() else None
    if own_keys is not None and held is not None:
        held.keys_seen = True
    try:
        with quiet_hub():
            state, alphas, metadata = FluxLoraLoaderMixin.lora_state_dict(
                lora if path is None or not path.exists() else str(path), return_alphas=True,
                return_lora_metadata=True)
    except Exception as e:  # noqa: BLE001 (safetensors, the Hub and diffusers' checks raise their own)
        if path is not None and path.exists():
            raise UserError(f"{lora}: not a LoRA diffusers reads for Flux ({short(e)}); a LoRA of another "
                            "model?") from None
        raise hub_error(str(lora), e, "a local LoRA file") from None
    state = without_adapter_names(state, label(lora))
    check_finite({k: v for k, v in state.items() if not TEXT_ENCODER.match(k)}, label(lora))

    def load(skeleton: nn.Module) -> None:
        prefixed = with_transformer_prefix(state, skeleton)
        check_shapes(prefixed, skeleton, label(lora))
        check_ranks(prefixed, label(lora))
        try:
            FluxLoraLoaderMixin.load_lora_into_transformer(prefixed, alphas, transformer=skeleton,
                                                           adapter_name=ADAPTER, metadata=metadata,
                                                           low_cpu_mem_usage=True)
        except Exception as e:  # noqa: BLE001 (peft and diffusers raise their own: one line, not a traceback)
            raise UserError(f"{label(lora)}: diffusers could not load it onto the {type(skeleton).__name__} "
                            f"({short(e)}); a LoRA of another model?") from None
        check_all_read(unread(list(prefixed), skeleton), label(lora), skeleton)
    if own_keys is None:
        return load, list(state)
    # the text-encoder keys as the file names them: diffusers' loader drops some silently (lora_te2_, T5)
    return load, [k for k in state if not TEXT_ENCODER.match(k)] + [k for k in own_keys if TEXT_ENCODER.match(k)]


def _check_flux_keys(lora, path: Path | None) -> list[str] | None:
    """The keys of a Flux LoRA given as a state dict or a local .safetensors file (None where they are
    not seen before diffusers reads them: a Hub LoRA, a folder without one such file), checked first:
    diffusers drops a LyCORIS DoRA's dora_scale keys with a log line, and some of a kohya / ComfyUI
    LoRA's transformer keys with at most an INFO line (check_kohya_flux): refused here instead."""
    from safetensors import safe_open

    if isinstance(lora, dict):
        keys, shape, value = list(lora), (lambda k: tuple(lora[k].shape)), lora.__getitem__
        return _checked_flux_keys(keys, shape, value, label(lora))
    try:
        f = safe_open(str(_one_file(path)), framework="pt")
    except Exception:  # noqa: BLE001 (not one .safetensors file: diffusers reads it, or says why)
        return None
    with f:
        return _checked_flux_keys(list(f.keys()), lambda k: tuple(f.get_slice(k).get_shape()), f.get_tensor,
                                  label(lora))


def _checked_flux_keys(keys: list[str], shape: Callable, value: Callable, where: str) -> list[str]:
    if not any("lora" in k.lower() for k in keys):  # every format diffusers reads names its keys so
        raise no_lora_weights(where)  # (a model's weights, where diffusers' loader fails with an IndexError)
    dora = sorted(k for k in keys if k.endswith(".dora_scale"))
    if dora:
        raise UserError(f"{where}: {lycoris_dora(dora[0], shape(dora[0]))}")
    check_kohya_flux(keys, value, where)
    return keys


def unread(keys: list[str], skeleton: nn.Module) -> list[str]:
    """The keys of a diffusers-format LoRA state dict (`transformer.<module>.lora_A.weight` ...) that
    did not fill a part of a peft layer of `skeleton` (text-encoder keys aside: reported elsewhere)."""
    params = dict(skeleton.named_parameters())
    part = re.compile(r"^transformer\.(.+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.(weight|bias))?$")

    def read(key: str) -> bool:
        m = part.match(key)
        p = params.get(f"{m[1]}.{m[2]}.{ADAPTER}.{m[3] or 'weight'}") if m else None
        return p is not None and not p.is_meta
    return [k for k in keys if not TEXT_ENCODER.match(k) and not read(k)]


def _peft_reader(folder: Path) -> tuple[Callable[[nn.Module], None], list[str]]:
    from peft import LoraConfig
    from safetensors.torch import load_file

    try:
        config = LoraConfig.from_pretrained(str(folder))
        state = load_file(str(folder / "adapter_model.safetensors"))
    except Exception as e:  # noqa: BLE001 (peft and safetensors raise their own)
        raise UserError(f"{folder}: not a readable peft LoRA adapter ({type(e).__name__}: {e})") from None
    origin = {re.sub(r"^base_model\.model\.", "", k): k for k in state}
    state = {key: state[k] for key, k in origin.items()}
    check_finite({k: v for k, v in state.items() if not TEXT_ENCODER.match(k)}, str(folder), origin)
    return _peft_load(config, state, str(folder), origin), list(state)


def _peft_load(config, state: dict, where: str, origin: dict[str, str]) -> Callable[[nn.Module], None]:
    """Loads `state` (peft's names) onto a skeleton with peft; `origin`: {peft's name: the file's key}."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    state = {k: v for k, v in state.items() if not TEXT_ENCODER.match(k)}

    def load(skeleton: nn.Module) -> None:
        check_shapes(state, skeleton, where)
        check_ranks(state, where)
        try:
            inject_adapter_in_model(config, skeleton, adapter_name=ADAPTER, low_cpu_mem_usage=True)
            result = set_peft_model_state_dict(skeleton, state, adapter_name=ADAPTER, low_cpu_mem_usage=True)
        except Exception as e:  # noqa: BLE001 (peft raises its own: one line, not a traceback)
            raise UserError(f"{where}: peft could not load it onto the {type(skeleton).__name__} ({short(e)}); "
                            "a LoRA of another model?") from None
        unused = [k.replace(f".{ADAPTER}", "") for k in result.unexpected_keys]  # peft names a known part's with it
        check_all_read([origin.get(k, k) for k in unused], where, skeleton)
    return load


def _one_file(path: Path) -> Path:
    """A LoRA file, or the one .safetensors file of a folder (diffusers' name first)."""
    if path.is_file():
        return path
    named = path / "pytorch_lora_weights.safetensors"
    found = [named] if named.is_file() else sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise UserError(f"{path}: expected one LoRA .safetensors file there, found {len(found)}")
    return found[0]


def _unread(file: Path, e: Exception) -> str:
    """Why safetensors could not read `file`, in words: a header it cannot read ('Error while deserializing
    header: header too large': a README.md given) is a file of another kind, not passed through."""
    if "header" not in str(e).lower():
        return f"{file}: not a LoRA .safetensors file ({type(e).__name__}: {e})"
    if file.suffix != ".safetensors":
        return (f"{file} is not a safetensors LoRA: a LoRA is a .safetensors file, a folder holding one, or a "
                "peft adapter folder")
    return f"{file} is not a safetensors file: its header does not read (damaged, or another format under that name)"


def _read_file(file: Path) -> tuple[dict, dict]:
    """(the file's tensors, its diffusers LoRA metadata: the transformer's LoraConfig, or {})."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            state, header = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # noqa: BLE001 (safetensors raises its own)
        raise UserError(_unread(file, e)) from None
    try:
        raw = json_read.parse(header.get("lora_adapter_metadata", "{}"))
    except ValueError:
        raise UserError(f"{file}: its lora_adapter_metadata is not JSON") from None
    prefix = "transformer."  # diffusers' save_lora_weights: the transformer's LoraConfig, keys prefixed
    return state, {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)} if isinstance(raw, dict) else {}


def _state_reader(state: dict, metadata: dict, where: str) -> tuple[Callable[[nn.Module], None], list[str]]:
    """A diffusers- or kohya-style LoRA state dict of a family diffusers has no LoRA loader for."""
    keys = list(state)
    state = {k: v for k, v in state.items() if not TEXT_ENCODER.match(k)}
    check_finite(state, where)  # alphas too, which peft_keys takes out

    def load(skeleton: nn.Module) -> None:
        modules = dict(skeleton.named_modules())
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        peft_state, alphas, origin = peft_keys(state, linears, where)
        check_linear({module_of(k) for k in peft_state}, modules, where)
        adapted = {module_of(k) for k in peft_state if k.endswith("lora_A.weight")}
        check_all_read(sorted(origin[f"{m}.alpha"] for m in alphas if m not in adapted), where)  # no A to scale
        _peft_load(lora_config(peft_state, alphas, metadata, where), peft_state, where, origin)(skeleton)
    return load, keys


def _empty_teacher(student: nn.Module, adapter, block_map: dict, keys: list[str], where: str,
                   base: str | None = None) -> nn.Module:
    """The student's class with the teacher's block counts (the largest of the student's, its block
    map's and, by the LoRA's keys, the LoRA's), every parameter a zero scalar expanded to its shape.
    A group without a block map has the teacher's count: a LoRA block past it is refused
    (check_blocks); past a block map's last kept block, the teacher's count is not recorded."""
    from accelerate import init_empty_weights

    config = dict(student.config)
    config.pop("compression", None)
    for g in adapter.groups:
        block = re.compile(rf"(?:^|\.){g.attr}\.(\d+)\.|^lora_(?:unet|transformer)_{g.attr}_(\d+)_")
        mentioned = [int(m.group(1) or m.group(2)) for k in keys for m in [block.search(k)] if m]
        if g.name not in block_map:
            check_blocks(g.attr, len(getattr(student, g.attr)), mentioned, where, base)
        config[g.config_key] = max([len(getattr(student, g.attr))] + [i + 1 for i in block_map.get(g.name, [])]
                                   + [i + 1 for i in mentioned])
    with init_empty_weights():
        skeleton = type(student).from_config({k: v for k, v in config.items() if not k.startswith("_")})
    for module in skeleton.modules():  # peft puts a LoRA on its base layer's device: CPU, no memory
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(torch.zeros((), dtype=p.dtype).expand(p.shape),
                                                        requires_grad=False)
    return skeleton
