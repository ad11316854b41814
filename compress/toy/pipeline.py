"""The part of the toy pipelines both families share: prompts, CFG, the denoising loop, output.

A family subclass (`ToyPixArtPipeline`, `ToyFluxPipeline`) supplies four small hooks: how to set the
scheduler's timesteps, how to pack/unpack latents, and one guided prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from compress.toy.vae import LATENT_CHANNELS, LATENT_SIZE

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0


def with_uncond(text: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack the empty-prompt branch in front of the prompted one: every tensor goes (B, ...) -> (2B, ...)."""
    return {key: torch.cat([uncond[key], text[key]]) for key in text}


def guide(pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a (2B, ...) prediction laid out as [uncond; cond]."""
    uncond, cond = pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def to_output(images: torch.Tensor, output_type: str):
    """images (B, 1, H, W) in [-1, 1] -> "pt": same shape in [0, 1]; "np": (B, H, W, 1); "pil": list of L images."""
    images = ((images.float() + 1) / 2).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    if output_type == "pil":
        return [Image.fromarray((a[..., 0] * 255).round().astype(np.uint8), mode="L") for a in array]
    raise ValueError(f"output_type must be 'pt', 'np' or 'pil', not {output_type!r}")


class ToyPipeline(DiffusionPipeline):
    """transformer + scheduler + toy text encoder + toy VAE, called like the diffusers text-to-image pipelines."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, transformer, scheduler, text_encoder, vae):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, vae=vae)

    # hooks a family fills in
    def set_timesteps(self, num_inference_steps: int, device: torch.device) -> None:
        raise NotImplementedError

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def predict(self, latents, t, text, guidance_scale: float) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> dict[str, torch.Tensor]:
        """Text embeddings; with guidance > 1 the empty-prompt branch is stacked in front (2B rows)."""
        text = self.text_encoder(prompts)
        if guidance_scale > 1:
            text = with_uncond(text, self.text_encoder([""] * len(prompts)))
        device, dtype = self._execution_device, self.transformer.dtype
        return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in text.items()}

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        # _execution_device, not transformer.device: under model / sequential CPU offload the
        # transformer rests on the CPU between calls while it runs on the accelerator
        device, dtype = self._execution_device, self.transformer.dtype
        text = self.encode_prompts(prompts, guidance_scale)
        if latents is None:
            shape = (len(prompts), LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, 4, 8, 8)
        latents = self.pack(latents * getattr(self.scheduler, "init_noise_sigma", 1.0))
        self.set_timesteps(num_inference_steps, device)
        for t in self.progress_bar(self.scheduler.timesteps):
            pred = self.predict(latents, t, text, guidance_scale)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        images = to_output(self.vae.decode(self.unpack(latents)), output_type)
        self.maybe_free_model_hooks()  # enable_model_cpu_offload: back to the CPU, as diffusers' pipelines
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def flow_noised(latents: torch.Tensor, generator: torch.Generator, training: bool = True):
    """Rectified flow x_σ = (1−σ)·x0 + σ·noise, σ logit-normal when training (as SD3/Flux), else
    uniform. latents (B, C, H, W) -> (noisy, sigma (B,), target velocity noise − x0)."""
    batch = latents.shape[0]
    if training:
        sigma = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        sigma = torch.rand(batch, generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    s = sigma.to(latents.dtype).view(batch, 1, 1, 1)
    return (1 - s) * latents + s * noise, sigma.to(latents.dtype), noise - latents
