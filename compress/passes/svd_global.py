"""The svd pass's `global` allocation, apart from its wiring: measured sensitivities (the final
prediction's error with one layer at the uniform rank), the error the sensitivity-weighted model
predicts against uniform, trust ranges, and the budget check. `c` is the pass's SVDConfig."""

from __future__ import annotations

import math

from compress.alloc import (DENSE, budget_for_ratio, min_budget, ratio_rank, sensitivity_weight,
                            trust_ranges, weighted_loss)
from compress.arch.base import LinearInfo
from compress.errors import NumericError, UserError
from compress.passes.base import predictions, relative_error
from compress.passes.svd_layer import swapped_weight
from compress.passes.svd_targets import fixed_ranks, shape_spec
from compress.replay import Prefix


def predicted_vs_uniform(specs, ranks, weights, c) -> float | None:
    """√(Σ weight·loss at the allocated ranks / the same at the uniform ranks): the final-prediction
    error the sensitivity-weighted loss model expects, relative to uniform (None without sensitivity)."""
    if not weights:
        return None
    uniform = weighted_loss(specs, {s.name: ratio_rank(s, c.ratio, c.multiple) for s in specs}, weights)
    return (weighted_loss(specs, ranks, weights) / uniform) ** 0.5 if uniform > 0 else None


def sensitivities(model, adapter, batches, factors, progress, targets) -> dict[str, float]:
    """Per measured layer: the squared relative final-prediction error with only that layer at the
    uniform rank, per unit of its normalized loss there (alloc.sensitivity_weight). factors: name ->
    (up, down, normalized loss[, bias shift]), the shift a centered target's mean error
    (svd_layer.approximation), added to its bias for the measurement as compress_layer adds it. The forwards of
    a block's layers start at that block (its input recorded once, `replay.Prefix`)."""
    from compress.calib import _progress

    ref = predictions(model, adapter, batches)
    position = {(g, i): k for k, (g, i, _) in enumerate(adapter.iter_blocks(model))}
    start = {i.name: position.get((i.group, i.block), 0) for i in targets}  # top level: whole forwards
    weights, prefix = {}, Prefix(model, adapter, batches, 0)
    with _progress(progress) as bar:
        task = bar.add_task("sensitivity", total=len(factors))
        for name in sorted(factors, key=start.__getitem__):  # one recording per block
            up, down, norm_loss, *shift = factors[name]  # shift: a centered target's mean error
            if start[name] != prefix.start:
                prefix = Prefix(model, adapter, batches, start[name])
            with swapped_weight(model, name, up @ down, shift[0] if shift else None):
                rel = relative_error(model, ref, adapter, batches, prefix)
            if not math.isfinite(rel):
                raise NumericError(f"{name}: the prediction error with this layer alone factorized at the "
                                   f"uniform rank is {rel} (global allocation's sensitivity)")
            weights[name] = sensitivity_weight(rel, norm_loss)
            bar.advance(task)
    return {name: weights[name] for name in factors}


def trust_ranges_for(specs, c) -> dict | None:
    return trust_ranges(specs, c.ratio, c.multiple, c.trust_region) if c.trust_region else None


def check_global_budget(targets: list[LinearInfo], c) -> None:
    """The budget must cover every free target at its lowest allowed rank (known from shapes alone)."""
    fixed = fixed_ranks(targets, c.allocation, c.ratio, c.ratios, c.ranks, c.multiple)
    specs = [shape_spec(i) for i in targets if i.name not in fixed]
    budget, floor = budget_for_ratio(specs, c.ratio), min_budget(specs, c.multiple, trust_ranges_for(specs, c))
    if specs and budget < floor:
        dense = sum(s.params(DENSE) for s in specs)
        raise UserError(f"svd.ratio {c.ratio} is below what global allocation can keep: every target at its "
                        f"lowest allowed rank (multiple {c.multiple}"
                        + (f", within trust_region {c.trust_region}× of uniform" if c.trust_region else "")
                        + f") keeps {floor / dense:.3f} of the parameters; raise svd.ratio, lower svd.multiple"
                        + (" or widen svd.trust_region" if c.trust_region else ""))
