"""Real data for the toy teachers: scikit-learn's handwritten digits, prompts, and model inputs.

`load_digits` (1,797 8×8 images) is split 75/25 into "train" and "heldout" with a fixed seed. Images
are upsampled to 16×16 (bilinear) and scaled to [-1, 1]; the toy VAE turns them into 4×8×8 latents.

Two helpers feed other code:
- `training_batch(family, batch_size, generator)`: clean latents + prompt embeddings (training, distillation).
- `model_inputs(family, n, seed, split)`: ready-to-call kwargs for `transformer(**kwargs)` on noised real
  latents (calibration, prediction error).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from compress.toy.pipeline import with_uncond
from compress.toy.vae import IMAGE_SIZE, ToyVAE

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.25
CFG_DROPOUT = 0.1  # fraction of training prompts replaced by "" (classifier-free guidance)
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prompt_for(label: int) -> str:
    """The canonical prompt, "a handwritten 7"; the evaluator uses this one."""
    return f"a handwritten {label}"


def training_prompt(label: int, rng: np.random.Generator) -> str:
    """Training prompts: the canonical one, or a spelled-out variant, or "" (CFG dropout)."""
    if rng.random() < CFG_DROPOUT:
        return ""
    return prompt_for(label) if rng.random() < 0.7 else f"a handwritten {WORDS[label]}"


@functools.lru_cache(maxsize=None)
def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_held, y_train, y_held = train_test_split(
        digits.images, digits.target, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    return {"train": (x_train, y_train), "heldout": (x_held, y_held)}


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns images (N, 1, 16, 16) float32 in [-1, 1] and labels (N,) long."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    pixels, labels = _split()[split]
    images = torch.from_numpy(pixels).float()[:, None] / 8 - 1  # (N, 1, 8, 8), 0..16 -> [-1, 1]
    images = F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return images.clamp(-1, 1), torch.from_numpy(labels).long()


def family_module(family: str):
    """"pixart" -> compress.toy.pixart, "flux" -> compress.toy.flux."""
    from compress.toy import flux, pixart

    modules = {"pixart": pixart, "flux": flux}
    if family not in modules:
        raise ValueError(f"family must be 'pixart' or 'flux', not {family!r}")
    return modules[family]


def _text_encoder():
    from compress.toy.weights import load_text_encoder

    return load_text_encoder()


def training_batch(
    family: str, batch_size: int, generator: torch.Generator, split: str = "train", text_encoder=None
) -> dict:
    """A random training batch: {"latents": (B, 4, 8, 8), "labels": (B,), "prompts": [str],
    "text": {"prompt_embeds": (B, L, 64), "attention_mask": (B, L), "pooled": (B, 64)}}.
    10% of prompts are "" (CFG dropout). Both toys share data, VAE and text encoder (default: the shipped one).
    Pass the text to `compress.toy.<family>.training_loss(model, batch["latents"], batch["text"], generator)`."""
    family_module(family)
    images, labels = digits(split)
    index = torch.randint(0, len(labels), (batch_size,), generator=generator)
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    prompts = [training_prompt(int(y), rng) for y in labels[index]]
    return {
        "latents": ToyVAE().encode(images[index]),
        "labels": labels[index],
        "prompts": prompts,
        "text": (text_encoder or _text_encoder())(prompts),
    }


def model_inputs(family: str, n: int, seed: int = 0, split: str = "heldout", cfg: bool = False) -> dict:
    """Deterministic kwargs for `transformer(**kwargs)`: n real latents from `split`, noised at uniformly
    drawn noise levels (PixArt: DDPM step t; Flux: flow σ), with their canonical prompts ("a handwritten 7").

    PixArt: hidden_states (n, 4, 8, 8), encoder_hidden_states (n, L, 64), encoder_attention_mask (n, L),
            timestep (n,) long t in [0, 1000), added_cond_kwargs {"resolution": None, "aspect_ratio": None}.
    Flux:   hidden_states (n, 16, 16) packed, encoder_hidden_states (n, L, 64), pooled_projections (n, 64),
            timestep (n,) sigma in [0, 1], img_ids (16, 3), txt_ids (L, 3), guidance (n,) = 3.0.
    cfg=True doubles the batch as the pipelines do: rows [0, n) use the empty prompt, [n, 2n) the real one,
    with the same noisy latents and timesteps. L = 8, and every tensor is float32 (or long).
    """
    module = family_module(family)
    generator = torch.Generator().manual_seed(seed)
    images, labels = digits(split)
    index = torch.randint(0, len(labels), (n,), generator=generator)
    latents = ToyVAE().encode(images[index])  # (n, 4, 8, 8)
    noisy, timestep, _ = module.noised(latents, generator, training=False)
    encoder = _text_encoder()
    text = encoder([prompt_for(int(y)) for y in labels[index]])
    if cfg:
        text = with_uncond(text, encoder([""] * n))
        noisy, timestep = torch.cat([noisy, noisy]), torch.cat([timestep, timestep])
    return module.forward_kwargs(noisy, timestep, text)
