"""compress.linalg_steps on small matrices: each step is the minimizer it claims, damping, errors."""

import numpy as np
import pytest
import torch

from compress import linalg as L
from compress import linalg_steps as S
from compress.errors import NumericError
from tests.test_linalg import make_case


# ----------------------------------------------------------------------------- K-FAC step


def _kfac_case(out_f=6, in_f=9, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((out_f, out_f))
    a = a @ a.T + 0.1 * np.eye(out_f)  # output curvature (out, out), PD
    _, g = make_case(in_f, in_f, "anisotropic", seed=seed + 1)
    m = rng.standard_normal((out_f, in_f))
    return torch.tensor(a), g, torch.tensor(m)


def _quadratic(a, g, m, d):
    return float(torch.trace(d.T @ a @ d @ g) + 2 * torch.trace(d.T @ m))


def test_kfac_step_minimizes_the_kronecker_quadratic():
    a, g, m = _kfac_case()
    damping = 1e-9  # practically the undamped minimizer of tr(Δᵀ A Δ G) + 2 tr(Δᵀ M)
    step = S.kfac_step(m, g, torch.linalg.inv(a), gram_damping=damping)
    assert step.shape == m.shape
    torch.testing.assert_close(a @ step @ g, -m, rtol=0, atol=1e-5)  # the stationarity condition
    best = _quadratic(a, g, m, step)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = step + 1e-2 * torch.randn(step.shape, generator=gen, dtype=torch.float64)
        assert _quadratic(a, g, m, other) > best


def test_kfac_step_damping_shrinks_it_and_zero_inputs_give_zero():
    a, g, m = _kfac_case()
    inv = torch.linalg.inv(a)
    small, large = (S.kfac_step(m, g, inv, gram_damping=d).norm() for d in (1e-6, 1.0))
    assert large < small
    assert torch.count_nonzero(S.kfac_step(m, torch.zeros_like(g), inv)) == 0


def test_kfac_step_errors():
    a, g, m = _kfac_case()
    with pytest.raises(ValueError, match="do not fit"):
        S.kfac_step(m, g[:-1, :-1], torch.linalg.inv(a))
    with pytest.raises(ValueError, match="gram_damping"):
        S.kfac_step(m, g, torch.linalg.inv(a), gram_damping=0.0)
    with pytest.raises(NumericError, match="layer 'x'"):
        S.kfac_step(m * float("nan"), g, torch.linalg.inv(a), name="x")


def _asymmetric_case(out_f=12, in_f=10, n=400, seed=0):
    """Reference inputs X (n, in), student inputs X̃ = X + correlated noise, weight W (out, in)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_f, generator=gen, dtype=torch.float64) @ torch.diag(torch.logspace(0, -2, in_f, dtype=torch.float64))
    x_s = x + 0.05 * x @ torch.randn(in_f, in_f, generator=gen, dtype=torch.float64)
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    return x, x_s, w


def test_asymmetric_step_gives_the_least_squares_map():
    x, x_s, w = _asymmetric_case()
    step = S.asymmetric_step(w, x_s.T @ x_s, x.T @ x_s, damping=1e-12)
    lstsq = torch.linalg.lstsq(x_s, x @ w.T).solution.T  # argmin ‖X̃ W′ᵀ − X Wᵀ‖
    torch.testing.assert_close(w + step, lstsq, rtol=0, atol=1e-6)
    # no upstream change (C = G): no step
    g = x.T @ x
    assert float(S.asymmetric_step(w, g, g).abs().max()) < 1e-12


def test_asymmetric_target_lowers_the_fit_to_the_reference_at_every_rank():
    """Whitened truncation of W + Δ on the student's Gram is the rank-r optimum of ‖X̃ W′ᵀ − X Wᵀ‖
    (the residual of the least-squares map plus the curve's tail); W's own truncation is not."""
    x, x_s, w = _asymmetric_case()
    g = x_s.T @ x_s
    target = w + S.asymmetric_step(w, g, x.T @ x_s, damping=1e-12)
    residual = float(((x_s @ target.T - x @ w.T) ** 2).sum())
    for rank in (2, 5, 8):
        fits = []
        for weight in (target, w):
            f = L.factorize(weight, g, rank)
            fits.append(float(((x_s @ (f.up @ f.down).T - x @ w.T) ** 2).sum()))
        optimum = residual + L.optimal_loss(target, g, rank)
        assert fits[0] == pytest.approx(optimum, rel=1e-6)
        assert fits[0] < fits[1]


def test_asymmetric_step_errors():
    x, x_s, w = _asymmetric_case()
    g = x_s.T @ x_s
    with pytest.raises(ValueError, match="do not fit"):
        S.asymmetric_step(w, g, g[:-1, :-1])
    with pytest.raises(ValueError, match="damping"):
        S.asymmetric_step(w, g, x.T @ x_s, damping=0.0)
    with pytest.raises(NumericError, match="layer 'x'"):
        S.asymmetric_step(w * float("nan"), g, x.T @ x_s, name="x")
