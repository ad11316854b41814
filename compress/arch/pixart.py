"""PixArt-Σ adapter (diffusers `PixArtTransformer2DModel`): 28 blocks of self-attn, cross-attn, MLP;
one shared adaLN-single modulation. Epsilon prediction (+ learned-variance channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from compress.arch.base import Adapter, BlockGroup, draw_device


class PixArtAdapter(Adapter):
    family = "pixart"
    class_name = "PixArtTransformer2DModel"
    groups = (BlockGroup("blocks", "transformer_blocks", "num_layers"),)
    block_rules = (
        (r"attn1\.to_([qkv])", "attention", r"\1", "attn1.in"),
        (r"attn1\.to_out\.0", "attention", "out", "attn1.out.in"),
        (r"attn2\.to_q", "cross_attention", "q", "attn2.q.in"),
        (r"attn2\.to_([kv])", "cross_attention", r"\1", "/caption"),  # same text tensor in every block
        (r"attn2\.to_out\.0", "cross_attention", "out", "attn2.out.in"),
        (r"ff\.net\.0\.proj", "mlp", "in", "ff.in"),
        (r"ff\.net\.2", "mlp", "out", "ff.out.in"),
    )
    per_sample_parts = ("mod", "timestep")
    top_rules = (
        (r"adaln_single\.linear", "modulation", "mod", "adaln.in"),
        (r"adaln_single\.emb\..+", "embedding", "timestep", None),
        (r"caption_projection\.linear_[12]", "embedding", "caption", None),
        (r"proj_out", "output", "out", "proj_out.in"),
    )

    def __init__(self):
        # PixArt-Σ trains with the DDPM linear schedule of 1000 steps (diffusers' default config).
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)

    def caption_rows(self, kwargs):
        """The T5 tokens cross-attention reads (the rest is padding, masked out: PixArt-Σ pads every
        prompt to 300 tokens). Model kwargs hold the mask as 1/0 (B, L); the transformer hands its
        blocks an additive bias (B, 1, L), 0 where read and -10000 where masked."""
        mask = kwargs.get("encoder_attention_mask")
        if mask is None:
            return None
        return mask[:, 0] > -1 if mask.ndim == 3 else mask > 0.5

    def next_inputs(self, group, args, kwargs, output):
        return (output,) + tuple(args[1:]), kwargs  # block(hidden_states, ...) -> hidden_states

    def hidden_of(self, args, kwargs):
        return [args[0] if args else kwargs["hidden_states"]]

    def hidden_of_output(self, output):
        return [output]

    def skipped_output(self, hidden):
        return hidden[0]

    def noise_level(self, timestep):
        """DDPM step t in 0..999 -> t / 1000."""
        return super().noise_level(timestep) / 1000.0

    def timestep_grid(self, n, batch, sampler=None):
        """Integer DDPM steps spread evenly over 0..999 (the sampler config is not read)."""
        like = batch["timestep"]
        return torch.linspace(0, 999, n).round().to(like.device, like.dtype)

    def sampled_prediction(self, model, pred):
        """PixArt-Σ's learned-variance half (out_channels = 2 · in_channels) is dropped: its pipeline
        samples with DPM-Solver on ε alone."""
        config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model
        c = getattr(config, "in_channels", None)
        return pred[:, :c] if c and pred.shape[1] == 2 * c else pred  # (B, C, H, W)

    def task_loss(self, model, latents, cond, generator=None, sampler=None):
        """Epsilon-prediction loss. latents (B, C, H, W) clean; cond: encoder_hidden_states, mask...
        (t uniform over the DDPM training steps, whatever the sampler)."""
        b, c = latents.shape[:2]
        steps = self.noise_scheduler.config.num_train_timesteps
        where = draw_device(generator, latents)
        t = torch.randint(0, steps, (b,), generator=generator, device=where).to(latents.device)  # (B,)
        noise = torch.randn(latents.shape, generator=generator, device=where,
                            dtype=latents.dtype).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        kwargs = dict(cond, hidden_states=noisy, timestep=t)
        kwargs.setdefault("added_cond_kwargs", {"resolution": None, "aspect_ratio": None})
        pred = self.predict(model, kwargs)  # (B, C, H, W): ε, without the learned-variance half
        return F.mse_loss(pred.float(), noise.float()), kwargs
