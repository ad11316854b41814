"""float16 mixed precision's grad scaler in a distill pass (`mixed_precision: fp16` on a GPU): a step whose
gradients overflow float16 is skipped (no optimizer update) and the scale lowered, which the trainer does not
refuse as it refuses a non-finite gradient. Each step's skip is kept in its history row (`skipped`), counted in
the pass's report record (`steps_skipped`, with the scale it ended at, `grad_scale`), and warned of where most
or all of its steps were skipped: the student then trained on few steps or none."""

from __future__ import annotations

import math


def step_skipped(acc, optimizer, grad_norm: float) -> bool:
    """Whether the optimizer step just taken was skipped by `acc`'s grad scaler (accelerate's
    AcceleratedOptimizer.step_was_skipped: the scaler found Inf/NaN in the gradients), or took no gradient
    of the step: its norm `grad_norm` not finite (where accelerate does not unscale before clipping, CPU
    autocast off, the scaled gradients' norm overflows and clipping zeroes them). False without a scaler."""
    if getattr(acc, "scaler", None) is None:
        return False
    return bool(getattr(optimizer, "step_was_skipped", False)) or not math.isfinite(grad_norm)


def scaler_record(acc, history: list[dict]) -> dict:
    """The report record's `steps_skipped` (the steps of `history`, resumed ones included, whose update the
    grad scaler skipped) and `grad_scale` (its scale at the end); {} without a grad scaler."""
    scaler = getattr(acc, "scaler", None)
    if scaler is None:
        return {}
    return {"steps_skipped": sum(1 for row in history if row.get("skipped")), "grad_scale": float(scaler.get_scale())}


def skipped_words(record: dict) -> str | None:
    """The warning of a pass whose grad scaler skipped most (more than half) or all of its steps (its
    report `record`: steps_skipped of steps_done); None where it skipped fewer or has no scaler."""
    skipped, done = record.get("steps_skipped"), record.get("steps_done")
    if not isinstance(skipped, int) or not isinstance(done, int) or not done or skipped * 2 <= done:
        return None
    moved = ("so the student was not trained at all" if skipped == done else
             f"so the student trained on {done - skipped} of them alone")
    scale = record.get("grad_scale")
    down = f" (its scale ended at {scale:g})" if isinstance(scale, float) else ""
    return (f"distill: {skipped} of {done} steps skipped: the gradients overflow float16 (mixed_precision: fp16's "
            f"grad scaler skips such a step{down}), {moved}; use mixed_precision: bf16 (float32's range) or no")
