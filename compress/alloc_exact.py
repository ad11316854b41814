"""Exact global allocation: the minimum of Σ weight·normalized loss over the same choices as
`alloc.global_greedy` (per target: a multiple of `multiple` below break-even within its trust range,
or dense where allowed) under the same kept-parameter budget, a multiple-choice knapsack.

Solved by a Pareto-frontier merge, one target at a time: the states are (kept parameters, weighted
loss) of the targets so far, a state kept only if no other is cheaper and no worse; a state is also
dropped where the rest cannot fit in the budget, or where even the linear relaxation of the rest
(each target's options' lower convex hull, bought in order of loss drop per parameter) cannot bring
it below the greedy allocation's loss (branch and bound: the relaxation never exceeds the integer
optimum, so no better allocation is lost). The greedy allocation is the answer where nothing beats
it by more than `TIE` of its loss, so results change only where the exact one buys something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from compress.alloc import DENSE, Allocation, LayerSpec, _check_curve, _weight, global_greedy, rank_options

TIE = 1e-9  # relative loss below which an allocation does not beat the greedy one
MAX_WORK = 30_000_000  # states × options over all targets' merges past which the search gives up (~10 s)


@dataclass(frozen=True)
class Options:
    """One target's choices: ranks (None = dense), kept parameters (ascending), weighted losses."""

    ranks: list
    costs: np.ndarray  # (K,) int64
    losses: np.ndarray  # (K,) float64


def layer_options(spec: LayerSpec, weight: float, multiple: int, bounds: tuple[int, int] | None) -> Options:
    """The ranks `global_greedy` may give the target (dense last: it keeps the most)."""
    curve = _check_curve(spec)
    low, dense_ok = rank_options(spec, multiple, bounds)
    ranks = [int(r) for r in low] + ([DENSE] if dense_ok or not low.size else [])
    costs = np.array([spec.params(r) for r in ranks], dtype=np.int64)
    losses = np.array([weight * float(curve[r]) if r is not DENSE else 0.0 for r in ranks])
    return Options(ranks, costs, losses)


def hull_segments(opt: Options) -> tuple[np.ndarray, np.ndarray]:
    """(costs, gains) of the segments of the lower convex hull of (cost, loss) from the cheapest
    option down to the lowest loss: the target's linear relaxation, steepest segment first."""
    points = [(int(opt.costs[0]), float(opt.losses[0]))]
    for c, loss in zip(opt.costs[1:].tolist(), opt.losses[1:].tolist()):
        while len(points) >= 2:
            (c0, l0), (c1, l1) = points[-2], points[-1]
            if (l1 - l0) * (c - c0) >= (loss - l0) * (c1 - c0):  # points[-1] not below the chord
                points.pop()
            else:
                break
        points.append((c, loss))
    cut = int(np.argmin([p[1] for p in points]))  # past the lowest loss the hull only costs
    pts = np.array(points[: cut + 1], dtype=np.float64)  # (H, 2)
    return np.diff(pts[:, 0]), -np.diff(pts[:, 1])


