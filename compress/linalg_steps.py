"""Weight updates before a factorization, as pure tensor functions (the math of `svd_compensate` and
the svd pass's asymmetric fit; notation as in `compress.linalg`).

- `kfac_step`: the Newton step of a Kronecker-factored (K-FAC) quadratic model of the prediction
  loss in a layer's weight change, which undoes to first order the error left upstream;
- `asymmetric_step`: the change that maps the inputs the student feeds a layer to the outputs the
  uncompressed model gives it (least squares, ridge-damped);
- `centered_asymmetric_step`: the same for a centered target (free bias: an affine fit), with the
  output offset its bias takes;
- `asymmetric_excess`: how far a factorization is from the rank-r optimum of that fit without the
  damping (the closed form the report compares against).

Everything is computed in float64 on the inputs' device.
"""

from __future__ import annotations

import torch

from compress.errors import NumericError
from compress.linalg_checks import F64, eigh_desc, layer_label, rank_tol, sym, to64


def kfac_step(moment: torch.Tensor, gram: torch.Tensor, out_inverse: torch.Tensor,
              gram_damping: float = 1e-2, name: str | None = None) -> torch.Tensor:
    """Δ (out, in) = −A⁻¹ M (G + λI)⁻¹: the minimizer of tr(Δᵀ A Δ G) + 2 tr(Δᵀ M), a Kronecker
    (K-FAC) quadratic model of a loss in the weight change Δ, given the model's gradient M (out, in),
    the inverse output curvature A⁻¹ (out, out) and the input Gram G (in, in).
    λ = gram_damping · mean eigenvalue of G keeps directions the inputs barely excite near Δ = 0."""
    m = to64(moment, "gradient", name)  # (out, in)
    g = sym(to64(gram, "gram", name))  # (in, in)
    a_inv = to64(out_inverse, "inverse curvature", name)  # (out, out)
    if g.shape != (m.shape[1], m.shape[1]) or a_inv.shape != (m.shape[0], m.shape[0]):
        raise ValueError(f"{layer_label(name)}: gradient {tuple(m.shape)}, Gram {tuple(g.shape)} and inverse "
                         f"curvature {tuple(a_inv.shape)} do not fit together")
    step = -(a_inv @ _damped_solve(m, g, gram_damping, "gram_damping", "K-FAC step", name))
    if not torch.isfinite(step).all():
        raise NumericError(f"{layer_label(name)}: non-finite K-FAC step")
    return step


def _damped_solve(m: torch.Tensor, g: torch.Tensor, damping: float, key: str, what: str,
                  name: str | None) -> torch.Tensor:
    """M (G + λI)⁻¹ (rows of M, G symmetric), λ = damping · mean eigenvalue of G; zeros when the
    inputs carry no energy (no direction to move in). key: the damping's argument name, for errors."""
    if damping <= 0:
        raise ValueError(f"{key} must be > 0, got {damping}")
    lam = damping * float(torch.diagonal(g).sum()) / g.shape[0]
    if lam <= 0:
        return torch.zeros_like(m)
    eye = torch.eye(g.shape[0], dtype=F64, device=g.device)
    try:
        return torch.linalg.solve(g + lam * eye, m.T).T
    except RuntimeError as exc:
        raise NumericError(f"{layer_label(name)}: the {what}'s solve failed ({exc})") from exc


def asymmetric_step(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, damping: float = 1e-2,
                    name: str | None = None) -> torch.Tensor:
    """Δ (out, in) = W (C − G)(G + λI)⁻¹ with G = Σ x̃ x̃ᵀ the student's input Gram and C = Σ x x̃ᵀ
    the cross term of the reference inputs x (the uncompressed model's) with the student's x̃.
    W + Δ minimizes Σ ‖W′ x̃ − W x‖² + λ ‖W′ − W‖²_F: the map that best gives the reference's
    outputs from the inputs the student actually feeds the layer (asymmetric calibration, as GPTAQ
    does for quantization). Whitened truncation of W + Δ on G is then the rank-r optimum of the first
    term (up to λ). C = G (no upstream change) gives Δ = 0."""
    w = to64(weight, "weight", name)  # (out, in)
    g = sym(to64(gram, "gram", name))  # (in, in)
    c = to64(cross, "cross term", name)  # (in, in)
    if g.shape != (w.shape[1], w.shape[1]) or c.shape != g.shape:
        raise ValueError(f"{layer_label(name)}: weight {tuple(w.shape)}, Gram {tuple(g.shape)} and cross term "
                         f"{tuple(c.shape)} do not fit together")
    step = _damped_solve(w @ (c - g), g, damping, "damping", "asymmetric step", name)
    if not torch.isfinite(step).all():
        raise NumericError(f"{layer_label(name)}: non-finite asymmetric step")
    return step


