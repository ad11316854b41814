"""compress.alloc_exact: the exact global allocation equals brute force over the greedy's choices,
never exceeds the budget, keeps the greedy's ranks on ties, and beats the greedy where it idles."""

import numpy as np
import pytest
import torch

from compress import alloc as A
from compress.alloc_exact import exact_allocation, hull_segments, layer_options


def choices(spec, multiple, bounds):
    """The ranks a target may take, written out from the rules (not from alloc.rank_options)."""
    m, n = spec.out_features, spec.in_features
    breakeven = -(-(m * n) // (m + n))
    low = [r for r in range(multiple, breakeven, multiple) if bounds is None or bounds[0] <= r <= bounds[1]]
    dense = bounds is None or bounds[1] >= breakeven or not low
    return low + ([A.DENSE] if dense else [])


def brute_force(layers, budget, multiple, weights, ranges):
    """Least Σ weight·loss over every combination of choices within the budget (an outer sum)."""
    costs, losses = np.zeros(()), np.zeros(())
    for s in layers:
        ranks = choices(s, multiple, ranges.get(s.name))
        costs = np.add.outer(costs, [s.params(r) for r in ranks])
        losses = np.add.outer(losses, [weights[s.name] * s.loss(r) for r in ranks])
    return losses[costs <= budget].min()


def random_layer(rng, name):
    """A small target with a non-increasing curve of random (often non-convex) shape, or a
    smooth convex one, or one flat past the rank its calibration spans."""
    out_f, in_f = (int(x) for x in rng.integers(4, 41, 2))
    k = min(out_f, in_f)
    kind = rng.integers(3)
    energies = rng.random(k) ** 4 if kind == 0 else np.exp(-rng.uniform(0.01, 0.5) * np.arange(k))
    if kind == 2:
        energies[rng.integers(1, k + 1):] = 0.0
    curve = np.append(np.cumsum(energies[::-1])[::-1], 0.0)
    return A.LayerSpec(name, out_f, in_f, torch.tensor(curve / curve[0]), bias=bool(rng.integers(2)))


def test_equals_brute_force_on_random_small_instances():
    rng = np.random.default_rng(0)
    checked = beaten = 0
    for case in range(400):
        layers = [random_layer(rng, f"l{i}") for i in range(int(rng.integers(1, 5)))]
        multiple = int(rng.choice([1, 2, 4, 8]))
        weights = {s.name: float(rng.choice([0.0, rng.exponential(), 10 * rng.exponential()])) for s in layers}
        ranges = A.trust_ranges(layers, float(rng.uniform(0.2, 0.9)), multiple, float(rng.uniform(1, 3))) \
            if case % 2 else {}
        floor, dense = A.min_budget(layers, multiple, ranges), A.dense_params(layers)
        for budget in {floor, floor + 1, int(rng.integers(floor, dense + 1)), dense - 1, dense, dense + 7}:
            if budget < floor:
                continue
            exact = exact_allocation(layers, budget, multiple, weights, ranges)
            best = brute_force(layers, budget, multiple, weights, ranges)
            got = A.weighted_loss(layers, exact.ranks, weights)
            assert got == pytest.approx(best, rel=1e-8, abs=1e-12), (case, budget)
            assert exact.spent == sum(s.params(exact.ranks[s.name]) for s in layers) <= budget
            assert all(exact.ranks[s.name] in choices(s, multiple, ranges.get(s.name)) for s in layers)
            greedy = A.global_greedy(layers, budget, multiple, weights, ranges)
            beaten += A.weighted_loss(layers, greedy.ranks, weights) > got * (1 + 1e-6)
            checked += 1
    assert checked > 1500 and beaten > 10  # the instances include ones where greedy is not optimal


def test_spends_the_budget_greedy_leaves_idle():
    """T1's two-layer case: greedy takes a's cheap dense move first, then can afford only b at 8."""
    ca = np.linspace(1, 0.3, 9).tolist() + np.linspace(0.3, 0, 9)[1:].tolist()  # 16x32: 17 entries
    cb = np.concatenate([np.linspace(1, 0.45, 9), np.linspace(0.45, 0, 9)[1:], np.zeros(24)])  # 48x40
    a, b = A.LayerSpec("a", 16, 32, torch.tensor(ca)), A.LayerSpec("b", 48, 40, torch.tensor(cb))
    budget = a.params(8) + b.params(16)  # 1,856
    greedy = A.global_greedy([a, b], budget, 8)
    assert greedy.ranks == {"a": A.DENSE, "b": 8} and greedy.spent == 1280
    exact = exact_allocation([a, b], budget, 8)
    assert exact.ranks == {"a": 8, "b": 16} and exact.spent == budget == exact.budget
    assert A.weighted_loss([a, b], exact.ranks) == pytest.approx(0.30)  # greedy's 0.45


def test_keeps_the_greedy_ranks_where_nothing_is_better():
    layers = [A.LayerSpec(n, 32, 32, torch.linspace(1, 0, 33)) for n in "abc"]  # linear: every split ties
    budget = A.min_budget(layers, 8) + 2 * 8 * 64
    greedy = A.global_greedy(layers, budget, 8)
    assert exact_allocation(layers, budget, 8) == greedy
    zero = {s.name: 0.0 for s in layers}  # nothing to lower
    assert exact_allocation(layers, budget, 8, zero) == A.global_greedy(layers, budget, 8, zero)
    assert exact_allocation([], 0, 8).ranks == {}


def test_refuses_what_greedy_refuses_and_gives_up_past_its_work_limit():
    layers = [A.LayerSpec(n, 32, 32, torch.linspace(1, 0, 33) ** 2) for n in "abcd"]
    floor = A.min_budget(layers, 4)
    with pytest.raises(ValueError, match="below the minimum"):
        exact_allocation(layers, floor - 1, 4)
    assert exact_allocation(layers, floor + 3 * 4 * 64, 4, max_work=3) is None  # 4 options
    assert exact_allocation(layers, floor + 3 * 4 * 64, 4, max_work=None) is not None


def test_options_and_their_hull():
    s = A.LayerSpec("a", 16, 32, torch.tensor([1.0] + [0.9, 0.5, 0.45, 0.1, 0.05] + [0.05] * 11))
    opt = layer_options(s, 2.0, 1, (1, 20))
    assert opt.ranks == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, A.DENSE]  # breakeven 11: 10 and dense
    assert opt.costs.tolist() == [s.params(r) for r in opt.ranks]
    assert opt.losses.tolist() == pytest.approx([2 * s.loss(r) for r in opt.ranks])
    costs, gains = hull_segments(opt)  # ranks 1, 2, 4, 5, dense: 3 lies above the chord 2 -> 4, 6-10 flat
    assert costs.tolist() == [48, 96, 48, 272] and gains.tolist() == pytest.approx([0.8, 0.8, 0.1, 0.1])


def test_budget_it_leaves_is_budget_no_move_could_use():
    """The svd pass warns of an unspent budget (alloc.idle_budget: some move still fits) saying no
    larger rank lowers any target's predicted error: of an exact allocation that holds by optimality."""
    rng = np.random.default_rng(1)
    idle = 0
    for case in range(150):
        layers = [random_layer(rng, f"l{i}") for i in range(int(rng.integers(1, 5)))]
        weights = {s.name: float(rng.exponential()) for s in layers}
        floor, dense = A.min_budget(layers, 2), A.dense_params(layers)
        exact = exact_allocation(layers, int(rng.integers(floor, dense + 1)), 2, weights)
        left = exact.budget - exact.spent
        idle += A.idle_budget(layers, exact, 2) > 0
        here = A.weighted_loss(layers, exact.ranks, weights)
        for s in layers:
            for r in choices(s, 2, None):
                moved = {**exact.ranks, s.name: r}
                if s.params(r) - s.params(exact.ranks[s.name]) <= left:
                    assert A.weighted_loss(layers, moved, weights) >= here * (1 - 1e-8) - 1e-15
    assert idle > 5
