"""Rank allocation: pure functions from per-layer descriptions to ranks (DESIGN.md convention 2).

Each target layer is a `LayerSpec`: its shape and its normalized loss curve (loss at rank r divided
by the layer's calibration output energy, from `compress.linalg.loss_curve` + `normalized_curve`).
An allocation maps each layer name to a rank, or to `DENSE` (None): a layer whose rank would not
save parameters (r ≥ breakeven_rank = ceil(m·n/(m+n))) keeps its dense weight.
Parameter counts include the bias when the spec says the layer has one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from compress.linalg_params import breakeven_rank, params_dense, params_lowrank, round_rank

DENSE = None  # the rank of a layer that stays dense


@dataclass(frozen=True)
class LayerSpec:
    """One target: name, shape, normalized loss curve (min(out, in) + 1,), curve[0] = 1 (or all 0),
    an optional sensitivity weight (see `alloc_sensitivity.sensitivity_weight`) and an optional role
    for `per_role`."""

    name: str
    out_features: int
    in_features: int
    curve: torch.Tensor | Sequence[float] = field(repr=False)
    weight: float = 1.0
    bias: bool = True
    role: str | None = None

    @property
    def max_rank(self) -> int:
        return min(self.out_features, self.in_features)

    @property
    def breakeven(self) -> int:
        return breakeven_rank(self.out_features, self.in_features)

    def loss(self, rank: int | None) -> float:
        """Normalized loss at a rank; 0 when dense."""
        return 0.0 if rank is DENSE else float(self.curve[rank])

    def params(self, rank: int | None) -> int:
        if rank is DENSE:
            return params_dense(self.out_features, self.in_features, self.bias)
        return params_lowrank(self.out_features, self.in_features, rank, self.bias)


@dataclass(frozen=True)
class Allocation:
    """ranks: name -> rank, or DENSE (None); spent: kept parameters over all targets;
    budget: the budget it was allocated against (None for ratio/energy rules)."""

    ranks: dict[str, int | None]
    spent: int
    budget: int | None = None


def _dense_if_no_saving(spec: LayerSpec, rank: int) -> int | None:
    return DENSE if rank >= spec.breakeven else rank


def _allocation(layers: Sequence[LayerSpec], ranks: dict, budget: int | None = None) -> Allocation:
    spent = sum(spec.params(ranks[spec.name]) for spec in layers)
    return Allocation(ranks, spent, budget)


def _check_curve(spec: LayerSpec) -> np.ndarray:
    curve = np.asarray(torch.as_tensor(spec.curve, dtype=torch.float64).cpu(), dtype=np.float64)
    if curve.shape != (spec.max_rank + 1,):
        raise ValueError(f"{spec.name}: curve must have {spec.max_rank + 1} entries, got {curve.shape}")
    if not np.isfinite(curve).all():
        raise ValueError(f"{spec.name}: curve contains NaN/Inf")
    return curve


# ----------------------------------------------------------------------------- simple rules


def ratio_rank(spec: LayerSpec, ratio: float, multiple: int = 16) -> int | None:
    """The rank keeping `ratio` of the dense weight's parameters: ratio·m·n/(m+n), rounded to the
    nearest multiple; dense where that rank saves nothing. A ratio ≥ 1 asks for no saving, so the
    layer stays dense whatever rounding gives: rounding down may cross break-even only where the ratio
    already asks for fewer parameters than dense (ratio 1.0 on a 512×128 MLP asks rank 102.4, which
    rounds to 96 at multiple 16 and kept 94%)."""
    if not 0 < ratio:
        raise ValueError(f"{spec.name}: ratio must be > 0, got {ratio}")
    if ratio >= 1:
        return DENSE
    m, n = spec.out_features, spec.in_features
    return _dense_if_no_saving(spec, round_rank(ratio * m * n / (m + n), multiple, spec.max_rank))


def uniform(layers: Sequence[LayerSpec], ratio: float, multiple: int = 16) -> Allocation:
    """The same kept-parameter ratio for every target."""
    return _allocation(layers, {s.name: ratio_rank(s, ratio, multiple) for s in layers})


def per_role(layers: Sequence[LayerSpec], ratios_by_role: Mapping[str, float | None],
             multiple: int = 16) -> Allocation:
    """A kept-parameter ratio per role (e.g. {"attn": 0.5, "mlp": 0.3}); None keeps the role dense."""
    ranks = {}
    for spec in layers:
        if spec.role not in ratios_by_role:
            raise ValueError(f"{spec.name}: no ratio for role {spec.role!r}; have {sorted(ratios_by_role)}")
        ratio = ratios_by_role[spec.role]
        ranks[spec.name] = DENSE if ratio is None else ratio_rank(spec, ratio, multiple)
    return _allocation(layers, ranks)


def energy_rank(spec: LayerSpec, fraction: float, multiple: int = 16) -> int | None:
    """Smallest rank keeping ≥ fraction of the whitened energy (curve[r] ≤ 1 − fraction),
    rounded up to a multiple so the guarantee survives rounding."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"{spec.name}: fraction must be in [0, 1], got {fraction}")
    curve = _check_curve(spec)
    ok = np.nonzero(curve <= (1.0 - fraction) + 1e-12)[0]
    rank = int(ok[0]) if ok.size else spec.max_rank
    rank = min(max(multiple, -(-rank // multiple) * multiple), spec.max_rank)
    return _dense_if_no_saving(spec, rank)


def energy(layers: Sequence[LayerSpec], fraction: float, multiple: int = 16) -> Allocation:
    """Per layer, the smallest rank that keeps ≥ fraction of its calibration output energy."""
    return _allocation(layers, {s.name: energy_rank(s, fraction, multiple) for s in layers})


# ----------------------------------------------------------------------------- global greedy


def trust_ranges(layers: Sequence[LayerSpec], ratio: float, multiple: int, factor: float) -> dict:
    """name -> (lowest, highest) rank `global_greedy` may give a layer: within `factor` of its uniform
    rank at `ratio`, where `alloc_sensitivity.sensitivity_weight` calibrated the loss model (far from it
    the first-order estimate drifts). Layers whose uniform rank saves nothing are left free."""
    if factor < 1:
        raise ValueError(f"trust factor must be ≥ 1, got {factor}")
    out = {}
    for s in layers:
        r0 = ratio_rank(s, ratio, multiple)
        if r0 is not DENSE:
            out[s.name] = (int(np.ceil(r0 / factor)), int(np.floor(r0 * factor)))
    return out


def weighted_loss(layers: Sequence[LayerSpec], ranks: Mapping[str, int | None],
                  weights: Mapping[str, float] | None = None) -> float:
    """Σ weight · normalized loss at the allocated rank (dense layers contribute 0)."""
    return sum(_weight(s, weights) * s.loss(ranks[s.name]) for s in layers)


def dense_params(layers: Sequence[LayerSpec]) -> int:
    """Parameters of all targets left dense."""
    return sum(s.params(DENSE) for s in layers)


def budget_for_ratio(layers: Sequence[LayerSpec], ratio: float) -> int:
    """A global budget keeping `ratio` of the targets' dense parameters (floored)."""
    return int(ratio * dense_params(layers))


def exact_floor(layers: Sequence[LayerSpec], ratio: float, multiple: int, ranges: Mapping | None,
                factor: float | None) -> float:
    """`min_budget` before rounding: a target with a trust range at its uniform rank's exact parameters
    / `factor` (ratio·dense/factor; the range's bottom is that rank rounded to a multiple) but at least
    one multiple's (no rank is lower: a real floor, as under uniform), the others at their lowest allowed
    rank (one multiple; dense where none saves). Each target's floor less ratio × its dense parameters
    falls as the ratio rises (a range's floor rises by 1/factor of what the ratio adds; a target leaves
    the ranges, its uniform rank dense, for one multiple), so the ratios it fits are [lowest, 1]."""
    ranges = ranges or {}
    total = 0.0
    for s in layers:
        least = lowest_params(s, multiple)
        if s.name in ranges and factor:
            least = max(least, ratio * s.params(DENSE) / factor)
        total += least
    return total


def global_budget(layers: Sequence[LayerSpec], ratio: float, multiple: int, ranges: Mapping | None,
                  factor: float | None) -> int | None:
    """The budget `global_greedy` spends at `ratio`: `budget_for_ratio`, or, where every target at its
    lowest allowed rank keeps more only because the ranks round to the nearest `multiple`, that lowest
    total (`min_budget`; at trust factor 1: at most uniform's count). None where `exact_floor` (before
    rounding) is above the ratio's parameters: the ratio is too low. Rounding neither refuses a ratio
    nor rescues one, so every ratio above an accepted one is accepted."""
    if exact_floor(layers, ratio, multiple, ranges, factor) > ratio * dense_params(layers) * (1 + 1e-9):
        return None
    return max(budget_for_ratio(layers, ratio), min_budget(layers, multiple, ranges))


def ratio_that_fits(layers: Sequence[LayerSpec], multiple: int, factor: float | None) -> float | None:
    """The lowest ratio in steps of 0.001 that `global_budget` accepts with trust ranges of `factor`
    (their floors rise with the ratio; the ratios accepted are an interval up to 1), None where none
    below 1 is."""
    def fits(k: int) -> bool:
        ratio = k / 1000
        ranges = trust_ranges(layers, ratio, multiple, factor) if factor else None
        return global_budget(layers, ratio, multiple, ranges, factor) is not None

    low, high = 0, 999  # fits(high) where any k does; never fits(low)
    if not fits(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high / 1000


def _weight(spec: LayerSpec, weights: Mapping[str, float] | None) -> float:
    w = spec.weight if weights is None else weights.get(spec.name, spec.weight)
    if not (np.isfinite(w) and w >= 0):
        raise ValueError(f"{spec.name}: weight must be finite and ≥ 0, got {w}")
    return float(w)


def rank_options(spec: LayerSpec, multiple: int, bounds: tuple[int, int] | None) -> tuple[np.ndarray, bool]:
    """The low-rank options that save parameters (multiples of `multiple`, within `bounds`), and
    whether going dense is allowed."""
    ranks = np.arange(multiple, spec.breakeven, multiple)
    if bounds is None:
        return ranks, True
    return ranks[(ranks >= bounds[0]) & (ranks <= bounds[1])], bounds[1] >= spec.breakeven


def min_budget(layers: Sequence[LayerSpec], multiple: int = 16, ranges: Mapping | None = None) -> int:
    """The smallest budget `global_greedy` accepts: every target at its lowest allowed rank
    (`multiple`, or the bottom of its range; dense where no low rank saves). Needs no curves."""
    ranges = ranges or {}
    return sum(lowest_params(s, multiple, ranges.get(s.name)) for s in layers)


def lowest_params(spec: LayerSpec, multiple: int, bounds: tuple[int, int] | None = None) -> int:
    """A layer's parameters at its lowest allowed rank (`multiple`, or the bottom of `bounds`); dense
    where no low rank saves."""
    ranks, _ = rank_options(spec, multiple, bounds)
    return spec.params(int(ranks[0]) if ranks.size else DENSE)


class _Layer:
    """Greedy state of one layer: the current rank and the moves up from it (within `bounds`)."""

    def __init__(self, spec: LayerSpec, weight: float, multiple: int, bounds: tuple[int, int] | None = None):
        self.spec, self.weight, self.curve = spec, weight, _check_curve(spec)
        self.ranks, self.dense_ok = rank_options(spec, multiple, bounds)
        self.rank = int(self.ranks[0]) if self.ranks.size else DENSE
        self.version = 0

    def params(self) -> int:
        return self.spec.params(self.rank)

    def best_move(self, remaining: int):
        """(gain/cost, new rank, cost) of the affordable move with the best loss drop per parameter
        (up to any larger multiple, or to dense), or None. Looking past the next step handles
        non-convex curves; ties go to the cheapest move."""
        if self.rank is DENSE:
            return None
        s, here = self.spec, self.curve[self.rank]
        higher = self.ranks[self.ranks > self.rank]
        costs = (higher - self.rank) * (s.out_features + s.in_features)
        gains = self.weight * (here - self.curve[higher])
        if self.dense_ok:
            costs = np.append(costs, s.params(DENSE) - s.params(self.rank))
            gains = np.append(gains, self.weight * here)
        ok = (costs <= remaining) & (gains > 0)
        if not ok.any():
            return None
        ratios = np.where(ok, gains / np.maximum(costs, 1), -np.inf)
        i = int(np.argmax(ratios))  # first maximum: the cheapest among ties
        new_rank = int(higher[i]) if i < higher.size else DENSE
        return float(ratios[i]), new_rank, int(costs[i])


def global_greedy(layers: Sequence[LayerSpec], budget_params: int, multiple: int = 16,
                  weights: Mapping[str, float] | None = None,
                  ranges: Mapping[str, tuple[int, int]] | None = None) -> Allocation:
    """Spend one budget of kept parameters across all targets where it lowers Σ weight·normalized
    loss the most per parameter.

    Every layer starts at rank `multiple` (dense if that saves nothing); then, repeatedly, the move
    with the best gain per parameter over all layers is taken (a move raises a layer's rank by
    multiples, or switches it to dense: cost = dense − low-rank params, its loss drops to 0). Moves
    are kept in a heap with lazy re-evaluation; a move that no longer fits is replaced by the best
    one that does, so the budget is filled as far as moves allow and never exceeded.
    Deterministic: ties go to the earlier layer in `layers`, then the cheaper move.
    weights: name -> sensitivity weight, overriding each spec's `weight`.
    ranges: name -> (lowest, highest) allowed rank (`trust_ranges`); such a layer starts at its lowest
        and may go dense only if its highest reaches the break-even rank.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be ≥ 1, got {multiple}")
    ranges = ranges or {}
    states = [_Layer(s, _weight(s, weights), multiple, ranges.get(s.name)) for s in layers]
    spent = sum(st.params() for st in states)
    if spent > budget_params:
        raise ValueError(f"budget {budget_params} params is below the minimum {spent} "
                         f"(every target at its lowest allowed rank, multiple {multiple})")
    heap = []

    def push(i: int) -> None:
        move = states[i].best_move(budget_params - spent)
        if move is not None:
            heapq.heappush(heap, (-move[0], i, states[i].version, move[1], move[2]))

    for i in range(len(states)):
        push(i)
    while heap:
        _, i, version, new_rank, cost = heapq.heappop(heap)
        st = states[i]
        if version != st.version:
            continue
        st.version += 1
        if cost <= budget_params - spent:
            st.rank, spent = new_rank, spent + cost
        push(i)  # the next move from here, or the best move that still fits
    ranks = {st.spec.name: st.rank for st in states}
    return Allocation(ranks, spent, budget_params)


def idle_budget(layers: Sequence[LayerSpec], alloc: Allocation, multiple: int = 16,
                ranges: Mapping[str, tuple[int, int]] | None = None) -> int:
    """The part of a `global_greedy` budget left unspent although some move still fits in it: the
    greedy stopped because no affordable move lowers the weighted loss (curves flat past the rank
    the calibration spans), not for want of budget. 0 where every move left costs more than remains."""
    remaining = (alloc.budget or 0) - alloc.spent
    for s in layers:
        rank = alloc.ranks[s.name]
        if rank is DENSE:
            continue
        ranks, dense_ok = rank_options(s, multiple, (ranges or {}).get(s.name))
        costs = [s.params(int(r)) - s.params(rank) for r in ranks if r > rank]
        costs += [s.params(DENSE) - s.params(rank)] if dense_ok else []
        if costs and min(costs) <= remaining:
            return remaining
    return 0
