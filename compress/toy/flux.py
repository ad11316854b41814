"""Toy Flux.1: config, the rectified-flow training objective, latent packing, and its pipeline.

As Flux.1: double-stream then single-stream blocks, 3-axis RoPE ids, a pooled text vector, a guidance
embedding, 2×2 latent packing (4×8×8 latent -> 16 tokens of 16 channels), velocity prediction
(noise − x0) under rectified flow, sampled with `FlowMatchEulerDiscreteScheduler`.

Guidance: Flux.1-dev is guidance-distilled; a toy can't be distilled cheaply. So the toy is trained
with classifier-free dropout (10% empty prompts) and a random guidance value in [1, 5] fed to the
guidance embedder, and its pipeline runs true two-branch CFG, passing `guidance_scale` to the embedder too.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch.nn import functional as F

from compress.toy.pipeline import DEFAULT_GUIDANCE, ToyPipeline, flow_noised, guide
from compress.toy.text import MAX_TOKENS, TEXT_DIM
from compress.toy.vae import LATENT_CHANNELS, LATENT_SIZE

CONFIG = dict(
    patch_size=1,
    in_channels=LATENT_CHANNELS * 4,  # packed 2×2
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_DIM,
    pooled_projection_dim=TEXT_DIM,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
TRAIN_GUIDANCE = (1.0, 5.0)


def new_transformer(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**CONFIG)


def new_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 · w/2, 4C), as FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, size: int = LATENT_SIZE) -> torch.Tensor:
    """(B, N, 4C) -> (B, C, h, w), inverse of `pack`."""
    b, _, c4 = packed.shape
    x = packed.view(b, size // 2, size // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, size, size)


def image_ids(size: int = LATENT_SIZE) -> torch.Tensor:
    """RoPE ids of the packed image tokens, (N, 3): (0, row, col)."""
    ids = torch.zeros(size // 2, size // 2, 3)
    ids[..., 1] = torch.arange(size // 2)[:, None]
    ids[..., 2] = torch.arange(size // 2)[None, :]
    return ids.reshape(-1, 3)


def forward_kwargs(packed, sigma, text, guidance: float | torch.Tensor = DEFAULT_GUIDANCE) -> dict:
    """The FluxTransformer2DModel.forward kwargs. packed (B, 16, 16), sigma (B,) in [0, 1]."""
    batch = packed.shape[0]
    guidance = torch.as_tensor(guidance, dtype=packed.dtype, device=packed.device).expand(batch)
    return {
        "hidden_states": packed,  # (B, 16, 16)
        "encoder_hidden_states": text["prompt_embeds"],  # (B, L, 64)
        "pooled_projections": text["pooled"],  # (B, 64)
        "timestep": sigma,  # (B,), the model multiplies by 1000 itself
        "img_ids": image_ids().to(packed),  # (16, 3)
        "txt_ids": torch.zeros(MAX_TOKENS, 3).to(packed),  # (L, 3)
        "guidance": guidance,  # (B,)
    }


def noised(latents: torch.Tensor, generator: torch.Generator, training: bool = True):
    """Rectified flow (`flow_noised`) on (B, 4, 8, 8) latents. Returns (packed noisy (B, 16, 16),
    sigma (B,), target velocity noise − x0, packed)."""
    noisy, sigma, target = flow_noised(latents, generator, training)
    return pack(noisy), sigma, pack(target)


def training_loss(model, latents: torch.Tensor, text: dict, generator: torch.Generator) -> torch.Tensor:
    """Velocity MSE on clean latents (B, 4, 8, 8); guidance input drawn uniformly from TRAIN_GUIDANCE."""
    noisy, sigma, target = noised(latents, generator)
    low, high = TRAIN_GUIDANCE
    guidance = low + (high - low) * torch.rand(latents.shape[0], generator=generator)
    pred = model(**forward_kwargs(noisy, sigma, text, guidance.to(latents.dtype))).sample
    return F.mse_loss(pred.float(), target.float())


class ToyFluxPipeline(ToyPipeline):
    """`pipe("a handwritten 7", num_inference_steps=20, guidance_scale=3.0, generator=g).images`."""

    def set_timesteps(self, num_inference_steps, device):
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)  # as FluxPipeline
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)

    def pack(self, latents):
        return pack(latents)

    def unpack(self, latents):
        return unpack(latents)

    def predict(self, latents, t, text, guidance_scale):
        cfg = guidance_scale > 1
        x = torch.cat([latents, latents]) if cfg else latents  # (B or 2B, 16, 16)
        sigma = (t / 1000).expand(x.shape[0]).to(x)
        pred = self.transformer(**forward_kwargs(x, sigma, text, guidance_scale)).sample
        return guide(pred, guidance_scale) if cfg else pred