class Relaxation:
    """Lower bounds on the loss of targets k.. given a budget for them: the linear relaxation of the
    multiple-choice knapsack (hull segments bought steepest first, the last one in part)."""

    def __init__(self, options: Sequence[Options]):
        segs = [hull_segments(o) for o in options]
        owner = np.concatenate([np.full(c.size, k) for k, (c, _) in enumerate(segs)] + [np.zeros(0, int)])
        costs = np.concatenate([c for c, _ in segs] + [np.zeros(0)])
        gains = np.concatenate([g for _, g in segs] + [np.zeros(0)])
        order = np.argsort(-gains / np.maximum(costs, 1), kind="stable")
        self.owner, self.costs, self.gains = owner[order], costs[order], gains[order]
        self.floor = np.cumsum([int(o.costs[0]) for o in options][::-1])[::-1]  # (n,) cheapest of k..
        self.start = np.cumsum([float(o.losses[0]) for o in options][::-1])[::-1]  # (n,) their losses

    def bound(self, k: int, budget: np.ndarray) -> np.ndarray:
        """(S,) lowest relaxed loss of targets k.. for each budget; inf where they do not fit."""
        if k >= self.floor.size:
            return np.where(budget >= 0, 0.0, np.inf)
        mine = self.owner >= k
        costs, gains = self.costs[mine], self.gains[mine]
        cum_cost = np.concatenate([[0.0], np.cumsum(costs)])  # (M + 1,)
        cum_gain = np.concatenate([[0.0], np.cumsum(gains)])
        extra = (budget - self.floor[k]).astype(np.float64)
        j = np.clip(np.searchsorted(cum_cost, extra, side="right") - 1, 0, costs.size)  # whole segments
        part = np.where(j < costs.size, gains[np.minimum(j, costs.size - 1)] / np.maximum(costs[np.minimum(
            j, costs.size - 1)], 1), 0.0) if costs.size else np.zeros_like(extra)
        gain = cum_gain[j] + part * (extra - cum_cost[j])
        return np.where(extra >= 0, self.start[k] - gain, np.inf)


def _merge(costs, losses, opt: Options, limit: int, bound_ok) -> tuple[np.ndarray, ...]:
    """The Pareto frontier of the states × the target's options within `limit` kept parameters and
    passing `bound_ok(costs, losses)`: (costs, losses, parent state, option), ascending cost."""
    c = (costs[:, None] + opt.costs[None, :]).ravel()  # (S·K,)
    loss = (losses[:, None] + opt.losses[None, :]).ravel()
    keep = np.flatnonzero(c <= limit)
    keep = keep[bound_ok(c[keep], loss[keep])]
    order = keep[np.lexsort((loss[keep], c[keep]))]  # by cost, then loss
    c, loss = c[order], loss[order]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(loss)[:-1]])
    front = loss < best_before  # strictly better than every cheaper state
    order = order[front]
    return c[front], loss[front], order // opt.costs.size, order % opt.costs.size


def exact_allocation(layers: Sequence[LayerSpec], budget_params: int, multiple: int = 16,
                     weights: Mapping[str, float] | None = None,
                     ranges: Mapping[str, tuple[int, int]] | None = None,
                     max_work: int | None = MAX_WORK) -> Allocation | None:
    """The allocation of least Σ weight·normalized loss within `budget_params` over `global_greedy`'s
    choices (same arguments, same error below the minimum budget); `global_greedy`'s own where none
    is lower by more than TIE of its loss. None where the merges would weigh more than `max_work`
    states × options in all (the search gave up: the caller keeps the greedy allocation)."""
    greedy = global_greedy(layers, budget_params, multiple, weights, ranges)
    ranges = ranges or {}
    options = [layer_options(s, _weight(s, weights), multiple, ranges.get(s.name)) for s in layers]
    incumbent = sum(float(o.losses[o.ranks.index(greedy.ranks[s.name])]) for s, o in zip(layers, options))
    target = incumbent - TIE * incumbent  # a state must be able to get below this
    relax = Relaxation(options)
    costs, losses = np.zeros(1, dtype=np.int64), np.zeros(1)
    steps, work = [], 0
    for k, opt in enumerate(options):
        work += costs.size * opt.costs.size
        if max_work is not None and work > max_work:
            return None
        rest = relax.floor[k + 1] if k + 1 < len(options) else 0
        costs, losses, parent, choice = _merge(
            costs, losses, opt, budget_params - rest,
            lambda c, loss, k=k: loss + relax.bound(k + 1, budget_params - c) < target)
        steps.append((parent, choice))
        if not costs.size:
            return greedy
    state, ranks = int(np.argmin(losses)), {}
    for spec, opt, (parent, choice) in zip(reversed(layers), reversed(options), reversed(steps)):
        ranks[spec.name] = opt.ranks[int(choice[state])]
        state = int(parent[state])
    ranks = {s.name: ranks[s.name] for s in layers}
    return Allocation(ranks, sum(s.params(ranks[s.name]) for s in layers), budget_params)