def centered_asymmetric_step(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
                             total: torch.Tensor, ref_total: torch.Tensor, rows: int,
                             damping: float = 1e-2, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ (out, in), offset (out,)): `asymmetric_step` with a free bias. From the raw sums over n
    paired rows (G = Σ x̃ x̃ᵀ, C = Σ x x̃ᵀ, total = Σ x̃, ref_total = Σ x), the means μ̃, μ and the
    centered G_c = G − n μ̃μ̃ᵀ, C_c = C − n μ μ̃ᵀ:
        Δ = W (C_c − G_c)(G_c + λI)⁻¹,   offset = W μ − (W + Δ) μ̃,
    λ = damping · mean eigenvalue of G_c. x̃ ↦ (W + Δ) x̃ + offset minimizes
    Σ ‖A x̃ + a − W x‖² + λ ‖A − W‖²_F over A and a: the affine map that best gives the reference's
    outputs from the student's inputs. For any A the best a is W μ − A μ̃, and what is left is
    Σ ‖W (x − μ) − A (x̃ − μ̃)‖², so the rank-r optimum of the whole problem (up to λ) is the whitened
    truncation W' of W + Δ on G_c, with bias shift W μ − W' μ̃ = (W + Δ − W') μ̃ + offset."""
    g_c, c_c, mean, ref_mean = centered_moments(gram, cross, total, ref_total, rows, name)
    step = asymmetric_step(weight, g_c, c_c, damping, name)  # (out, in)
    w = to64(weight, "weight", name)
    offset = w @ ref_mean - (w + step) @ mean  # (out,)
    return step, offset


def centered_moments(gram: torch.Tensor, cross: torch.Tensor, total: torch.Tensor, ref_total: torch.Tensor,
                     rows: int, name: str | None = None):
    """(G_c, C_c, μ̃, μ) from the raw sums over n paired rows (see `centered_asymmetric_step`):
    G_c = G − n μ̃μ̃ᵀ (in, in), C_c = C − n μ μ̃ᵀ (in, in), the student's and the reference's means."""
    g = sym(to64(gram, "gram", name))  # (in, in)
    c = to64(cross, "cross term", name)  # (in, in)
    n = max(int(rows), 1)
    mean = to64(total, "input sum", name) / n  # (in,)
    ref_mean = to64(ref_total, "reference input sum", name) / n  # (in,)
    if mean.shape != (g.shape[0],) or ref_mean.shape != mean.shape:
        raise ValueError(f"{layer_label(name)}: Gram {tuple(g.shape)}, input sum {tuple(mean.shape)} and "
                         f"reference sum {tuple(ref_mean.shape)} do not fit together")
    g_c = g - n * torch.outer(mean, mean)  # Σ (x̃ − μ̃)(x̃ − μ̃)ᵀ
    c_c = c - n * torch.outer(ref_mean, mean)  # Σ (x − μ)(x̃ − μ̃)ᵀ
    return g_c, c_c, mean, ref_mean


def asymmetric_excess(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, approx: torch.Tensor,
                      rank: int, root: torch.Tensor | None = None, name: str | None = None) -> tuple[float, float]:
    """(excess, optimal) of `approx` A (out, in) as a fit to the reference's outputs, without damping.
    The fit's objective is J(A) = Σ ‖R (A x̃ − W x)‖² (R (out, out) an output weighting, identity
    when None); over G = Σ x̃ x̃ᵀ = Σᵢ λᵢ qᵢqᵢᵀ and C = Σ x x̃ᵀ,
        J(A) − min J = Σᵢ ‖R (√λᵢ A qᵢ − bᵢ)‖²,   bᵢ = W C qᵢ / √λᵢ,
    the unconstrained minimizer being W C G⁺ (the asymmetric step's limit as its damping → 0).
    excess: that for A; optimal: its minimum over rank-r A, Σ_{j > r} σⱼ² of [R bᵢ]ᵢ (the whitened
    truncation of W C G⁺). Directions of G at round-off level are left out: ‖C qᵢ‖ ≤ √λᵢ ‖X‖, so
    there bᵢ → 0 and both sides cost nothing; and bᵢ is stable as λᵢ → 0 since
    ‖(C − G) qᵢ‖ ≤ √λᵢ ‖X − X̃‖ (Cauchy–Schwarz). Centered targets pass G_c, C_c (`centered_moments`):
    with a free bias the best one is W μ − A μ̃, and what is left is this objective."""
    w = to64(weight, "weight", name)  # (out, in)
    g = sym(to64(gram, "gram", name))  # (in, in)
    c = to64(cross, "cross term", name)  # (in, in)
    a = to64(approx, "approximation", name)  # (out, in)
    if g.shape != (w.shape[1], w.shape[1]) or c.shape != g.shape or a.shape != w.shape:
        raise ValueError(f"{layer_label(name)}: weight {tuple(w.shape)}, Gram {tuple(g.shape)}, cross term "
                         f"{tuple(c.shape)} and approximation {tuple(a.shape)} do not fit together")
    vals, vecs = eigh_desc(g, "the student's input Gram", name)
    keep = vals > rank_tol(vals, g.shape[0])
    q, root_vals = vecs[:, keep], vals[keep].sqrt()  # (in, k), (k,)
    b = (w @ (c @ q)) / root_vals  # (out, k): W* G^{1/2} in the basis q
    fit = (a @ q) * root_vals  # (out, k): A G^{1/2}
    if root is not None:
        r = to64(root, "output weighting", name)  # (out, out)
        b, fit = r @ b, r @ fit
    s = torch.linalg.svdvals(b) if b.numel() else b.new_zeros(0)  # descending
    return float(((fit - b) ** 2).sum()), float((s[rank:] ** 2).sum())
