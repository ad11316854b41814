"""Flux.1 adapter (diffusers `FluxTransformer2DModel`): double-stream blocks (joint attention with
separate image/text weights) then single-stream blocks; per-block adaLN modulation linears fed only by
the timestep/guidance/pooled-text vector. Rectified-flow velocity objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.arch.base import Adapter, BlockGroup, draw_device

_MOD_INPUT = "/temb"  # every modulation linear reads silu(temb): one shared Gram


class FluxAdapter(Adapter):
    family = "flux"
    class_name = "FluxTransformer2DModel"
    groups = (
        BlockGroup("double", "transformer_blocks", "num_layers"),
        BlockGroup("single", "single_transformer_blocks", "num_single_layers"),
    )
    block_rules = (
        (r"norm1\.linear|norm1_context\.linear|norm\.linear", "modulation", "mod", _MOD_INPUT),
        # double stream: image side and context (text) side of the joint attention
        (r"attn\.to_([qkv])", "attention", r"\1", "x"),  # single blocks: same input as proj_mlp
        (r"attn\.add_([qkv])_proj", "attention", r"ctx_\1", "attn.ctx.in"),
        (r"attn\.to_out\.0", "attention", "out", "attn.out.in"),
        (r"attn\.to_add_out", "attention", "ctx_out", "attn.ctx_out.in"),
        (r"ff\.net\.0\.proj", "mlp", "in", "ff.in"),
        (r"ff\.net\.2", "mlp", "out", "ff.out.in"),
        (r"ff_context\.net\.0\.proj", "mlp", "ctx_in", "ff_context.in"),
        (r"ff_context\.net\.2", "mlp", "ctx_out", "ff_context.out.in"),
        # single stream
        (r"proj_mlp", "mlp", "in", "x"),
        (r"proj_out", "mlp", "fused_out", "proj_out.in"),  # [attn out ; mlp hidden] -> hidden
    )
    per_sample_parts = ("mod", "conditioning")
    top_rules = (
        (r"norm_out\.linear", "modulation", "mod", _MOD_INPUT[1:]),
        (r"time_text_embed\..+", "embedding", "conditioning", None),
        (r"context_embedder", "embedding", "context", "context_embedder.in"),
        (r"x_embedder", "embedding", "latent", "x_embedder.in"),
        (r"proj_out", "output", "out", "proj_out.in"),
    )

    def next_inputs(self, group, args, kwargs, output):
        encoder_hidden_states, hidden_states = output  # both block kinds return (context, image)
        return args, dict(kwargs, hidden_states=hidden_states,
                          encoder_hidden_states=encoder_hidden_states)

    def hidden_of(self, args, kwargs):
        return [kwargs["hidden_states"], kwargs["encoder_hidden_states"]]

    def hidden_of_output(self, output):
        return [output[1], output[0]]

    def skipped_output(self, hidden):
        return (hidden[1], hidden[0])  # (context, image), as both block kinds return

    def timestep_grid(self, n, like):
        return torch.linspace(1.0 / n, 1.0, n).to(like.device, like.dtype)  # σ in (0, 1]

    def task_loss(self, model, latents, cond, generator=None):
        """Rectified flow: x_t = (1 - s) x0 + s eps, target velocity eps - x0. latents (B, N, C).
        s is drawn logit-normal, as SD3 / Flux train."""
        b = latents.shape[0]
        where = draw_device(generator, latents)
        sigma = torch.sigmoid(torch.randn((b,), generator=generator, device=where)).to(latents.device)  # (B,)
        noise = torch.randn(latents.shape, generator=generator, device=where,
                            dtype=latents.dtype).to(latents.device)
        s = sigma.view(b, *([1] * (latents.dim() - 1))).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        kwargs = dict(cond, hidden_states=noisy, timestep=sigma.to(latents.dtype))
        pred = self.predict(model, kwargs)  # (B, N, C)
        return F.mse_loss(pred.float(), (noise - latents).float()), kwargs
