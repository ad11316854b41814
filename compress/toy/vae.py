"""Toy "VAE": an exact, parameter-free map between 16×16 digit images and 4×8×8 latents.

encode = pixel-unshuffle by 2 (each 2×2 pixel patch becomes 4 channels), decode = pixel-shuffle.
It is lossless, so every error a sample shows comes from the transformer, never from the autoencoder.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGE_SIZE = 16  # H = W of the images the pipelines produce (1 channel, values in [-1, 1])
LATENT_CHANNELS = 4  # C of the latent
LATENT_SIZE = 8  # h = w of the latent
FACTOR = IMAGE_SIZE // LATENT_SIZE


class ToyVAE(nn.Module):
    """Same calling shape as the diffusers VAEs' encode/decode, minus the distributions.

    Parameter-free, yet it has what DiffusionPipeline.to / .device / enable_model_cpu_offload read
    from every component (`device`, `dtype`, as diffusers' ModelMixin): a zero-size non-persistent
    buffer follows .to() and answers both. encode/decode do not fire accelerate's offload hook
    (AutoencoderKL's do): CpuOffload reads a parameter's device, and there is nothing to move."""

    scaling_factor = 1.0

    def __init__(self):
        super().__init__()
        self.register_buffer("placement", torch.empty(0), persistent=False)  # not in any state dict

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, FACTOR)  # (B, 1, 16, 16) -> (B, 4, 8, 8)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, FACTOR)  # (B, 4, 8, 8) -> (B, 1, 16, 16)
