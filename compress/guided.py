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


@dataclass(frozen=True)
class CalibrationGuidance:
    """How each calibration batch's prediction becomes the guided one (svd.objective: guided): `scale`
    the source's guidance scale, `pairs` per calibration batch its (empty prompt's rows, prompt's rows)."""

    scale: float
    pairs: list[tuple[torch.Tensor, torch.Tensor]]

    def of(self, pred: torch.Tensor, b: int) -> torch.Tensor:
        """The guided prediction (B/2, ...) of batch `b`'s prediction `pred` (B, ...)."""
        uncond, cond = self.pairs[b]
        return guided(pred[uncond.to(pred.device)], pred[cond.to(pred.device)], self.scale)

    def shared(self, x: torch.Tensor, b: int) -> bool:
        """Whether a layer's input `x` (B, ..., in) on batch `b` is the same in both rows of every pair (a
        modulation linear on the timestep alone, a first block's self-attention): its error d is then one for
        the pair, reaching the guided prediction as ((1 − s) J_u + s J_c) d, so the pair is one row of its
        output Fisher (the rows' gradients summed), not two."""
        uncond, cond = self.pairs[b]
        return x.shape[0] == 2 * len(uncond) and torch.equal(x[uncond.to(x.device)], x[cond.to(x.device)])


def calibration_pairs(batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(empty prompt's rows, prompt's rows) of a calibration batch whose rows are inputs' two CFG branches,
    each input's two rows the only ones with its noisy latents and timestep, the empty prompt's first (the
    toy source's interleaved rows, inputs.interleave_branches; a pipeline's records [empty × k; prompt × k]);
    None where some input has not exactly two rows."""
    latents, steps = batch["hidden_states"], batch.get("timestep")
    groups: dict[bytes, list[int]] = {}
    for row in range(latents.shape[0]):
        key = latents[row].detach().double().cpu().numpy().tobytes()  # bf16 has no numpy type
        if torch.is_tensor(steps) and steps.dim() > 0:
            key += steps[row].detach().double().cpu().numpy().tobytes()
        groups.setdefault(key, []).append(row)
    if not groups or any(len(rows) != 2 for rows in groups.values()):
        return None
    firsts = sorted(groups.values())
    return torch.tensor([r[0] for r in firsts]), torch.tensor([r[1] for r in firsts])
