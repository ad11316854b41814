"""compress.alloc: budgets, ratios, energy rule, breakeven, greedy vs uniform, determinism."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress import alloc as A
from compress import linalg as L
from compress.alloc_sensitivity import sensitivity_weight
from compress.linalg_params import breakeven_rank


def spec(name, out_f, in_f, decay=0.05, weight=1.0, role=None, bias=True):
    """A layer whose per-direction energies decay like exp(-decay·i); normalized loss curve."""
    k = min(out_f, in_f)
    energies = np.exp(-decay * np.arange(k))
    curve = np.append(np.cumsum(energies[::-1])[::-1], 0.0)
    return A.LayerSpec(name, out_f, in_f, torch.tensor(curve / curve[0]), weight, bias, role)


LAYERS = [spec("attn.to_q", 128, 128, 0.05, role="attn"), spec("attn.to_out", 128, 128, 0.02, role="attn"),
          spec("ff.up", 512, 128, 0.01, role="mlp"), spec("ff.down", 128, 512, 0.1, role="mlp"),
          spec("adaln", 768, 128, 0.2, role="adaln")]


def test_uniform_matches_the_ratio():
    for ratio in (0.25, 0.5):
        alloc = A.uniform(LAYERS, ratio, multiple=16)
        for s in LAYERS:
            r = alloc.ranks[s.name]
            m, n = s.out_features, s.in_features
            assert r % 16 == 0
            kept = r * (m + n) / (m * n)
            assert abs(kept - ratio) <= 8 * (m + n) / (m * n)  # within half a multiple
        assert alloc.spent == sum(s.params(alloc.ranks[s.name]) for s in LAYERS)
    assert all(r is A.DENSE for r in A.uniform(LAYERS, 1.2).ranks.values())


def test_per_role():
    alloc = A.per_role(LAYERS, {"attn": 0.5, "mlp": 0.25, "adaln": None}, multiple=16)
    assert alloc.ranks["attn.to_q"] == 32  # 0.5 · 128·128/256
    assert alloc.ranks["ff.up"] == 32  # 0.25 · 512·128/640 = 25.6, nearest multiple of 16
    assert alloc.ranks["adaln"] is A.DENSE
    with pytest.raises(ValueError, match="adaln.*role"):
        A.per_role(LAYERS, {"attn": 0.5, "mlp": 0.25})


def test_energy_picks_the_smallest_rank():
    s = LAYERS[0]
    curve = s.curve.numpy()
    for fraction in (0.3, 0.5, 0.9):
        r = A.energy_rank(s, fraction, multiple=1)
        assert curve[r] <= 1 - fraction < curve[r - 1]
        r16 = A.energy_rank(s, fraction, multiple=16)
        assert r16 % 16 == 0 and curve[r16] <= 1 - fraction and r16 - 16 < r
    assert A.energy_rank(s, 1.0, multiple=16) is A.DENSE  # full energy needs full rank: no saving
    alloc = A.energy(LAYERS, 0.5, multiple=16)
    assert all(r is A.DENSE or 1 - LAYERS[i].loss(r) >= 0.5 for i, r in enumerate(alloc.ranks.values()))


def test_breakeven_respected_everywhere():
    budget = A.dense_params(LAYERS)
    for alloc in (A.uniform(LAYERS, 0.9), A.energy(LAYERS, 0.999), A.global_greedy(LAYERS, budget // 2),
                  A.global_greedy(LAYERS, budget)):
        for s in LAYERS:
            r = alloc.ranks[s.name]
            assert r is A.DENSE or r < breakeven_rank(s.out_features, s.in_features)
    # with the whole dense budget, every layer that loses anything goes dense
    assert all(r is A.DENSE for r in A.global_greedy(LAYERS, budget).ranks.values())


def test_greedy_switches_to_dense_when_that_is_the_best_buy():
    layers = [spec("a", 64, 64, 0.0), spec("b", 64, 64, 0.5)]  # "a": flat spectrum, low rank barely helps
    start = sum(s.params(16) for s in layers)
    extra = layers[0].params(A.DENSE) - layers[0].params(16)
    alloc = A.global_greedy(layers, start + extra, multiple=16, weights={"a": 10.0, "b": 1.0})
    assert alloc.ranks["a"] is A.DENSE and alloc.spent == start + extra


def test_global_greedy_beats_uniform_with_sensitivity_weights():
    # the same spectra, but one layer matters far more for the final prediction
    layers = [spec(f"l{i}", 128, 128, 0.03, weight=(20.0 if i == 0 else 1.0)) for i in range(4)]
    uni = A.uniform(layers, 0.5, multiple=16)
    greedy = A.global_greedy(layers, uni.spent, multiple=16)
    assert greedy.spent <= uni.spent
    loss_uni, loss_greedy = A.weighted_loss(layers, uni.ranks), A.weighted_loss(layers, greedy.ranks)
    assert loss_greedy < 0.8 * loss_uni
    assert greedy.ranks["l0"] is A.DENSE or greedy.ranks["l0"] > uni.ranks["l0"]
    # unweighted, identical layers: greedy has nothing to exploit and ends up uniform
    flat = [spec(f"l{i}", 128, 128, 0.03) for i in range(4)]
    assert A.global_greedy(flat, uni.spent, 16).ranks == A.uniform(flat, 0.5, 16).ranks


def test_weights_argument_overrides_spec_weights():
    layers = [spec("a", 128, 128, 0.03), spec("b", 128, 128, 0.03)]
    budget = A.uniform(layers, 0.5).spent
    alloc = A.global_greedy(layers, budget, weights={"a": sensitivity_weight(0.5, 0.1)})
    assert alloc.ranks["a"] > alloc.ranks["b"]


def test_a_ratio_of_one_keeps_a_layer_dense_whatever_rounding_gives():
    """ratio 1.0 on the toy PixArt's 512x128 MLP asks rank 102.4 (its break-even m·n/(m+n)): rounded to
    the nearest multiple of 16 it was 96, below break-even, so a ratio that keeps everything factorized
    the layer (94% of its parameters). A ratio below 1 still rounds to the nearest multiple."""
    mlp = A.LayerSpec("ff.net.0.proj", 512, 128, torch.zeros(129))
    assert A.ratio_rank(mlp, 1.0, 16) is A.DENSE and A.ratio_rank(mlp, 1.0, 1) is A.DENSE
    assert A.ratio_rank(mlp, 1.0, 8) is A.DENSE and A.ratio_rank(mlp, 1.5, 16) is A.DENSE
    assert A.ratio_rank(mlp, 0.99, 16) == 96  # asks fewer than dense: 101.4 rounds to the nearest multiple
    assert A.uniform([mlp], 1.0, 16).spent == mlp.params(A.DENSE)
    assert A.per_role([A.LayerSpec("a", 512, 128, torch.zeros(129), role="mlp")], {"mlp": 1.0}, 16).ranks == {
        "a": A.DENSE}


def test_bad_budgets_and_curves():
    with pytest.raises(ValueError, match="below the minimum"):
        A.global_greedy(LAYERS, A.min_budget(LAYERS, 16) - 1)
    A.global_greedy(LAYERS, A.min_budget(LAYERS, 16))
    bad = A.LayerSpec("x", 8, 4, torch.zeros(3))
    with pytest.raises(ValueError, match="x: curve"):
        A.global_greedy([bad], 10**6, multiple=1)


def test_curves_from_linalg_feed_the_allocator():
    rng = np.random.default_rng(0)
    layers = []
    for i, (m, n) in enumerate([(64, 48), (48, 64), (96, 32)]):
        w = torch.tensor(rng.standard_normal((m, n)))
        x = torch.tensor(rng.standard_normal((200, n)) * np.logspace(0, -2, n))
        curve = L.normalized_curve(L.loss_curve(w, x.T @ x))
        layers.append(A.LayerSpec(f"l{i}", m, n, curve))
    uni = A.uniform(layers, 0.5, 8)
    alloc = A.global_greedy(layers, uni.spent, multiple=8)
    assert alloc.spent <= uni.spent
    assert A.weighted_loss(layers, alloc.ranks) <= A.weighted_loss(layers, uni.ranks)
    assert A.global_greedy(layers, A.budget_for_ratio(layers, 0.5), 8).spent <= A.budget_for_ratio(layers, 0.5)


# ----------------------------------------------------------------------------- properties


@st.composite
def problems(draw):
    n = draw(st.integers(1, 6))
    layers = []
    for i in range(n):
        m, k = draw(st.sampled_from([8, 16, 24, 40])), draw(st.sampled_from([8, 16, 24, 40]))
        decay = draw(st.floats(0.0, 1.0))
        layers.append(spec(f"l{i}", m, k, decay, weight=draw(st.sampled_from([0.0, 0.5, 1.0, 7.0])),
                           bias=draw(st.booleans())))
    multiple = draw(st.sampled_from([1, 4, 8]))
    lo = A.min_budget(layers, multiple)
    budget = draw(st.integers(lo, A.dense_params(layers) + 50))
    return layers, budget, multiple


@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_greedy_budget_exact_filled_and_deterministic(problem):
    layers, budget, multiple = problem
    alloc = A.global_greedy(layers, budget, multiple)
    assert alloc.spent <= budget
    assert alloc.spent == sum(s.params(alloc.ranks[s.name]) for s in layers)
    assert A.global_greedy(layers, budget, multiple) == alloc  # deterministic
    remaining = budget - alloc.spent
    for s in layers:  # stopped only because no useful move fits
        st_ = A._Layer(s, s.weight, multiple)
        st_.rank = alloc.ranks[s.name]
        assert st_.best_move(remaining) is None
        r = alloc.ranks[s.name]
        assert r is A.DENSE or (r % multiple == 0 and r < s.breakeven)


def test_trust_ranges_bound_the_greedy():
    """One layer matters far more: unbounded, it goes dense and the others drop to half their
    uniform rank; with a trust factor of 1.5 every rank stays within 1.5x of uniform (dense is out of
    reach: 48 < the break-even 64), and the bounded allocation still beats uniform."""
    layers = [spec(f"l{i}", 128, 128, 0.03, weight=(50.0 if i == 0 else 1.0)) for i in range(3)]
    uni = A.uniform(layers, 0.5, multiple=4)
    assert set(uni.ranks.values()) == {32}
    free = A.global_greedy(layers, uni.spent, multiple=4)
    assert free.ranks == {"l0": A.DENSE, "l1": 16, "l2": 16}
    ranges = A.trust_ranges(layers, 0.5, 4, 1.5)
    assert ranges == {f"l{i}": (22, 48) for i in range(3)}
    bounded = A.global_greedy(layers, uni.spent, multiple=4, ranges=ranges)
    assert all(r is not A.DENSE and 22 <= r <= 48 for r in bounded.ranks.values())
    assert bounded.ranks["l0"] == 48 and bounded.spent <= uni.spent
    assert A.weighted_loss(layers, bounded.ranks) < A.weighted_loss(layers, uni.ranks)
    # a factor of 2 reaches the break-even rank, so the free answer is allowed again
    assert A.global_greedy(layers, uni.spent, 4, ranges=A.trust_ranges(layers, 0.5, 4, 2.0)) == free
    assert A.min_budget(layers, 4, ranges) == sum(s.params(24) for s in layers)
    with pytest.raises(ValueError, match="trust factor"):
        A.trust_ranges(layers, 0.5, 4, 0.5)


@pytest.mark.parametrize("multiple", [1, 16])
def test_no_rule_gives_rank_zero(multiple):
    """LowRankLinear refuses rank 0 (a layer that keeps only its bias); every rule gives ≥ 1 or DENSE,
    even for tiny layers, tiny ratios and a zero energy fraction."""
    tiny = [spec(f"l{o}x{i}", o, i, 0.5) for o, i in [(1, 1), (1, 7), (7, 1), (2, 2), (3, 40), (40, 3), (64, 64)]]
    allocs = [A.uniform(tiny, 1e-9, multiple), A.energy(tiny, 0.0, multiple),
              A.per_role(tiny, {None: 1e-9}, multiple),
              A.global_greedy(tiny, A.min_budget(tiny, multiple), multiple)]
    ranks = [r for alloc in allocs for r in alloc.ranks.values()]
    assert all(r is A.DENSE or r >= 1 for r in ranks)
    assert any(r is not A.DENSE for r in ranks)  # the check saw real low ranks, not only DENSE


def test_idle_budget_is_what_a_stalled_greedy_left_though_moves_fit():
    """The greedy stops when no move lowers the loss: curves flat past the directions the calibration
    spans (toy PixArt on 1 prompt x 1 timestep spent 0.365 of its targets where 0.5 was asked).
    idle_budget says how much was left so; a budget too small for any further move leaves none idle."""
    from compress.alloc import LayerSpec, budget_for_ratio, global_greedy, idle_budget

    flat = [1.0, 0.5] + [0.0] * 63  # 64 x 64: rank 1 keeps all the loss there is to keep
    specs = [LayerSpec(f"l{i}", 64, 64, flat, bias=False) for i in range(3)]
    budget = budget_for_ratio(specs, 0.5)
    alloc = global_greedy(specs, budget, multiple=4)
    assert set(alloc.ranks.values()) == {4}  # every layer stays at its first rank: nothing gains more
    assert idle_budget(specs, alloc, 4) == budget - alloc.spent
    decaying = [LayerSpec(f"l{i}", 64, 64, torch.linspace(1, 0, 65), bias=False) for i in range(3)]
    full = global_greedy(decaying, budget, multiple=4)
    assert idle_budget(decaying, full, 4) == 0  # what is left buys no move


# shapes (out, in) of the targets the budget checks below scan: a small target's one-multiple floor
# beside a wide one (R1's two layers), toy PixArt's block shapes, odd sizes whose break-even rank is a few
# multiples, and a target no rank of 16 or more saves on (dense at every ratio) beside one that saves
BUDGET_SHAPES = [[(64, 64), (1152, 1152)], [(128, 128), (128, 128), (512, 128), (128, 512)],
                 [(40, 40), (96, 32), (24, 48), (256, 64)], [(16, 16384), (512, 512)]]


def _global_accepts(layers, ratio: float, multiple: int, factor) -> bool:
    ranges = A.trust_ranges(layers, ratio, multiple, factor) if factor else None
    return A.global_budget(layers, ratio, multiple, ranges, factor) is not None


@pytest.mark.parametrize("factor", [1, 1.1, 2, None])
@pytest.mark.parametrize("multiple", [4, 8, 16, 64])
@pytest.mark.parametrize("shapes", BUDGET_SHAPES)
def test_the_ratios_the_global_budget_accepts_are_an_interval_up_to_1(shapes, multiple, factor):
    """The check accepted where every target at its lowest rank fit the ratio's budget or where its floor
    before rounding did, giving credit for ranks rounded down: not monotone in the ratio (64×64 beside
    1152×1152, multiple 8, factor 1: 0.02 accepted, higher ratios refused, and ratio_that_fits, bisecting
    as if monotone, said 0.26). Now: the ratios accepted are those from ratio_that_fits up to 1; it is the
    lowest in steps of 0.001, above every ratio refused; the budget is never above what the ratio or
    uniform keeps; at factor 1, where every target's one multiple keeps no more than the ratio of its
    parameters and saves (uniform's ranks are then above the ratio by rounding alone), it is accepted."""
    layers = [A.LayerSpec(f"t{i}", m, n, [0.0] * (min(m, n) + 1)) for i, (m, n) in enumerate(shapes)]
    ratios = [k / 1000 for k in range(10, 995, 5)]
    ok = [_global_accepts(layers, r, multiple, factor) for r in ratios]
    first = ok.index(True) if True in ok else len(ok)
    assert ok == [False] * first + [True] * (len(ok) - first), [r for r, a in zip(ratios, ok) if a][:5]
    assert _global_accepts(layers, 1.0, multiple, factor)
    fits = A.ratio_that_fits(layers, multiple, factor)
    if fits is None:
        assert not any(_global_accepts(layers, k / 1000, multiple, factor) for k in range(1, 1000))
    else:
        assert _global_accepts(layers, fits, multiple, factor) and fits > max(ratios[:first], default=0)
        assert fits == 0.001 or not _global_accepts(layers, round(fits - 0.001, 3), multiple, factor)
    for r, accepted in zip(ratios, ok):
        if accepted:
            ranges = A.trust_ranges(layers, r, multiple, factor) if factor else None
            budget = A.global_budget(layers, r, multiple, ranges, factor)
            assert budget <= max(A.budget_for_ratio(layers, r), A.uniform(layers, r, multiple).spent)
        elif factor == 1:  # some target's one multiple keeps more than the ratio of it, or none saves
            assert not all(s.params(multiple) <= r * s.params(A.DENSE) and multiple < s.breakeven for s in layers), r
