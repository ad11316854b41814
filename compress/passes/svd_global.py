"""The svd pass's `global` allocation: measured sensitivities (the final prediction's error with one
layer factorized, at its uniform rank or, where that loses only round-off, at a lower one within its
trust range), the error the sensitivity-weighted model predicts against uniform (also at uniform's
parameter count), trust ranges, the budget check (`c` is the pass's SVDConfig), and `GlobalAllocation`,
which SVDPass mixes in: its calibration of every target and the greedy allocation."""

from __future__ import annotations

import math
import statistics

from compress.alloc import (DENSE, budget_for_ratio, exact_floor, global_budget, global_greedy, idle_budget,
                            ratio_rank, ratio_that_fits, trust_ranges, uniform)
from compress.alloc_sensitivity import error_vs_uniform, measurement_rank, sensitivity_weight
from compress.arch.base import LinearInfo
from compress.calib import BlockCalibration
from compress.calib_stats import Stats
from compress.calib_spill import SpilledMap
from compress.calib_store import Unchanged
from compress.errors import BadValue, NumericError, UserError
from compress.linalg import normalized_curve
from compress.passes.base import predictions, relative_error
from compress.passes.svd_layer import approximation, decompose_layer, layer_math, swapped_weight, weighted
from compress.passes.svd_targets import fixed_ranks, shape_spec, uses_output_gram
from compress.replay import Prefix
from compress.report import warn

IDLE_SHARE = 0.01  # unspent budget that a fitting move could have taken, above this share of it: warned


def predicted_vs_uniform(specs, ranks, weights, c, ranges) -> dict:
    """Report keys: the final-prediction error the sensitivity-weighted loss model expects of the
    allocation relative to uniform (√ of the weighted losses' ratio; None without sensitivity), the
    same for a global allocation of uniform's own parameter count (`alloc_sensitivity.error_vs_uniform`), and that
    count, beside the allocation's `spent_params`."""
    if weights:
        spent, equal, params = error_vs_uniform(specs, ranks, weights, c.ratio, c.multiple, ranges)
    else:
        spent = equal = None
        params = uniform(specs, c.ratio, c.multiple).spent
    return {"predicted_error_vs_uniform": spent, "uniform_params": params,
            "predicted_error_vs_uniform_equal_params": equal}


def sensitivities(model, adapter, batches, factors, progress, targets, guide=None) -> dict[str, float]:
    """Per measured layer: the squared relative final-prediction error with only that layer factorized
    (at its `alloc_sensitivity.measurement_rank`), per unit of its normalized loss there
    (alloc_sensitivity.sensitivity_weight); the error of the guided prediction of each input's two rows under a
    guided svd.objective (`guide`, the pass's guided.CalibrationGuidance, its batches the first of these), else
    each row's own.
    factors: name -> (up, down, normalized loss[, bias shift]), the shift a centered target's mean error
    (svd_layer.approximation), added to its bias for the measurement as compress_layer adds it. The forwards of
    a block's layers start at that block (its input recorded once, `replay.Prefix`)."""
    from compress.progress import bar as progress_bar

    ref = predictions(model, adapter, batches)
    position = {(g, i): k for k, (g, i, _) in enumerate(adapter.iter_blocks(model))}
    start = {i.name: position.get((i.group, i.block), 0) for i in targets}  # top level: whole forwards
    weights, prefix = {}, Prefix(model, adapter, batches, 0)
    with progress_bar(progress) as bar:
        task = bar.add_task("sensitivity", total=len(factors))
        for name in sorted(factors, key=start.__getitem__):  # one recording per block
            up, down, norm_loss, *shift = factors[name]  # shift: a centered target's mean error
            if start[name] != prefix.start:
                prefix = Prefix(model, adapter, batches, start[name])
            with swapped_weight(model, name, up @ down, shift[0] if shift else None):
                rel = relative_error(model, ref, adapter, batches, prefix, guide=guide)
            if not math.isfinite(rel):
                raise NumericError(f"{name}: the prediction error with this layer alone factorized "
                                   f"is {rel} (global allocation's sensitivity)")
            weights[name] = sensitivity_weight(rel, norm_loss)
            bar.advance(task)
    return {name: weights[name] for name in factors}


