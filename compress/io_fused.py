"""The fused attention projections (to_qkv, to_kv, to_added_qkv) a save_pretrained after diffusers'
fuse_qkv_projections() writes beside the projections they concatenate: checked to hold them, dropped."""

from __future__ import annotations

import re

import torch
from torch import nn

from compress.errors import UserError

# the layers diffusers' fuse_qkv_projections() adds beside the attention projections it concatenates
FUSED_PROJECTIONS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v"),
                     "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
FUSED_KEY = re.compile(rf"(.+)\.({'|'.join(FUSED_PROJECTIONS)})\.(weight|bias)")


def without_fused_projections(model: nn.Module, sd: dict[str, torch.Tensor], where) -> dict[str, torch.Tensor]:
    """`sd` without the fused projections (to_qkv, to_kv, to_added_qkv) a save_pretrained after
    fuse_qkv_projections() writes beside the to_q / to_k / to_v it copied, which are there: dropped,
    as diffusers' from_pretrained ignores them, so the model loads unfused with the weights saved.
    Each is checked to hold its parts, part by part (`_holds`); one that does not is a UserError, since
    dropping it would lose weights (a fine-tune or LoRA merged after fusing)."""
    expected = model.state_dict().keys()
    kept = {}
    for key, tensor in sd.items():
        m = FUSED_KEY.fullmatch(key)
        parts = m and key not in expected and _fused_parts(sd, m[1], FUSED_PROJECTIONS[m[2]], m[3])
        if not parts:
            kept[key] = tensor
            continue
        if not _holds(tensor, parts):
            names = "/".join(FUSED_PROJECTIONS[m[2]])
            raise UserError(f"{where}: {key}, written by fuse_qkv_projections(), does not hold {m[1]}'s "
                            f"{names} it fuses (changed after fusing?), and an output stores only those; call "
                            "unfuse_qkv_projections() before save_pretrained")
    return kept


def _holds(fused: torch.Tensor, parts: list[tuple[torch.Tensor, bool]]) -> bool:
    """Whether `fused` is its `parts` ((tensor, stored), `_fused_parts`) stacked: a stored part
    exactly, as fuse_projections copies it; a factorized part's up @ down (float32, computed here)
    to the fused dtype's rounding (its eps; 1e-5 in float32, whose products another device sums in
    another order) relative to that part's own norm, so an edit of one part after fusing shows
    whatever the others hold."""
    sizes = [t.shape[0] for t, _ in parts]
    if fused.dim() == 0 or fused.shape[0] != sum(sizes):
        return False
    tol = max(torch.finfo(fused.dtype).eps, 1e-5) if fused.dtype.is_floating_point else 0.0
    for chunk, (part, stored) in zip(torch.split(fused, sizes), parts):
        if chunk.shape != part.shape:
            return False
        if stored and not torch.equal(chunk, part.to(chunk.dtype)):
            return False
        if not stored and (chunk.float() - part).norm() > tol * float(part.norm()):
            return False
    return True


def _fused_parts(sd: dict[str, torch.Tensor], prefix: str, parts: tuple[str, ...], kind: str) -> list | None:
    """(the `kind` (weight or bias) of each of `prefix`'s `parts` in `sd`, whether it is stored as it
    is: dense, or a factorized part's `up.bias`; not a factorized weight, `up.weight @ down.weight`);
    None where one is not there (no fused layer of ours)."""
    found = []
    for part in parts:
        name = f"{prefix}.{part}"
        if f"{name}.{kind}" in sd:
            found.append((sd[f"{name}.{kind}"], True))
        elif kind == "bias" and f"{name}.up.bias" in sd:
            found.append((sd[f"{name}.up.bias"], True))
        elif kind == "weight" and f"{name}.up.weight" in sd and f"{name}.down.weight" in sd:
            found.append((sd[f"{name}.up.weight"].float() @ sd[f"{name}.down.weight"].float(), False))
        else:
            return None
    return found
