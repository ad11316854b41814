"""Toy PixArt-Σ: config, the epsilon-prediction training objective, and its pipeline.

As PixArt-Σ: adaLN-single, cross-attention to the text tokens, a DDPM linear-beta schedule with
1000 training steps, epsilon prediction (min-SNR-5 loss weighting), sampled with DPM-Solver++ (`DPMSolverMultistepScheduler`).
Small: 6 blocks, hidden 128 (4 heads × 32), patch 2 on a 4×8×8 latent = 16 tokens.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from torch.nn import functional as F

from compress.toy.pipeline import ToyPipeline, guide
from compress.toy.text import TEXT_DIM
from compress.toy.vae import LATENT_CHANNELS, LATENT_SIZE

CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,  # epsilon only (no learned-sigma half)
    num_layers=6,
    num_attention_heads=4,
    attention_head_dim=32,
    cross_attention_dim=128,
    caption_channels=TEXT_DIM,
    patch_size=2,  # 4×4 = 16 tokens: token count is what costs on CPU
    norm_type="ada_norm_single",
    use_additional_conditions=False,
    interpolation_scale=1,
)
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
NUM_TRAIN_TIMESTEPS = SCHEDULE["num_train_timesteps"]
MIN_SNR_GAMMA = 5.0


def new_transformer(seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**CONFIG)


def new_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(**SCHEDULE, prediction_type="epsilon", algorithm_type="dpmsolver++")


def alphas_cumprod() -> torch.Tensor:
    return DDPMScheduler(**SCHEDULE).alphas_cumprod  # (1000,)


def forward_kwargs(latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]) -> dict:
    """The PixArtTransformer2DModel.forward kwargs. latents (B, 4, 8, 8), timestep (B,) in [0, 1000)."""
    return {
        "hidden_states": latents,  # (B, 4, 8, 8)
        "encoder_hidden_states": text["prompt_embeds"],  # (B, L, 64)
        "encoder_attention_mask": text["attention_mask"],  # (B, L), 1 = real token
        "timestep": timestep,  # (B,)
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def noised(latents: torch.Tensor, generator: torch.Generator, training: bool = True):
    """Forward diffusion at t ~ U{0..999}: returns (noisy (B, 4, 8, 8), timestep (B,) long, target = noise)."""
    batch = latents.shape[0]
    timestep = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    abar = alphas_cumprod()[timestep].to(latents.dtype).view(batch, 1, 1, 1)
    return abar.sqrt() * latents + (1 - abar).sqrt() * noise, timestep, noise


def training_loss(model, latents: torch.Tensor, text: dict, generator: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE on clean latents (B, 4, 8, 8), min-SNR-5 weighted (Hang et al. 2023).

    Unweighted, the nearly-clean timesteps (SNR up to 1e4) dominate the gradient and a small model learns
    to denoise long before it learns to read the prompt; capping the weight at SNR = 5 fixes that."""
    noisy, timestep, target = noised(latents, generator)
    pred = model(**forward_kwargs(noisy, timestep, text)).sample
    snr = snr_of(timestep).to(pred.device)  # (B,)
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (weight * per_sample).mean()


def snr_of(timestep: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ / (1 − ᾱ) at integer timesteps (B,)."""
    abar = alphas_cumprod()[timestep.cpu()]
    return abar / (1 - abar)


class ToyPixArtPipeline(ToyPipeline):
    """`pipe("a handwritten 7", num_inference_steps=20, guidance_scale=3.0, generator=g).images`."""

    def set_timesteps(self, num_inference_steps, device):
        self.scheduler.set_timesteps(num_inference_steps, device=device)

    def predict(self, latents, t, text, guidance_scale):
        cfg = guidance_scale > 1
        x = torch.cat([latents, latents]) if cfg else latents  # (B or 2B, 4, 8, 8)
        timestep = t.expand(x.shape[0]).to(x.device)
        pred = self.transformer(**forward_kwargs(x, timestep, text)).sample
        return guide(pred, guidance_scale) if cfg else pred