def trust_ranges_for(specs, c) -> dict | None:
    return trust_ranges(specs, c.ratio, c.multiple, c.trust_region) if c.trust_region else None


def unspent_words(specs, alloc, c, ranges) -> str | None:
    """The warning for a global allocation that left more than IDLE_SHARE of its budget unspent
    although moves still fit in it: no larger rank lowers any target's predicted error (toy PixArt
    on 1 prompt x 1 timestep kept 0.365 of its targets where svd.ratio 0.5 asked, unsaid). None otherwise."""
    idle = idle_budget(specs, alloc, c.multiple, ranges)
    if not alloc.budget or idle <= IDLE_SHARE * alloc.budget:
        return None
    dense = sum(s.params(DENSE) for s in specs)
    return (f"svd: the global allocation spent {alloc.spent:,} of its {alloc.budget:,}-parameter budget (its "
            f"targets keep {alloc.spent / dense:.3f} of their parameters where svd.ratio {c.ratio} asks): no larger "
            "rank lowers any target's predicted error, typically because the calibration spans fewer directions "
            "than the layers' widths; more calibration rows (calibration.num_prompts, calibration.timesteps) "
            "let it spend the rest")


# what the global budget check reads besides ratio: which layers are targets, which of them have
# explicit ranks, and the lowest rank each may take; a --set of another key (fisher) is not named with it
GLOBAL_BUDGET_READS = ("targets", "ignore", "allocation", "ranks", "multiple", "trust_region")


def check_global_budget(targets: list[LinearInfo], c) -> None:
    """The budget must cover every free target at its lowest allowed rank (known from shapes alone)
    before the rounding of those ranks to svd.multiple (`global_budget`): else a BadValue at svd.ratio
    that says what they keep then (ceiled: above the ratio), with the keys it read (GLOBAL_BUDGET_READS),
    advising the lowest ratio that fits where one below 1 does, and a wider trust region where one does."""
    fixed = fixed_ranks(targets, c.allocation, c.ratio, c.ratios, c.ranks, c.multiple)
    specs = [shape_spec(i) for i in targets if i.name not in fixed]
    ranges = trust_ranges_for(specs, c)
    if specs and global_budget(specs, c.ratio, c.multiple, ranges, c.trust_region) is None:
        dense = sum(s.params(DENSE) for s in specs)
        floor = exact_floor(specs, c.ratio, c.multiple, ranges, c.trust_region)
        fits = ratio_that_fits(specs, c.multiple, c.trust_region)
        trust = f", within trust_region {c.trust_region}× of uniform" if c.trust_region else ""
        exact = " before rounding to the multiple" if c.trust_region else ""  # a range's bottom is rounded
        ways = ([f"raise svd.ratio (to at least {fits:.3f})"] if fits else []) + ["lower svd.multiple"] \
            + (["widen svd.trust_region"] if c.trust_region and widening_fits(specs, c) else [])
        raise BadValue("ratio", f"svd.ratio {c.ratio} is below what global allocation can keep: every target at "
                                f"its lowest allowed rank (multiple {c.multiple}{trust}) keeps "
                                f"{math.ceil(floor / dense * 1000 - 1e-9) / 1000:.3f} of the parameters{exact}; "
                                f"{counted_or(ways)}", reads=GLOBAL_BUDGET_READS)


def widening_fits(specs, c) -> bool:
    """Whether a wide enough trust region fits svd.ratio: the check without ranges (every target at one
    multiple, or dense where that saves nothing: the floor a widening range approaches, and reaches)
    accepts it. A wider region that keeps less, but still too much, is no way out."""
    return global_budget(specs, c.ratio, c.multiple, None, None) is not None


def counted_or(ways: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])} or {ways[-1]}"


