"""Flux.1 adapter (diffusers `FluxTransformer2DModel`): double-stream blocks (joint attention with
separate image/text weights) then single-stream blocks; per-block adaLN modulation linears fed only by
the timestep/guidance/pooled-text vector. Rectified-flow velocity objective."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from compress.arch.base import Adapter, BlockGroup, draw_device
from compress.errors import UserError

_MOD_INPUT = "/temb"  # every modulation linear reads silu(temb): one shared Gram
# FlowMatchEulerDiscreteScheduler options that move σ in ways `shift_sigmas` does not follow
_UNPLACED = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")


def shift_sigmas(sigma: torch.Tensor, mu: float | None = None, shift: float = 1.0,
                 time_shift: str = "exponential") -> torch.Tensor:
    """σ (any shape, in [0, 1]) -> where FlowMatchEulerDiscreteScheduler puts it: σ' = aσ / (aσ + 1 − σ)
    with a = e^μ (dynamic shifting, FluxPipeline's μ; `time_shift` 'linear': a = μ), else a = `shift`
    (the static sσ / (1 + (s − 1)σ)). a = 1 (no μ, shift 1) returns `sigma` itself, untouched.
    Computed in float64, returned in σ's dtype."""
    if mu is None and shift == 1.0:
        return sigma
    a = shift if mu is None else (math.exp(mu) if time_shift == "exponential" else mu)
    s = sigma.double()
    return (a * s / (a * s + (1 - s))).to(sigma.dtype)


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FluxPipeline's μ at `image_seq_len` image tokens: the line through (base_seq_len, base_shift)
    and (max_seq_len, max_shift). diffusers defines it in `pipelines.flux.pipeline_flux`, whose
    import needs `transformers` (an optional extra here) and makes it log about torchvision, so the
    toy Flux would need the pipelines extra to distill; a test checks this equals diffusers' own."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def sampler_shift(sampler: Mapping | None, image_seq_len: int) -> dict:
    """The `shift_sigmas` kwargs of a sampler with scheduler config `sampler` (None: the family's
    default, unshifted: {}) at `image_seq_len` image tokens, as FluxPipeline sets its timesteps
    (μ = calculate_shift(image_seq_len, ...) when the config shifts dynamically)."""
    if sampler is None:
        return {}
    from diffusers import FlowMatchEulerDiscreteScheduler

    c = FlowMatchEulerDiscreteScheduler.from_config(dict(sampler)).config  # the scheduler's defaults filled in
    odd = [k for k in _UNPLACED if c.get(k)]
    if odd:
        raise UserError(f"the teacher pipeline's scheduler config sets {odd[0]}={c[odd[0]]!r}, which moves σ "
                        "in a way dit-compress does not follow (only shift / use_dynamic_shifting)")
    if not c.use_dynamic_shifting:
        return {"shift": float(c.shift)}
    mu = calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    return {"mu": float(mu), "time_shift": c.time_shift_type}


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

    def timestep_grid(self, n, batch, sampler=None):
        """The σ an n-step FluxPipeline visits at the batch's resolution: 1/n .. 1 evenly, moved by
        the sampler's shift (`sampler_shift`; none without a config)."""
        like = batch["timestep"]
        shift = sampler_shift(sampler, batch["hidden_states"].shape[1])  # (B, N, C): N image tokens
        return shift_sigmas(torch.linspace(1.0 / n, 1.0, n), **shift).to(like.device, like.dtype)  # σ in (0, 1]

    def task_loss(self, model, latents, cond, generator=None, sampler=None):
        """Rectified flow: x_t = (1 - s) x0 + s eps, target velocity eps - x0. latents (B, N, C).
        s is drawn logit-normal, as SD3 / Flux train, then moved by the sampler's shift at the
        latents' N image tokens (`sampler_shift`; none without a config)."""
        b = latents.shape[0]
        where = draw_device(generator, latents)
        sigma = torch.sigmoid(torch.randn((b,), generator=generator, device=where)).to(latents.device)  # (B,)
        sigma = shift_sigmas(sigma, **sampler_shift(sampler, latents.shape[1]))
        noise = torch.randn(latents.shape, generator=generator, device=where,
                            dtype=latents.dtype).to(latents.device)
        s = sigma.view(b, *([1] * (latents.dim() - 1))).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        kwargs = dict(cond, hidden_states=noisy, timestep=sigma.to(latents.dtype))
        pred = self.predict(model, kwargs)  # (B, N, C)
        return F.mse_loss(pred.float(), (noise - latents).float()), kwargs
