"""A diffusers Flux transformer written back as Black Forest Labs' single file (flux1-dev.safetensors):
the inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, for tests only."""

from __future__ import annotations

import torch

_TOP = {  # BFL prefix -> diffusers prefix, outside the blocks
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
}
_DOUBLE_NORMS = {"img_attn.norm.query_norm.scale": "attn.norm_q.weight",
                 "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
                 "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
                 "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """diffusers' final adaLN is (scale, shift); BFL's is (shift, scale)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


def flux_to_bfl(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """BFL-keyed tensors of a diffusers FluxTransformer2DModel (`prefix`: ComfyUI's
    `model.diffusion_model.`)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {}
    for bfl, dif in _TOP.items():
        if dif + ".weight" in sd:  # no guidance_in without guidance_embeds (schnell)
            out.update({f"{bfl}.{s}": sd[f"{dif}.{s}"] for s in ("weight", "bias")})
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = _swap_halves(sd[f"norm_out.linear.{s}"])
    for i in range(model.config.num_layers):
        p, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for bfl, dif in _DOUBLE.items():
            out.update({f"{p}{bfl}.{s}": sd[f"{d}{dif}.{s}"] for s in ("weight", "bias")})
        out.update({p + bfl: sd[d + dif] for bfl, dif in _DOUBLE_NORMS.items()})
        for s in ("weight", "bias"):
            out[f"{p}img_attn.qkv.{s}"] = torch.cat([sd[f"{d}attn.to_{x}.{s}"] for x in "qkv"])
            out[f"{p}txt_attn.qkv.{s}"] = torch.cat([sd[f"{d}attn.add_{x}_proj.{s}"] for x in "qkv"])
    for i in range(model.config.num_single_layers):
        p, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out.update({p + bfl: sd[d + dif] for bfl, dif in _SINGLE_NORMS.items()})
        for s in ("weight", "bias"):
            out[f"{p}modulation.lin.{s}"] = sd[f"{d}norm.linear.{s}"]
            out[f"{p}linear1.{s}"] = torch.cat([sd[f"{d}attn.to_{x}.{s}"] for x in "qkv"] + [sd[f"{d}proj_mlp.{s}"]])
            out[f"{p}linear2.{s}"] = sd[f"{d}proj_out.{s}"]
    return {prefix + k: v for k, v in out.items()}
