"""compress.alloc_sensitivity: the sensitivity weight, the rank it is measured at, the error predicted against uniform."""

import numpy as np
import pytest
import torch

from compress import alloc as A
from compress import alloc_sensitivity as S
from tests.test_alloc import LAYERS, spec


def test_sensitivity_weight():
    """Squared final error per unit of normalized loss: weight·loss is the layer's squared error."""
    assert S.sensitivity_weight(0.006, 0.03) == pytest.approx(0.006**2 / 0.03)
    assert S.sensitivity_weight(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        S.sensitivity_weight(-1.0, 0.1)


def deficient(name, out_f, in_f, data_rank):
    """A layer whose inputs span `data_rank` dimensions: past that rank it loses only round-off."""
    energies = np.where(np.arange(min(out_f, in_f)) < data_rank, np.exp(-0.2 * np.arange(min(out_f, in_f))), 0.0)
    curve = np.append(np.cumsum(energies[::-1])[::-1], 0.0)
    return A.LayerSpec(name, out_f, in_f, torch.tensor(curve / curve[0] + 1e-16 * (curve == 0)))


def test_sensitivity_is_measured_where_the_layer_loses_something():
    """PixArt's caption k/v read a 13-dimensional masked caption: at their uniform rank 16 they lose
    round-off, and the prediction error over it was noise over a 1e-12 floor (weights 100x those
    measured at rank 8). They are measured at the highest allowed rank below that loses
    MEASURABLE_LOSS; a layer that loses something at its uniform rank is measured there."""
    s, full = deficient("caption.to_k", 128, 128, 13), spec("attn.to_q", 128, 128, 0.05)
    assert A.ratio_rank(s, 0.25, 8) == 16 and s.loss(16) < 1e-12 < S.MEASURABLE_LOSS < s.loss(8)
    assert S.measurement_rank(s, 0.25, 8, A.trust_ranges([s], 0.25, 8, 2.0)["caption.to_k"]) == 8
    assert S.measurement_rank(s, 0.25, 8, None) == 8  # no trust region: any multiple that saves
    assert S.measurement_rank(s, 0.25, 4, (12, 32)) == 12  # the lowest the trust region allows
    assert S.measurement_rank(s, 0.25, 4, None) == 12  # of 4, 8 and 12: the highest one below, not the lowest
    assert S.measurement_rank(full, 0.25, 8, (8, 32)) == 16  # loses something at uniform: there
    # nothing measurable within its range (its weighted losses are ~0 whatever the weight); no saving
    assert S.measurement_rank(deficient("tiny", 128, 128, 4), 0.25, 8, (8, 32)) is None
    assert S.measurement_rank(s, 1.2, 8, None) is None  # uniform rank past the break-even: dense


def test_error_vs_uniform_also_at_uniforms_parameter_count():
    """Uniform's per-layer rounding keeps fewer parameters than the global budget here: the
    allocation's predicted ratio to uniform is also given at uniform's own count, which is higher
    (fewer parameters, more loss), and that count beside it."""
    layers, weights = LAYERS[:4], {"attn.to_q": 3.0, "attn.to_out": 1.0, "ff.up": 0.5, "ff.down": 2.0}
    uni = A.uniform(layers, 0.35, 16)
    alloc = A.global_greedy(layers, A.budget_for_ratio(layers, 0.35), 16, weights)
    assert alloc.spent > uni.spent  # 54,144 against 50,048
    at_spent, equal, count = S.error_vs_uniform(layers, alloc.ranks, weights, 0.35, 16)
    base = A.weighted_loss(layers, uni.ranks, weights)
    assert count == uni.spent
    assert at_spent == pytest.approx((A.weighted_loss(layers, alloc.ranks, weights) / base) ** 0.5)
    same = A.global_greedy(layers, uni.spent, 16, weights)
    assert same.spent <= uni.spent
    assert equal == pytest.approx((A.weighted_loss(layers, same.ranks, weights) / base) ** 0.5)
    assert at_spent < equal < 1  # 0.573 and 0.681
    zero = {n: 0.0 for n in weights}  # no error model: no ratio
    assert S.error_vs_uniform(layers, alloc.ranks, zero, 0.35, 16) == (None, None, uni.spent)