class GlobalAllocation:
    """SVDPass's `global` allocation, mixed into the pass: the calibration of every target on the
    teacher's activations, then the allocation. It reads the pass's config, block loader, caches,
    Fisher roots and scratch folder, and walks the targets with its `_walk`."""

    def _global_ranks(self, model, adapter, targets, batches, fixed) -> tuple[dict, dict]:
        """Teacher-activation calibration of every target: normalized loss curves (+ sensitivity),
        then one greedy allocation of the kept-parameter budget."""
        c = self.config
        sensitivity = c.sensitivity if c.sensitivity is not None else True
        if sensitivity and not getattr(self.loader, "resident", True):
            raise UserError("svd.sensitivity needs the whole model in memory (one forward per layer); "
                            "with block weights streamed set svd.sensitivity: false")
        curves, weights, lower = self._measured(model, adapter, targets, batches, sensitivity)
        free = [i for i in targets if i.name not in fixed]
        specs = [shape_spec(i, curves[i.name]) for i in free]
        if weights:  # layers not measured (no saving, or no measurable loss in range): the median weight
            median = statistics.median(weights.values())
            weights = {s.name: weights.get(s.name, median) for s in specs}
        ranges = trust_ranges_for(specs, c)
        budget = global_budget(specs, c.ratio, c.multiple, ranges, c.trust_region)
        if budget is None:  # plan's check_global_budget refused it on shapes; curves only lower floors
            budget = budget_for_ratio(specs, c.ratio)
        alloc = global_greedy(specs, budget, c.multiple, weights or None, ranges)
        said = unspent_words(specs, alloc, c, ranges)
        if said:
            warn(said)
        info = {"budget_params": budget, "spent_params": alloc.spent, "sensitivity": sensitivity,
                "trust_region": c.trust_region, "weights": weights,
                "weights_measured_below_uniform": {n: r for n, r in lower.items() if n in weights},
                **predicted_vs_uniform(specs, alloc.ranks, weights, c, ranges)}
        return {**alloc.ranks, **fixed}, info

    def _measured(self, model, adapter, targets, batches, sensitivity: bool) -> tuple[dict, dict, dict]:
        """Every target's normalized loss curve and, with `sensitivity`, its measured weight and the
        layers measured below their uniform rank (name -> rank). Each target's factors at its
        measurement rank wait on disk (sensitivity/<pid>-*.pt in the scratch folder) until its
        sensitivity is measured, and go once it is, or at a Ctrl-C or an error."""
        c, curves, lower = self.config, {}, {}
        with SpilledMap(self.scratch / "sensitivity" if sensitivity else None) as factors:
            def visit(info: LinearInfo, stats: Stats) -> bool:
                m = layer_math(model.get_submodule(info.name), stats, uses_output_gram(info), self._center(info))
                root = self.roots.get(info.name)
                m = weighted(m, root[0]) if root else m
                dec = decompose_layer(m, c.method, c.alpha, info.name)
                curves[info.name] = normalized_curve(dec.curve)
                spec = shape_spec(info, curves[info.name])
                rank = measurement_rank(spec, c.ratio, c.multiple, (trust_ranges_for([spec], c) or {}).get(info.name))
                if rank is not None and rank != ratio_rank(spec, c.ratio, c.multiple):
                    lower[info.name] = rank
                if sensitivity and rank is not None:  # the layer as compress_layer makes it (mean shift too)
                    up, down, shift = approximation(m, dec, rank, root[1] if root else None, info.name)
                    factors[info.name] = (up.float(), down.float(), float(curves[info.name][rank]),
                                          shift.float() if shift is not None else None)
                return False

            cal = BlockCalibration(model, adapter, batches, "teacher", self.cache, Unchanged(self.loader),
                                   c.progress, spill=self.spill, sampler=self.sampler, block_map=self.block_map)
            self._walk(cal, targets, visit, [])
            weights = sensitivities(model, adapter, batches[: c.sensitivity_batches], factors,  # guided
                                    c.progress, targets, getattr(self, "guide", None)) if sensitivity else {}
        return curves, weights, lower
