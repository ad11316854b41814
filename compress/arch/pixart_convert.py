"""Original PixArt-α/Σ checkpoint keys -> diffusers `PixArtTransformer2DModel` keys.

diffusers keeps this conversion in a script outside the library (NOTES.md), so the tool carries its own.
Fused projections of the original code (self-attention `qkv`, cross-attention `kv_linear`) are split.
"""

from __future__ import annotations

import re

import torch

_RENAMES = [  # (original regex, diffusers template)
    (r"x_embedder\.proj\.(weight|bias)", r"pos_embed.proj.\1"),
    (r"t_embedder\.mlp\.0\.(weight|bias)", r"adaln_single.emb.timestep_embedder.linear_1.\1"),
    (r"t_embedder\.mlp\.2\.(weight|bias)", r"adaln_single.emb.timestep_embedder.linear_2.\1"),
    (r"csize_embedder\.mlp\.([02])\.(weight|bias)", None),  # handled in _micro
    (r"ar_embedder\.mlp\.([02])\.(weight|bias)", None),
    (r"t_block\.1\.(weight|bias)", r"adaln_single.linear.\1"),
    (r"y_embedder\.y_proj\.fc1\.(weight|bias)", r"caption_projection.linear_1.\1"),
    (r"y_embedder\.y_proj\.fc2\.(weight|bias)", r"caption_projection.linear_2.\1"),
    (r"blocks\.(\d+)\.scale_shift_table", r"transformer_blocks.\1.scale_shift_table"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer_blocks.\1.attn1.to_out.0.\2"),
    (r"blocks\.(\d+)\.cross_attn\.q_linear\.(weight|bias)", r"transformer_blocks.\1.attn2.to_q.\2"),
    (r"blocks\.(\d+)\.cross_attn\.proj\.(weight|bias)", r"transformer_blocks.\1.attn2.to_out.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer_blocks.\1.ff.net.0.proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer_blocks.\1.ff.net.2.\2"),
    (r"final_layer\.linear\.(weight|bias)", r"proj_out.\1"),
    (r"final_layer\.scale_shift_table", r"scale_shift_table"),
]
_SPLITS = [  # fused original projection -> diffusers parts (split along the output dim)
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    (r"blocks\.(\d+)\.cross_attn\.kv_linear\.(weight|bias)", ("attn2.to_k", "attn2.to_v")),
]
_DROPPED = (r"pos_embed", r"y_embedder\.y_embedding")  # fixed sin-cos table; the null caption


def is_original_pixart(keys) -> bool:
    return any(k.startswith(("t_block.", "blocks.", "final_layer.")) for k in keys)


def convert_original_pixart(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns diffusers-keyed tensors; a state dict already in diffusers keys passes through.
    A KeyError names an original key without a diffusers counterpart (qk-norm, kv-compress)."""
    if not is_original_pixart(sd):
        return dict(sd)
    out = {}
    for key, value in sd.items():
        split = convert_pixart_key(key, value)
        twice = sorted(split.keys() & out.keys())
        if twice:
            raise KeyError(f"two original PixArt keys give the diffusers key '{twice[0]}'")
        out.update(split)
    return out


def convert_pixart_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One original tensor as its diffusers tensors (none for the dropped fixed tables, the parts
    of a fused projection); a KeyError names a key without a counterpart."""
    if any(re.fullmatch(p, key) for p in _DROPPED):
        return {}
    new = _rename(key) or _micro(key)
    split = {new: value} if new else _split(key, value)
    if split is None:
        raise KeyError(f"original PixArt key '{key}' has no counterpart in diffusers' "
                       "PixArtTransformer2DModel")
    return split


def _rename(key: str) -> str | None:
    for pattern, template in _RENAMES:
        if template and re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    return None


def _micro(key: str) -> str | None:
    m = re.fullmatch(r"(csize|ar)_embedder\.mlp\.([02])\.(weight|bias)", key)
    if not m:
        return None
    kind = "resolution_embedder" if m.group(1) == "csize" else "aspect_ratio_embedder"
    layer = "linear_1" if m.group(2) == "0" else "linear_2"
    return f"adaln_single.emb.{kind}.{layer}.{m.group(3)}"


def _split(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    for pattern, parts in _SPLITS:
        m = re.fullmatch(pattern, key)
        if m:
            chunks = value.chunk(len(parts), dim=0)
            return {f"transformer_blocks.{m.group(1)}.{p}.{m.group(2)}": c.clone()
                    for p, c in zip(parts, chunks)}
    return None
