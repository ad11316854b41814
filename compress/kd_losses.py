"""Knowledge-distillation losses as pure tensor functions (the feature loss of `compress.distill_utils`):
the teacher-normalized MSE and the mask that leaves a DiT's massive activations out of it."""

from __future__ import annotations

import torch


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean((s − t)²) / (mean(t²) + eps), over the elements where mask is True (all if None).
    Differentiable; computed in at least float32."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t = student.to(dtype), teacher.to(dtype)
    sq_err, sq_ref = (s - t).square(), t.square()
    if mask is None:
        return sq_err.mean() / (sq_ref.mean() + eps)
    m = mask.to(dtype).expand_as(sq_err)
    count = m.sum().clamp_min(1.0)
    return ((sq_err * m).sum() / count) / ((sq_ref * m).sum() / count + eps)


def massive_activation_mask(x: torch.Tensor, k: float = 10.0, dim=None) -> torch.Tensor:
    """Bool mask, True where |x − mean| ≤ k·std (the statistics over `dim`, all elements if None).

    DiT hidden states carry a few "massive activations" orders of magnitude above the rest; TinyFusion
    (Fang et al. 2024) leaves them out of the hidden-state distillation loss so they do not dominate it.
    Compute the mask from the teacher's activations and pass it to `normalized_mse`.
    """
    xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    if dim is None:
        mean, std = xf.mean(), xf.std(unbiased=False)
    else:
        mean, std = xf.mean(dim=dim, keepdim=True), xf.std(dim=dim, keepdim=True, unbiased=False)
    return (xf - mean).abs() <= k * std
