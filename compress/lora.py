"""LoRAs trained on the teacher, merged exactly into a compressed student.

diffusers applies a LoRA by wrapping `nn.Linear` modules in peft layers, and peft refuses our
`LowRankLinear`, so `load_lora_weights` cannot take a student. `merge_lora` adds each LoRA's
ΔW = s·B A (B (out, r'), A (r', in), s its scaling) into the student instead:
- a LowRankLinear (up (out, r), down (r, in)) grows to rank r + r': down' = [down; A], up' = [up, s·B],
  so up'·down' = up·down + s·B A exactly, with no refactorization (a fused GELU stays outside the sum);
- a dense linear: W += s·B A.

What the LoRA holds, and each module's scaling, is decided by diffusers and peft themselves: the LoRA
is loaded onto an empty (meta-device) teacher of the student's family, with the teacher's block
counts, exactly as they would load it onto the teacher (every format diffusers reads for Flux: its
own, kohya, XLabs, BFL; any family: a peft adapter folder with adapter_config.json), and the peft
layers' A, B and scaling are read back. Block indices are the teacher's: they are mapped to the
student's through its block map, and a LoRA's weights for blocks the student removed are dropped
(reported). Needs peft (the `lora` extra).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lowrank import LowRankLinear

ADAPTER = "dit_compress_merge"
STATE_DICT = "the LoRA state dict"


def merge_lora(student: nn.Module, lora, scale: float = 1.0) -> dict:
    """Merge `lora` (a file, a folder or a state dict; see the module docstring) into `student` (from
    `load_transformer`, or a teacher) in place, times `scale`. Returns {"merged": modules,
    "rank_added": {module: r'} of the low-rank ones, "dropped": teacher modules of removed blocks}.
    The student's config records the new ranks, so saving it again keeps them."""
    adapter = get_adapter(student)
    block_map = (getattr(student, "compression_meta", None) or {}).get("block_map") or {}
    layers = read_lora(student, adapter, lora, block_map)
    merged, added, dropped = [], {}, []
    for name, (down, up, scaling) in layers.items():
        target = adapter.renumbered(name, block_map)  # the teacher's block index -> the student's
        if target is None:
            dropped.append(name)
            continue
        rank = _merge_one(student, target, down, up * (scaling * scale))
        merged.append(target)
        if rank:
            added[target] = rank
    _record(student, lora, scale, len(merged))
    return {"merged": len(merged), "rank_added": added, "dropped": dropped}


def read_lora(student: nn.Module, adapter, lora, block_map: dict) -> dict[str, tuple]:
    """teacher module name -> (A (r', in), B (out, r'), scaling) as diffusers / peft would apply them."""
    if importlib.util.find_spec("peft") is None:
        raise UserError("merging a LoRA needs peft: pip install 'dit-compress[lora]' (or peft)")
    load, keys = _reader(adapter, lora, type(student).__name__)
    skeleton = _empty_teacher(student, adapter, block_map, keys)
    load(skeleton)
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in skeleton.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight  # (r', in), (out, r')
            if a.is_meta or b.is_meta:
                raise UserError(f"the LoRA has no weights for '{name}'")
            if module.lora_B[ADAPTER].bias is not None:
                raise UserError(f"'{name}': LoRAs with a bias on lora_B are not supported")
            out[name] = (a.detach().float(), b.detach().float(), float(module.scaling[ADAPTER]))
    if not out:
        raise UserError(f"{_label(lora)}: no LoRA layers for the {adapter.family} transformer in it")
    return out


def _label(lora) -> str:
    return STATE_DICT if isinstance(lora, dict) else str(lora)


def _source(lora) -> str:
    """What the student's config records of the LoRA: an absolute path where it is local (eval finds
    it again from any folder), else the Hub id, or that it was a state dict."""
    from compress.io import looks_local

    if isinstance(lora, dict):
        return STATE_DICT
    return str(Path(str(lora)).expanduser().resolve()) if looks_local(str(lora)) else str(lora)


def replay(teacher: nn.Module, loras: list[dict]) -> None:
    """Give the teacher the LoRAs a student recorded (its config's compression.loras), at their
    scales, so that eval compares the student with the teacher it stands for."""
    for record in loras:
        if record["source"] == STATE_DICT:
            raise UserError("this model holds a LoRA merged from a state dict, which its teacher cannot be "
                            "given again: merge it from a file (or a Hub id) to compare with the teacher")
        merge_lora(teacher, record["source"], scale=record["scale"])


def _reader(adapter, lora, class_name: str) -> tuple[Callable[[nn.Module], None], list[str]]:
    """(a function loading the LoRA onto an empty teacher as the family's loader would, its keys).
    A peft adapter folder (adapter_config.json) through peft, any other LoRA of a Flux model
    through diffusers' FluxLoraLoaderMixin (a file, a folder, a Hub id or a state dict)."""
    from compress.io import looks_local

    path = None if isinstance(lora, dict) else Path(str(lora)).expanduser()
    if path is not None and looks_local(str(lora)) and not path.exists():
        raise UserError(f"{lora}: no LoRA there (a .safetensors file, or a folder holding one)")
    if path is not None and (path / "adapter_config.json").is_file():
        return _peft_reader(path)
    if adapter.family != "flux":
        raise UserError(f"{_label(lora)}: diffusers has no LoRA loader for {class_name}; give a peft adapter "
                        "folder (adapter_config.json + adapter_model.safetensors)")
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    from compress.io import hub_error, quiet_hub

    try:
        with quiet_hub():
            state, alphas, metadata = FluxLoraLoaderMixin.lora_state_dict(
                lora if path is None or not path.exists() else str(path), return_alphas=True,
                return_lora_metadata=True)
    except Exception as e:  # noqa: BLE001 (safetensors, the Hub and diffusers' checks raise their own)
        if path is not None and path.exists():
            raise UserError(f"{lora}: not a LoRA diffusers reads ({type(e).__name__}: {e})") from None
        raise hub_error(str(lora), e, "a local LoRA file") from None

    def load(skeleton: nn.Module) -> None:
        FluxLoraLoaderMixin.load_lora_into_transformer(state, alphas, transformer=skeleton, adapter_name=ADAPTER,
                                                       metadata=metadata, low_cpu_mem_usage=True)
    return load, list(state)


def _peft_reader(folder: Path) -> tuple[Callable[[nn.Module], None], list[str]]:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        config = LoraConfig.from_pretrained(str(folder))
        state = load_file(str(folder / "adapter_model.safetensors"))
    except Exception as e:  # noqa: BLE001 (peft and safetensors raise their own)
        raise UserError(f"{folder}: not a readable peft LoRA adapter ({type(e).__name__}: {e})") from None
    state = {re.sub(r"^base_model\.model\.", "", k): v for k, v in state.items()}

    def load(skeleton: nn.Module) -> None:
        inject_adapter_in_model(config, skeleton, adapter_name=ADAPTER, low_cpu_mem_usage=True)
        set_peft_model_state_dict(skeleton, state, adapter_name=ADAPTER, low_cpu_mem_usage=True)
    return load, list(state)


def _empty_teacher(student: nn.Module, adapter, block_map: dict, keys: list[str]) -> nn.Module:
    """The student's class with the teacher's block counts (the largest of the student's, its block
    map's and, by the LoRA's keys, the LoRA's), every parameter a zero scalar expanded to its shape."""
    from accelerate import init_empty_weights

    config = dict(student.config)
    config.pop("compression", None)
    for g in adapter.groups:
        mentioned = [int(m.group(1)) for k in keys for m in [re.search(rf"(?:^|\.){g.attr}\.(\d+)\.", k)] if m]
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


def _merge_one(student: nn.Module, name: str, down: torch.Tensor, up: torch.Tensor) -> int:
    """Add up·down (up scaled) to the student's module `name`; returns the rank it added (0: dense)."""
    try:
        module = student.get_submodule(name)
    except AttributeError:
        raise UserError(f"the LoRA adapts '{name}', which the student does not have") from None
    if isinstance(module, LowRankLinear):
        new = LowRankLinear.from_factors(
            torch.cat([module.up.weight.detach().float(), up.to(module.up.weight.device)], 1),
            torch.cat([module.down.weight.detach().float(), down.to(module.down.weight.device)], 0),
            module.bias.detach() if module.bias is not None else None, dtype=module.up.weight.dtype)
        new.activation, new.use_kernel = module.activation, module.use_kernel
        student.set_submodule(name, new)
        return down.shape[0]
    if isinstance(module, nn.Linear):
        with torch.no_grad():
            delta = up.to(module.weight.device) @ down.to(module.weight.device)  # (out, in)
            module.weight.copy_((module.weight.float() + delta).to(module.weight.dtype))
        return 0
    raise UserError(f"the LoRA adapts '{name}', a {type(module).__name__}, not a linear layer")


def _record(student: nn.Module, lora, scale: float, merged: int) -> None:
    """Keep the new ranks and the merge in the student's config (what a save writes)."""
    from compress.io_output import register_compression

    meta = getattr(student, "compression_meta", None)
    if meta is None:
        return  # a teacher: nothing recorded
    meta["loras"] = meta.get("loras", []) + [{"source": _source(lora), "scale": scale, "modules": merged}]
    register_compression(student)
