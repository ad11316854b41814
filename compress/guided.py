"""The guided prediction a user samples with, as pure tensor functions: classifier-free guidance of the
empty prompt's branch and the prompt's, how a pipeline's held-out records pair those branches, and the
held-out guided error of a student against its teacher (runner_heldout's second figure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass(frozen=True)
class HeldOutGuidance:
    """How each held-out batch's prediction becomes the guided one the source's pipeline samples with:
    `scale` its guidance scale; either `unconditional`, per held-out batch the same rows with the empty
    prompt's cond kwargs (the toy source, whose held-out batches hold the prompt's branch alone), or
    `pairs`, per held-out batch (its empty prompt's rows, its prompt's rows) within it (a pipeline's
    records hold both branches)."""

    scale: float
    unconditional: list[dict] | None = None
    pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale · (cond − uncond): classifier-free guidance of the two branches' predictions of the
    same rows (B, ...), as the pipelines guide (scale 1: the prompt's branch alone)."""
    return uncond + scale * (cond - uncond)


def branch_pairs(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(empty prompt's rows, prompt's rows) of records of `rows` rows each joined in one batch, each
    record laid out as a pipeline's CFG call feeds its transformer: [empty prompt × k; prompt × k]."""
    uncond, cond, start = [], [], 0
    for n in rows:
        half = n // 2
        uncond.append(torch.arange(start, start + half))
        cond.append(torch.arange(start + half, start + 2 * half))
        start += n
    return torch.cat(uncond), torch.cat(cond)


def same_inputs(batch: dict, uncond: torch.Tensor, cond: torch.Tensor) -> bool:
    """Whether the paired rows of a batch's forward kwargs are one input's two branches, every row in one
    pair: the same noisy latents and timesteps."""
    if len(uncond) == 0 or len(uncond) != len(cond) or 2 * len(uncond) != batch["hidden_states"].shape[0]:
        return False
    return all(torch.equal(batch[k][uncond], batch[k][cond]) for k in ("hidden_states", "timestep")
               if torch.is_tensor(batch.get(k)) and batch[k].dim() > 0)


def guided_predictions(predictions: list[torch.Tensor], guidance: HeldOutGuidance,
                       predict: Callable[[dict], torch.Tensor]) -> list[torch.Tensor]:
    """Each held-out batch's guided prediction from the model's `predictions` of the batches: its paired
    rows combined, or its prediction (the prompt's branch) with predict() of the batch's empty-prompt
    rows (`guidance.unconditional`)."""
    out = []
    for b, pred in enumerate(predictions):  # (B, ...)
        if guidance.pairs is not None:
            uncond, cond = guidance.pairs[b]
            out.append(guided(pred[uncond.to(pred.device)], pred[cond.to(pred.device)], guidance.scale))
        else:
            out.append(guided(predict(guidance.unconditional[b]), pred, guidance.scale))
    return out


def relative_distance(student: Iterable[torch.Tensor], teacher: list[torch.Tensor]) -> float:
    """||s − t|| / ||t|| over every tensor of the two together (float64 sums); `student` may be a generator
    (passes.base.relative_error's: one prediction held at a time)."""
    num = sum((s.double() - t.double()).pow(2).sum().item() for s, t in zip(student, teacher))
    den = sum(t.double().pow(2).sum().item() for t in teacher)
    return (num / max(den, 1e-300)) ** 0.5
