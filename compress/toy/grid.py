"""PNG grids of toy samples: one row per prompt ("a handwritten 0" .. "9"), one column per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compress.passes.importance import write_atomically
from compress.toy.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS


def write_grid(images: torch.Tensor, path: str | Path, rows: int = 10, scale: int = 3, gap: int = 2) -> Path:
    """images (rows·cols, 1, H, W) in [0, 1], row-major -> a grayscale PNG (digits upscaled `scale`×), written
    whole or not at all (importance.write_atomically)."""
    n, _, h, w = images.shape
    cols = n // rows
    cell_h, cell_w = h * scale + gap, w * scale + gap
    canvas = np.full((rows * cell_h + gap, cols * cell_w + gap), 128, dtype=np.uint8)
    pixels = (images[:, 0].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)  # (N, H, W)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = np.kron(pixels[i], np.ones((scale, scale), dtype=np.uint8))
        canvas[gap + r * cell_h : gap + r * cell_h + h * scale, gap + c * cell_w : gap + c * cell_w + w * scale] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temp file beside it renamed onto it: a Ctrl-C or kill mid-write leaves no cut-off PNG under its name
    return write_atomically(path, lambda tmp: Image.fromarray(canvas, mode="L").save(tmp, optimize=True))


def save_sample_grid(transformer, family: str, path: str | Path, n_per_prompt: int = 8, seed: int = 0,
                     num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE) -> Path:
    """Sample `transformer` (same seeds as the evaluator) and write the grid: row d = "a handwritten d"."""
    from compress.toy.evaluate import sample

    images = sample(transformer, family, n_per_prompt=n_per_prompt, seed=seed,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    return write_grid(images, path)


def save_real_grid(path: str | Path, n_per_prompt: int = 8, split: str = "heldout") -> Path:
    """The first n_per_prompt real digits of each class, for comparison."""
    from compress.toy.data import digits

    images, labels = digits(split)
    picks = torch.cat([torch.nonzero(labels == d)[:n_per_prompt, 0] for d in range(10)])
    return write_grid((images[picks] + 1) / 2, path)
