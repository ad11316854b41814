"""Black Forest Labs' Flux checkpoint keys (flux1-dev.safetensors) -> diffusers `FluxTransformer2DModel` keys.

The same conversion as diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, with the width taken
from the config: diffusers' fixes it at Flux.1's 3072, so a file of any other width (a tiny test model, a
narrowed Flux) fails there with a bare split error. Fused projections are split (`qkv` of the double
blocks, `linear1` = q, k, v and the MLP's input of the single blocks), and the final adaLN's halves are
swapped: BFL's is (shift, scale), diffusers' (scale, shift).
"""

from __future__ import annotations

import re

import torch

_BLOCK = r"double_blocks\.(\d+)\."
_SINGLE = r"single_blocks\.(\d+)\."
_P = r"\.(weight|bias)"
_RENAMES = [  # (BFL regex, diffusers template)
    (r"time_in\.in_layer" + _P, r"time_text_embed.timestep_embedder.linear_1.\1"),
    (r"time_in\.out_layer" + _P, r"time_text_embed.timestep_embedder.linear_2.\1"),
    (r"vector_in\.in_layer" + _P, r"time_text_embed.text_embedder.linear_1.\1"),
    (r"vector_in\.out_layer" + _P, r"time_text_embed.text_embedder.linear_2.\1"),
    (r"guidance_in\.in_layer" + _P, r"time_text_embed.guidance_embedder.linear_1.\1"),  # dev, not schnell
    (r"guidance_in\.out_layer" + _P, r"time_text_embed.guidance_embedder.linear_2.\1"),
    (r"txt_in" + _P, r"context_embedder.\1"),
    (r"img_in" + _P, r"x_embedder.\1"),
    (r"final_layer\.linear" + _P, r"proj_out.\1"),
    (_BLOCK + r"img_mod\.lin" + _P, r"transformer_blocks.\1.norm1.linear.\2"),
    (_BLOCK + r"txt_mod\.lin" + _P, r"transformer_blocks.\1.norm1_context.linear.\2"),
    (_BLOCK + r"img_mlp\.0" + _P, r"transformer_blocks.\1.ff.net.0.proj.\2"),
    (_BLOCK + r"img_mlp\.2" + _P, r"transformer_blocks.\1.ff.net.2.\2"),
    (_BLOCK + r"txt_mlp\.0" + _P, r"transformer_blocks.\1.ff_context.net.0.proj.\2"),
    (_BLOCK + r"txt_mlp\.2" + _P, r"transformer_blocks.\1.ff_context.net.2.\2"),
    (_BLOCK + r"img_attn\.proj" + _P, r"transformer_blocks.\1.attn.to_out.0.\2"),
    (_BLOCK + r"txt_attn\.proj" + _P, r"transformer_blocks.\1.attn.to_add_out.\2"),
    (_BLOCK + r"img_attn\.norm\.query_norm\.scale", r"transformer_blocks.\1.attn.norm_q.weight"),
    (_BLOCK + r"img_attn\.norm\.key_norm\.scale", r"transformer_blocks.\1.attn.norm_k.weight"),
    (_BLOCK + r"txt_attn\.norm\.query_norm\.scale", r"transformer_blocks.\1.attn.norm_added_q.weight"),
    (_BLOCK + r"txt_attn\.norm\.key_norm\.scale", r"transformer_blocks.\1.attn.norm_added_k.weight"),
    (_SINGLE + r"modulation\.lin" + _P, r"single_transformer_blocks.\1.norm.linear.\2"),
    (_SINGLE + r"linear2" + _P, r"single_transformer_blocks.\1.proj_out.\2"),
    (_SINGLE + r"norm\.query_norm\.scale", r"single_transformer_blocks.\1.attn.norm_q.weight"),
    (_SINGLE + r"norm\.key_norm\.scale", r"single_transformer_blocks.\1.attn.norm_k.weight"),
]
_SPLITS = [  # (BFL regex of a fused projection, diffusers block prefix, parts along the output dim)
    (_BLOCK + r"img_attn\.qkv" + _P, "transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v")),
    (_BLOCK + r"txt_attn\.qkv" + _P, "transformer_blocks", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    (_SINGLE + r"linear1" + _P, "single_transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]
_SWAPPED = r"final_layer\.adaLN_modulation\.1" + _P  # -> norm_out.linear, halves swapped


def is_bfl_flux(keys) -> bool:
    return any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys)


def convert_bfl_flux(sd: dict[str, torch.Tensor], inner_dim: int) -> dict[str, torch.Tensor]:
    """Returns diffusers-keyed tensors; a state dict already in diffusers keys passes through. A BFL
    one is emptied as it converts, so a fused tensor is freed once split (Flux.1: 7 GB of them). `inner_dim`: the config's num_attention_heads * attention_head_dim. A ValueError names a BFL key
    without a diffusers counterpart or a fused tensor that does not split at `inner_dim`."""
    if not is_bfl_flux(sd):
        return dict(sd)
    out = {}
    for key in list(sd):
        out.update(convert_bfl_key(key, sd.pop(key), inner_dim))
    return out


def convert_bfl_key(key: str, value: torch.Tensor, inner_dim: int) -> dict[str, torch.Tensor]:
    """One BFL tensor as its diffusers tensors (one, or the parts of a fused projection)."""
    new = _rename(key)
    parts = {new: value} if new else _split(key, value, inner_dim)
    if parts is None:
        raise ValueError(f"BFL Flux key '{key}' has no counterpart in diffusers' FluxTransformer2DModel")
    return parts


def _rename(key: str) -> str | None:
    for pattern, template in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    return None


def _split(key: str, value: torch.Tensor, inner_dim: int) -> dict[str, torch.Tensor] | None:
    m = re.fullmatch(_SWAPPED, key)
    if m:
        shift, scale = value.chunk(2, dim=0)
        return {f"norm_out.linear.{m.group(1)}": torch.cat([scale, shift])}
    for pattern, blocks, parts in _SPLITS:
        m = re.fullmatch(pattern, key)
        if m:
            rest = value.shape[0] - 3 * inner_dim  # 0 for qkv; the MLP's hidden width for linear1
            sizes = (inner_dim,) * 3 + ((rest,) if len(parts) == 4 else ())
            if rest < 0 or (len(parts) == 3 and rest) or (len(parts) == 4 and not rest):
                raise ValueError(f"BFL Flux tensor '{key}' of shape {tuple(value.shape)} does not split into "
                                 f"{', '.join(parts)} of width {inner_dim} (num_attention_heads * "
                                 "attention_head_dim of the config)")
            return {f"{blocks}.{m.group(1)}.{p}.{m.group(2)}": c.clone()  # a view would share the fused storage
                    for p, c in zip(parts, value.split(sizes, dim=0))}
    return None
