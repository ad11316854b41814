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


# ----------------------------------------------------------------------------- centered (affine) asymmetric fit


def _offset_case(seed=0, out_f=12, in_f=10, n=400):
    """As `_asymmetric_case`, with means: both streams off zero, the student's mean moved from the
    reference's (an upstream error in the mean), channel scales over two decades."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    scale = torch.diag(torch.logspace(0, -2, in_f, dtype=f64))
    x = (torch.randn(n, in_f, generator=gen, dtype=f64) + 2 * torch.randn(in_f, generator=gen, dtype=f64)) @ scale
    x_s = x + 0.05 * x @ torch.randn(in_f, in_f, generator=gen, dtype=f64) \
        + 0.1 * torch.randn(in_f, generator=gen, dtype=f64) @ scale
    w = torch.randn(out_f, in_f, generator=gen, dtype=f64)
    return x, x_s, w


def _best_affine_fit(x, x_s, w, rank):
    """min over rank-r A and b of Σ ‖W x − (A x̃ + b)‖², by brute force on the rows: least squares of
    the centered reference outputs on the centered student inputs, then the best rank-r part of the
    fitted outputs (reduced-rank regression: Eckart-Young on the fitted values)."""
    y = x @ w.T
    y, x_s = y - y.mean(0), x_s - x_s.mean(0)
    fitted = x_s @ torch.linalg.lstsq(x_s, y).solution  # (n, out)
    u, s, vh = torch.linalg.svd(fitted, full_matrices=False)
    return float(((y - (u[:, :rank] * s[:rank]) @ vh[:rank]) ** 2).sum())


def _centered_layer(x, x_s, w, rank, step, offset):
    """(Σ ‖W x − (W' x̃ + shift)‖² of the layer the pass makes, the pass's loss of W + step): W' the
    whitened truncation of W + step on the student's centered Gram, shift (W + step − W') μ̃ + offset."""
    mean = x_s.mean(0)
    g_c = (x_s - mean).T @ (x_s - mean)
    f = L.factorize(w + step, g_c, rank)
    approx = f.up @ f.down
    shift = (w + step - approx) @ mean + offset
    return float(((x @ w.T - x_s @ approx.T - shift) ** 2).sum()), f.loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centered_asymmetric_fit_reaches_the_affine_optimum_at_every_rank(seed):
    """Truncating W + Δ on the centered Gram with the bias shift (W + Δ − W')μ̃ + offset is the rank-r
    optimum of the reference fit with a free bias, to round-off; the linear step (uncentered C, G)
    under the same centered truncation, as the pass did before the reference's mean was kept, is not."""
    x, x_s, w = _offset_case(seed)
    n = x.shape[0]
    g, c = x_s.T @ x_s, x.T @ x_s
    step, offset = S.centered_asymmetric_step(w, g, c, x_s.sum(0), x.sum(0), n, damping=1e-12)
    linear = S.asymmetric_step(w, g, c, damping=1e-12)
    y = x @ w.T - (x @ w.T).mean(0)
    # the residual no W' removes: the full-rank affine fit's
    residual = float(((y - (x_s - x_s.mean(0)) @ (w + step).T) ** 2).sum())
    worst_before = 1.0
    for rank in (2, 4, 6, 8):
        optimum = _best_affine_fit(x, x_s, w, rank)
        fit, loss = _centered_layer(x, x_s, w, rank, step, offset)
        assert fit == pytest.approx(optimum, rel=1e-9), rank
        assert residual + loss == pytest.approx(fit, rel=1e-9), rank  # the loss the pass reports
        assert residual + L.optimal_loss(w + step, (x_s - x_s.mean(0)).T @ (x_s - x_s.mean(0)), rank) \
            == pytest.approx(optimum, rel=1e-9), rank
        worst_before = max(worst_before, _centered_layer(x, x_s, w, rank, linear, 0.0)[0] / optimum)
    assert worst_before > 1.02


def test_centered_asymmetric_step_is_the_affine_least_squares_map():
    x, x_s, w = _offset_case()
    step, offset = S.centered_asymmetric_step(w, x_s.T @ x_s, x.T @ x_s, x_s.sum(0), x.sum(0), x.shape[0],
                                              damping=1e-12)
    ones = torch.ones(x.shape[0], 1, dtype=torch.float64)
    solution = torch.linalg.lstsq(torch.cat([x_s, ones], 1), x @ w.T).solution.T  # (out, in + 1)
    torch.testing.assert_close(w + step, solution[:, :-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(offset, solution[:, -1], rtol=0, atol=1e-6)
    # no upstream change: no step, no offset
    g, total = x.T @ x, x.sum(0)
    step, offset = S.centered_asymmetric_step(w, g, g, total, total, x.shape[0])
    assert float(step.abs().max()) < 1e-12 and float(offset.abs().max()) < 1e-12


def test_centered_asymmetric_step_damps_toward_w_on_the_centered_gram():
    """λ = damping · mean eigenvalue of G_c: the ridge minimizer of
    Σ ‖A(x̃ − μ̃) − W(x − μ)‖² + λ‖A − W‖² (solved here from the rows)."""
    x, x_s, w = _offset_case()
    xc, x_sc = x - x.mean(0), x_s - x_s.mean(0)
    g_c = x_sc.T @ x_sc
    lam = 0.1 * float(torch.diagonal(g_c).sum()) / g_c.shape[0]
    step, offset = S.centered_asymmetric_step(w, x_s.T @ x_s, x.T @ x_s, x_s.sum(0), x.sum(0), x.shape[0],
                                              damping=0.1)
    eye = torch.eye(g_c.shape[0], dtype=torch.float64)
    ridge = torch.linalg.solve(g_c + lam * eye, (w @ (xc.T @ x_sc) + lam * w).T).T
    torch.testing.assert_close(w + step, ridge, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(offset, w @ x.mean(0) - ridge @ x_s.mean(0), rtol=1e-9, atol=1e-9)


def test_centered_asymmetric_step_errors():
    x, x_s, w = _offset_case()
    g, c = x_s.T @ x_s, x.T @ x_s
    with pytest.raises(ValueError, match="do not fit"):
        S.centered_asymmetric_step(w, g, c, x_s.sum(0)[:-1], x.sum(0), x.shape[0])
    with pytest.raises(NumericError, match="layer 'x'"):
        S.centered_asymmetric_step(w, g, c, x_s.sum(0), x.sum(0) * float("nan"), x.shape[0], name="x")


# ----------------------------------------------------------------------------- how close to the undamped fit


def _fit(x, x_s, w, a, root=None):
    """Σ ‖R (A x̃ − W x)‖² over the rows, by brute force."""
    err = x_s @ a.T - x @ w.T  # (n, out)
    if root is not None:
        err = err @ root.T
    return float((err ** 2).sum())


def _reduced_rank_optimum(x, x_s, w, rank, root=None):
    """min over rank-r A of Σ ‖R (A x̃ − W x)‖², by brute force on the rows: least squares of the
    (weighted) reference outputs on the student inputs, then Eckart–Young on the fitted values."""
    y = x @ w.T if root is None else x @ w.T @ root.T  # (n, out)
    fitted = x_s @ torch.linalg.lstsq(x_s, y, driver="gelsd").solution  # (n, out)
    u, s, vh = torch.linalg.svd(fitted, full_matrices=False)
    return float(((y - (u[:, :rank] * s[:rank]) @ vh[:rank]) ** 2).sum()), float(((y - fitted) ** 2).sum())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("deficient", [False, True])
def test_asymmetric_excess_is_the_fit_above_its_minimum_and_its_rank_r_optimum(weighted, deficient):
    """excess = J(A) − min J for any A, and optimal = min over rank-r A of J − min J, both against
    brute-force least squares on the rows; also when the student's inputs span only part of the
    input space (rank-deficient G: those directions cost nothing) and with an output weighting R."""
    x, x_s, w = _asymmetric_case()
    if deficient:  # the student's inputs lose 4 of 10 directions (a removed channel upstream)
        x_s = x_s @ torch.diag(torch.tensor([1.0] * 6 + [0.0] * 4, dtype=torch.float64))
    gen = torch.Generator().manual_seed(7)
    root = torch.randn(w.shape[0], w.shape[0], generator=gen, dtype=torch.float64) + 4 * torch.eye(w.shape[0], dtype=torch.float64) \
        if weighted else None
    g, c = x_s.T @ x_s, x.T @ x_s
    for rank in (2, 5, 8):
        optimum, minimum = _reduced_rank_optimum(x, x_s, w, rank, root)
        f = L.factorize(w + S.asymmetric_step(w, g, c, damping=0.3), g, rank)
        for a in (w, f.up @ f.down):
            excess, optimal = S.asymmetric_excess(w, g, c, a, rank, root)
            assert excess == pytest.approx(_fit(x, x_s, w, a, root) - minimum, rel=1e-8, abs=1e-9 * minimum)
            assert optimal == pytest.approx(optimum - minimum, rel=1e-8)


def test_asymmetric_excess_tells_what_the_damping_costs():
    """The pass's factorization (whitened truncation of W + Δ on G) reaches the undamped optimum as
    the damping vanishes, and falls short of it by more the larger the damping; W's own truncation
    (no asymmetric step) is further still."""
    x, x_s, w = _asymmetric_case()
    g, c = x_s.T @ x_s, x.T @ x_s
    rank = 5
    ratios = []
    for damping in (1e-12, 1e-2, 1.0):
        f = L.factorize(w + S.asymmetric_step(w, g, c, damping=damping), g, rank)
        excess, optimal = S.asymmetric_excess(w, g, c, f.up @ f.down, rank)
        ratios.append(excess / optimal)
    f = L.factorize(w, g, rank)
    plain = S.asymmetric_excess(w, g, c, f.up @ f.down, rank)
    assert ratios[0] == pytest.approx(1.0, abs=1e-9)
    assert 1.0 < ratios[1] < ratios[2] < plain[0] / plain[1]


def test_asymmetric_excess_centered_is_the_affine_fit_above_its_minimum():
    """With G_c, C_c (`centered_moments`) the excess is that of the affine layer the pass makes
    (bias W μ − A μ̃): brute force against the rows' affine least squares."""
    x, x_s, w = _offset_case(seed=1)
    n = x.shape[0]
    g, c = x_s.T @ x_s, x.T @ x_s
    g_c, c_c, mean, ref_mean = S.centered_moments(g, c, x_s.sum(0), x.sum(0), n)
    step = S.asymmetric_step(w, g_c, c_c, damping=1e-2)
    rank = 4
    f = L.factorize(w + step, g_c, rank)
    a = f.up @ f.down
    affine = float(((x_s @ a.T + (w @ ref_mean - a @ mean) - x @ w.T) ** 2).sum())
    y, xc = x @ w.T - (x @ w.T).mean(0), x_s - mean
    minimum = float(((y - xc @ torch.linalg.lstsq(xc, y).solution) ** 2).sum())
    excess, optimal = S.asymmetric_excess(w, g_c, c_c, a, rank)
    assert excess == pytest.approx(affine - minimum, rel=1e-8)
    assert optimal == pytest.approx(_best_affine_fit(x, x_s, w, rank) - minimum, rel=1e-8)
    assert excess > optimal


def test_asymmetric_excess_errors():
    x, x_s, w = _asymmetric_case()
    g = x_s.T @ x_s
    with pytest.raises(ValueError, match="do not fit"):
        S.asymmetric_excess(w, g, x.T @ x_s, w[:, :-1], 2)
    with pytest.raises(NumericError, match="layer 'x'"):
        S.asymmetric_excess(w, g, x.T @ x_s, w * float("nan"), 2, name="x")
