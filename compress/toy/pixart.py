"""Toy PixArt-Σ: config, the training objective, and its pipeline.

As PixArt-Σ: adaLN-single, cross-attention to the text tokens, 1000 training timesteps, sampled with
DPM-Solver++ (`DPMSolverMultistepScheduler`). Small: 6 blocks, hidden 128 (4 heads × 32), patch 2 on a
4×8×8 latent = 16 tokens.

Objective: rectified flow (velocity noise − x0, σ logit-normal), sampled with DPM-Solver's flow mode
(`use_flow_sigmas`, as SANA, PixArt's successor, does), not PixArt-Σ's epsilon prediction on DDPM betas.
Measured on this toy: 1000 epsilon steps (linear or scaled-linear betas, plain or min-SNR-5 weighted)
learned to denoise but never to read the prompt (x0 estimates classified the same under the right and
a wrong prompt), while 300 flow steps already did. Weighting the ε loss by min(1 + 1/SNR, cap), which
makes it the v-prediction loss, did not fix it either: cap 20 or 1000 at 500 steps gave adherence
0.10; cap 1000 at 3000 steps (20 min, 1 thread) 0.195 at guidance 3 (0.115 at guidance 1), where
the flow toy reaches 1.000 in 800 steps. Likely cause: without a skip connection the DiT must
reproduce x_t through LayerNorm-ed tokens to output ε ≈ x_t at low SNR, and that error swamps the
small prompt-dependent part of ε there. The architecture, and so what compression sees, is PixArt-Σ's.
"""

from __future__ import annotations

import functools

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from torch.nn import functional as F

from compress.toy.pipeline import ToyPipeline, flow_noised, guide
from compress.toy.text import TEXT_DIM
from compress.toy.vae import LATENT_CHANNELS, LATENT_SIZE

CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,  # the prediction only, no learned-sigma half
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
NUM_TRAIN_TIMESTEPS = 1000


def new_transformer(seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**CONFIG)


def new_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        use_flow_sigmas=True,
        flow_shift=1.0,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
    )


def forward_kwargs(latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]) -> dict:
    """The PixArtTransformer2DModel.forward kwargs. latents (B, 4, 8, 8), timestep (B,) = 1000·σ in [0, 1000]."""
    return {
        "hidden_states": latents,  # (B, 4, 8, 8)
        "encoder_hidden_states": text["prompt_embeds"],  # (B, L, 64)
        "encoder_attention_mask": text["attention_mask"],  # (B, L), 1 = real token
        "timestep": timestep,  # (B,)
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def noised(latents: torch.Tensor, generator: torch.Generator, training: bool = True):
    """Rectified flow (`flow_noised`). Returns (noisy (B, 4, 8, 8), timestep = 1000·σ (B,),
    target velocity noise − x0 (B, 4, 8, 8))."""
    noisy, sigma, target = flow_noised(latents, generator, training)
    return noisy, NUM_TRAIN_TIMESTEPS * sigma, target


def training_loss(model, latents: torch.Tensor, text: dict, generator: torch.Generator) -> torch.Tensor:
    """Velocity MSE on clean latents (B, 4, 8, 8)."""
    noisy, timestep, target = noised(latents, generator)
    pred = model(**forward_kwargs(noisy, timestep, text)).sample
    return F.mse_loss(pred.float(), target.float())


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


# ---- epsilon prediction on PixArt-Σ's DDPM betas (linear 1e-4 .. 0.02, 1000 steps) -----------------

# Kept so the experiment reproduces (`tools/train_toy_teacher.py --family pixart --objective eps`);
# the shipped toy is trained with the flow objective above. See the module docstring.
BETAS = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


@functools.lru_cache(maxsize=1)
def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the training schedule (1000,), from diffusers' DDPMScheduler (built once)."""
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, **BETAS).alphas_cumprod


def eps_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, **BETAS,
                                       prediction_type="epsilon", algorithm_type="dpmsolver++")


def eps_noised(latents: torch.Tensor, generator: torch.Generator, training: bool = True):
    """DDPM x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, t uniform in {0..999} (also when not `training`: the
    argument keeps `noised`'s signature). Returns (noisy (B, 4, 8, 8), t (B,) long, ε)."""
    batch = latents.shape[0]
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    a = alphas_cumprod()[t].to(latents.dtype).view(batch, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise, t, noise


def eps_weight(t: torch.Tensor, cap: float) -> torch.Tensor:
    """min(1 + 1/SNR_t, cap) (B,): ε-MSE weighted so it equals the v-prediction loss (capped): the
    plain ε loss barely depends on the prompt at low SNR, where the class is decided."""
    a = alphas_cumprod()[t]
    return torch.clamp(1 + (1 - a) / a, max=cap)


def eps_training_loss(model, latents: torch.Tensor, text: dict, generator: torch.Generator,
                      cap: float = 1000.0) -> torch.Tensor:
    """Weighted ε-MSE on clean latents (B, 4, 8, 8)."""
    noisy, t, target = eps_noised(latents, generator)
    pred = model(**forward_kwargs(noisy, t, text)).sample
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    w = eps_weight(t, cap)
    return (w * per_sample).sum() / w.sum()
