"""The math of low-rank compression, as pure tensor functions (DESIGN.md convention 2).

Notation: a linear layer y = W x with W (out, in); calibration inputs stacked as rows of X (n, in);
the input Gram G = Σ xᵀx = XᵀX (in, in); the output Gram H = Σ yᵀy = W G Wᵀ (out, out).
The loss of an approximation W' is the calibration output error ||(W − W')Xᵀ||²_F = tr(E G Eᵀ), E = W − W'.

Every method here produces W' = U_r U_rᵀ W for an orthonormal basis U (out, k) of the output space,
ordered by the method's priority; only the basis differs:
- ``svd``: left singular vectors of W (plain truncated SVD, blind to the data);
- ``asvd``: left singular vectors of W S with S a diagonal activation scaling (ASVD, Yuan et al. 2023);
- ``whitened``: eigenvectors of H = W G Wᵀ, the exact optimum of min_{rank W' ≤ r} tr(E G Eᵀ)
  (the truncation-aware whitening of SVD-LLM, Wang et al. 2024, in a form that needs no inverse of G).
Because W' is a left projection of W, the loss at rank r is the sum of the energies uᵢᵀ H uᵢ of the
dropped directions, so one decomposition gives the loss at every rank (`Decomposition.curve`).

Everything is computed in float64 on the inputs' device; no hooks, devices or progress bars here.
Parameter counts and rank rounding are in `compress.linalg_params`, the KD losses in `compress.kd_losses`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from compress.errors import NumericError
from compress.recipe_names import METHODS

BALANCES = ("sqrt", "orthonormal_up")
_F64 = torch.float64


@dataclass(frozen=True)
class Decomposition:
    """One layer's ordered output basis and per-direction energies, for any rank.

    basis: (out, k) orthonormal columns, most important first (k ≤ max_rank; directions with no
        energy under the calibration data may be left out and are filled in by `factors_from`).
    energies: (k,) eᵢ = uᵢᵀ H uᵢ ≥ 0, the calibration output energy a rank loses by dropping uᵢ.
    max_rank: min(out, in).
    """

    basis: torch.Tensor  # (out, k)
    energies: torch.Tensor  # (k,)
    max_rank: int
    method: str
    side: str  # "output" (eigh of H), "input" (eigh of G), or "weight" (SVD of W or W S)

    @property
    def curve(self) -> torch.Tensor:
        """Loss at every rank r = 0..max_rank: curve[r] = Σ_{i ≥ r} eᵢ (suffix sums, no cancellation)."""
        padded = torch.zeros(self.max_rank + 1, dtype=_F64, device=self.energies.device)
        padded[: self.energies.numel()] = self.energies
        return padded.flip(0).cumsum(0).flip(0)


@dataclass(frozen=True)
class Factorization:
    """W ≈ up @ down. up (out, r), down (r, in); loss = tr(E G Eᵀ) on the calibration data
    (for whitened: the sum of the dropped eigenvalues, equal up to round-off);
    total = the layer's calibration output energy (curve[0]), so loss / total is the normalized loss."""

    up: torch.Tensor  # (out, r)
    down: torch.Tensor  # (r, in)
    loss: float
    total: float


# ----------------------------------------------------------------------------- checks and helpers


def _label(name: str | None) -> str:
    return f"layer {name!r}" if name else "unnamed layer"


def _to64(t: torch.Tensor, what: str, name: str | None) -> torch.Tensor:
    """float64 copy of t; NaN/Inf is a NumericError naming the layer."""
    t = t.detach().to(_F64)
    if not torch.isfinite(t).all():
        raise NumericError(f"{_label(name)}: {what} contains NaN or Inf")
    return t


def _held(t: torch.Tensor, what: str, name: str | None) -> torch.Tensor:
    """t, computed in float64 from finite weights and Gram; Inf/NaN there is their product overflowing
    float64 (a weight ~1e200), said so (eigh said 'failed to converge ... ill-conditioned')."""
    if not torch.isfinite(t).all():
        raise NumericError(f"{_label(name)}: float64 overflows in {what} (finite weights and Gram whose product "
                           "passes 1.8e308): the weight or the calibration inputs are far out of range")
    return t


def _sym(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def _tol(values: torch.Tensor, dim: int) -> float:
    """Numerical-rank threshold for the spectrum of a PSD matrix: dim · eps · largest value."""
    top = float(values.max()) if values.numel() else 0.0
    return max(top, 0.0) * dim * torch.finfo(_F64).eps


def _fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive, so factors are deterministic."""
    if basis.numel() == 0:
        return basis
    idx = basis.abs().argmax(dim=0)  # (k,)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1.0
    return basis * signs


def _eigh_desc(m: torch.Tensor, what: str, name: str | None):
    """Eigen-decomposition of a symmetric matrix, largest eigenvalue first."""
    try:
        vals, vecs = torch.linalg.eigh(_sym(m))
    except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
        raise NumericError(f"{_label(name)}: eigh of {what} failed: {err}") from err
    if not (torch.isfinite(vals).all() and torch.isfinite(vecs).all()):
        raise NumericError(f"{_label(name)}: eigh of {what} returned NaN/Inf")
    return vals.flip(0), vecs.flip(1)


def _svd(m: torch.Tensor, what: str, name: str | None):
    """Thin SVD, singular values descending (never randomized)."""
    try:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    except RuntimeError as err:
        raise NumericError(f"{_label(name)}: SVD of {what} failed: {err}") from err
    if not (torch.isfinite(s).all() and torch.isfinite(u).all()):
        raise NumericError(f"{_label(name)}: SVD of {what} returned NaN/Inf")
    return u, s, vh


def _negative_part(values: torch.Tensor) -> float:
    """−Σ of the negative entries (≥ 0)."""
    return float(-values[values < 0].sum())


def _check_psd(negative: float, positive: float, gram_dtype: torch.dtype, name: str | None) -> None:
    """A Gram Σ xᵀx is positive semi-definite; the output energy its negative eigen-space would carry
    (`negative`, against `positive`) is round-off of the dtype it was accumulated in, which `decompose`
    clamps to zero. Beyond √eps of that dtype (1.5e-8 float64, 3.5e-4 float32) the matrix is not a
    Gram and every loss would be meaningless: NumericError naming the layer."""
    eps = torch.finfo(gram_dtype if gram_dtype.is_floating_point else _F64).eps
    if negative > eps**0.5 * max(positive, 0.0):
        raise NumericError(
            f"{_label(name)}: the Gram is not positive semi-definite: its negative eigenvalues carry "
            f"{negative:.3g} of output energy against {max(positive, 0.0):.3g} (more than round-off of "
            f"{gram_dtype}); a Gram Σ xᵀx has none: accumulate it in float64 from the activations")


def _check_shapes(weight: torch.Tensor, gram: torch.Tensor, gram_is_output: bool) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    side = weight.shape[0] if gram_is_output else weight.shape[1]
    if tuple(gram.shape) != (side, side):
        kind = "output Gram (out, out)" if gram_is_output else "input Gram (in, in)"
        raise ValueError(f"expected {kind} of shape {(side, side)}, got {tuple(gram.shape)}")


# ----------------------------------------------------------------------------- energies and losses


def output_energy(weight: torch.Tensor, gram: torch.Tensor, gram_is_output: bool = False,
                  name: str | None = None) -> float:
    """tr(W G Wᵀ) = ||W Xᵀ||²_F, the calibration output energy (tr(H) when given H)."""
    _check_shapes(weight, gram, gram_is_output)
    g = _to64(gram, "gram", name)
    if gram_is_output:
        return float(torch.diagonal(g).sum())
    w = _to64(weight, "weight", name)  # (out, in)
    return float(((w @ g) * w).sum())


def reconstruction_loss(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """tr(E G Eᵀ) with E = W − W', measured directly (input Gram G only)."""
    err = weight.detach().to(_F64) - approx.detach().to(_F64)  # (out, in)
    return float(((err @ gram.detach().to(_F64)) * err).sum())


# ----------------------------------------------------------------------------- the three bases


def _whitened_output_side(w, g, gram_is_output, name):
    """Eigenvectors of H = W G Wᵀ (out, out), O(out³). Directions with eigenvalue at round-off
    level are left out (clamped to zero energy) rather than trusted."""
    h = g if gram_is_output else _held(w @ g @ w.T, "the output Gram W G Wᵀ", name)  # (out, out)
    vals, vecs = _eigh_desc(h, "the output Gram W G Wᵀ", name)
    keep = vals > _tol(vals, h.shape[0])
    return vecs[:, keep], vals[keep], _negative_part(vals)


def _equilibrated(w, g):
    """G = D C D with D = diag(dᵢ), dᵢ = √Gᵢᵢ (floored at round-off of the largest, so that noise on a
    dead or constant channel is not blown up), and W G Wᵀ = (W D) C (W D)ᵀ. Returns W D (out, in)
    and C (in, in), unit diagonal where Gᵢᵢ is above the floor. Channel scales over many decades
    (cond(G) ~ 1e18 from scales alone) make eigh(G) lose the weak channels at round-off of the strong
    ones even when W amplifies them back to O(1) output energy; eigh(C) keeps them resolved."""
    diag = torch.diagonal(g)  # (in,)
    top = float(diag.max()) if diag.numel() else 0.0
    if top <= 0:
        return w, g
    d = diag.clamp_min(_tol(diag, g.shape[0])).sqrt()  # (in,), > 0
    c = g / d[:, None] / d[None, :]  # divided in turn: no underflow of dᵢ·dⱼ
    return w * d, _sym(c)


def _whitened_input_side(w, g, name):
    """Same optimum at O(in³): equilibrate G = D C D (`_equilibrated`), eigh of C = Q Λ Qᵀ,
    S = D Q₊ Λ₊^{1/2} on the positive eigen-space; then the left singular vectors of W S are the
    eigenvectors of W S Sᵀ Wᵀ = W G Wᵀ. No inverse of G is formed, so singular or ill-conditioned
    Grams are harmless."""
    wd, c = _equilibrated(w, g)  # (out, in), (in, in)
    lam, q = _eigh_desc(c, "the input Gram G (equilibrated)", name)
    neg = lam < 0
    negative = float((wd @ q[:, neg]).square().mul(-lam[neg]).sum())  # tr of H's negative part
    keep = lam > _tol(lam, c.shape[0])
    s = q[:, keep] * lam[keep].sqrt()  # (in, k)
    u, sig, _ = _svd(wd @ s, "W S (whitened weight)", name)  # u (out, min(out, k))
    energy = _held(sig.square(), "the output Gram W G Wᵀ (its eigenvalues)", name)
    keep = energy > _tol(energy, max(w.shape))
    return u[:, keep], energy[keep], negative


def _svd_basis(w, g, gram_is_output, name):
    """Left singular vectors of W; energies measured under the data (order stays by σ)."""
    u, _, _ = _svd(w, "the weight", name)  # (out, min)
    return (u, *_basis_energies(u, w, g, gram_is_output))


def _asvd_basis(w, g, gram_is_output, alpha, act_scale, name):
    """ASVD (Yuan et al. 2023, "ASVD: Activation-aware Singular Value Decomposition"):
    S = diag(s)^alpha with s the per-channel activation scale (mean |x| if given as act_scale,
    else the RMS sqrt(diag G / n); the constant n does not change the factors). SVD of W S = U Σ Vᵀ,
    then folding S⁻¹ back gives W' = U_r Σ_r V_rᵀ S⁻¹ = U_r U_rᵀ W."""
    if act_scale is not None:
        s = _to64(act_scale, "act_scale", name).reshape(-1)
    elif gram_is_output:
        raise ValueError("asvd with gram_is_output=True needs act_scale (the input Gram's diagonal is unknown)")
    else:
        s = torch.diagonal(g).clamp_min(0.0).sqrt()  # (in,)
    if s.numel() != w.shape[1]:
        raise ValueError(f"act_scale must have {w.shape[1]} entries, got {s.numel()}")
    s = s.abs()
    top = float(s.max())
    # relative to the largest (W S and W cS share their left singular vectors), so s^alpha neither
    # overflows nor underflows; never-active channels stay finite
    s = (s / top).clamp_min(1e-6) if top > 0 else torch.ones_like(s)
    u, _, _ = _svd(w * s.pow(alpha), "W S (activation-scaled weight)", name)  # (out, min)
    return (u, *_basis_energies(u, w, g, gram_is_output))


def _basis_energies(u, w, g, gram_is_output):
    """(eᵢ = uᵢᵀ W G Wᵀ uᵢ clamped at 0 (k,), the negative part the clamp took off, for `_check_psd`),
    via H when given, else as dᵢᵀ G dᵢ for the rows dᵢ of Uᵀ W."""
    if gram_is_output:
        signed = ((g @ u) * u).sum(dim=0)  # (k,)
    else:
        rows = u.T @ w  # (k, in)
        signed = ((rows @ g) * rows).sum(dim=1)  # (k,)
    return signed.clamp_min(0.0), _negative_part(signed)


def decompose(weight: torch.Tensor, gram: torch.Tensor, method: str = "whitened", *,
              alpha: float = 0.5, gram_is_output: bool = False, side: str | None = None,
              act_scale: torch.Tensor | None = None, name: str | None = None) -> Decomposition:
    """The ordered basis and energies of one layer (one eigh/SVD), reusable for every rank.

    side (whitened only): "output" (eigh of the out×out H) or "input" (eigh of the in×in G);
    None picks the cheaper one (input when in < out). gram_is_output forces "output".
    Directions the calibration data never excites carry no energy; when a rank needs them,
    `factors_from` takes them from W itself (so a zero Gram yields plain truncated-SVD factors).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    _check_shapes(weight, gram, gram_is_output)
    w = _to64(weight, "weight", name)  # (out, in)
    g = _sym(_to64(gram, "gram", name))  # (in, in) or (out, out)
    out_f, in_f = w.shape
    max_rank = min(out_f, in_f)
    if method == "svd":
        basis, energies, negative = _svd_basis(w, g, gram_is_output, name)
        side = "weight"
    elif method == "asvd":
        basis, energies, negative = _asvd_basis(w, g, gram_is_output, alpha, act_scale, name)
        side = "weight"
    else:
        if side is None:
            side = "input" if (in_f < out_f and not gram_is_output) else "output"
        if side == "input" and gram_is_output:
            raise ValueError("side='input' needs the input Gram, not gram_is_output=True")
        if side == "output":
            basis, energies, negative = _whitened_output_side(w, g, gram_is_output, name)
        elif side == "input":
            basis, energies, negative = _whitened_input_side(w, g, name)
        else:
            raise ValueError(f"side must be 'input', 'output' or None, got {side!r}")
    _held(energies, f"the output energies of the {method} decomposition (W G Wᵀ)", name)
    _check_psd(negative, float(energies.sum()), gram.dtype, name)
    basis, energies = basis[:, :max_rank], energies[:max_rank].clamp_min(0.0)
    return Decomposition(_fix_signs(basis), energies, max_rank, method, side)


# ----------------------------------------------------------------------------- factors


def _complete_basis(basis: torch.Tensor, w: torch.Tensor, rank: int, name: str | None) -> torch.Tensor:
    """Extend an orthonormal basis (out, k) to `rank` columns. The calibration data sees no energy
    outside it, so any extension is optimal on the data; we take the top left singular vectors of W
    restricted to the orthogonal complement (what of W the data never exercised)."""
    k = basis.shape[1]
    q, _ = torch.linalg.qr(basis, mode="complete")  # (out, out)
    comp = q[:, k:]  # (out, out - k), orthonormal, ⟂ basis
    z, _, _ = _svd(comp.T @ w, "the weight outside the calibrated subspace", name)
    extra = _fix_signs(comp @ z[:, : rank - k])  # (out, rank - k)
    return torch.cat([basis, extra], dim=1)


def factors_from(dec: Decomposition, weight: torch.Tensor, rank: int, *, balance: str = "sqrt",
                 out_dtype: torch.dtype | None = None, name: str | None = None) -> Factorization:
    """up (out, r), down (r, in) with up @ down = U_r U_rᵀ W, and the loss at that rank.

    balance="sqrt" (default): component i is scaled so that ||up[:, i]|| = ||down[i]|| =
        sqrt(||U_rᵀ W row i||); for plain SVD this is exactly up = U√Σ, down = √Σ Vᵀ (as SVD-LLM
        stores its factors). Keeps both factors in the weight's range for fp16/bf16 storage.
    balance="orthonormal_up": up = U_r (orthonormal columns), down = U_rᵀ W.
    out_dtype: None returns float64; pass weight.dtype to get the weight's dtype.
    """
    _check_rank(rank, dec.max_rank, name)
    if balance not in BALANCES:
        raise ValueError(f"unknown balance {balance!r}; expected one of {BALANCES}")
    w = _to64(weight, "weight", name)  # (out, in)
    basis = dec.basis[:, :rank]
    if basis.shape[1] < rank:
        basis = _complete_basis(basis, w, rank, name)
    up, down = basis, basis.T @ w  # (out, r), (r, in)
    if balance == "sqrt":
        up, down = balanced(up, down)
    curve = dec.curve
    dtype = out_dtype or _F64
    return Factorization(*_cast(up, down, dtype, name), float(curve[rank]), float(curve[0]))


def _check_rank(rank, max_rank: int, name: str | None) -> None:
    """A rank that is no integer (2.5: a raw 'slice indices must be integers') or outside [0, max_rank]
    is a ValueError naming the layer."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(f"{_label(name)}: rank must be an integer, got {rank!r}")
    if not 0 <= rank <= max_rank:
        raise ValueError(f"{_label(name)}: rank {rank} outside [0, {max_rank}]")


def _cast(up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype, name: str | None):
    """(up, down) in `dtype`; where it cannot hold them, a NumericError naming the layer: Inf past its
    range, or rank components (a column of up, a row of down) flushed to zeros (float16 below 6e-8)."""
    cast = up.to(dtype), down.to(dtype)  # (out, r), (r, in)
    if up.numel() == 0 or down.numel() == 0:
        return cast
    gone = ((cast[0].abs().amax(0) == 0) & (up.abs().amax(0) > 0)) | \
        ((cast[1].abs().amax(1) == 0) & (down.abs().amax(1) > 0))  # (r,)
    finite = all(bool(torch.isfinite(f).all()) for f in cast)
    if finite and not gone.any():
        return cast
    why = (f"{int(gone.sum())} of their {up.shape[1]} rank components underflow to zeros" if finite
           else f"they pass its largest value {torch.finfo(dtype).max:.5g}")
    top, said = max(float(up.abs().max()), float(down.abs().max())), str(dtype).removeprefix("torch.")
    raise NumericError(f"{_label(name)}: its factors, entries up to {top:.3g}, do not fit {said}: {why}; "
                       "give out_dtype float32 or bfloat16")


def balanced(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same product up @ down, each component i rescaled so that ||up[:, i]|| = ||down[i]||:
    neither factor carries the other's scale (fp16/bf16 storage). up (out, r), down (r, in)."""
    nu, nd = up.norm(dim=0), down.norm(dim=1)  # (r,), (r,)
    ok = (nu > 0) & (nd > 0)
    scale = torch.where(ok, (nd / torch.where(ok, nu, 1)).sqrt(), torch.ones_like(nu))
    return up * scale, down / scale[:, None]


def factorize(weight: torch.Tensor, gram: torch.Tensor, rank: int, method: str = "whitened",
              alpha: float = 0.5, gram_is_output: bool = False, *, balance: str = "sqrt",
              out_dtype: torch.dtype | None = None, side: str | None = None,
              act_scale: torch.Tensor | None = None, name: str | None = None) -> Factorization:
    """Rank-r factors of W under the calibration Gram: `decompose` then `factors_from`.

    whitened: the exact minimizer of ||(W − W')Xᵀ||_F over rank-r W' (up to ties in the spectrum).
    svd / asvd: their factors, with the loss still measured under the data (never below optimal).
    Raises NumericError (naming `name`) on NaN/Inf input or a failed decomposition.
    """
    dec = decompose(weight, gram, method, alpha=alpha, gram_is_output=gram_is_output, side=side,
                    act_scale=act_scale, name=name)
    return factors_from(dec, weight, rank, balance=balance, out_dtype=out_dtype, name=name)


def loss_curve(weight: torch.Tensor, gram: torch.Tensor, method: str = "whitened", *,
               alpha: float = 0.5, gram_is_output: bool = False, name: str | None = None) -> torch.Tensor:
    """(max_rank + 1,) float64: the method's calibration loss at every rank 0..min(out, in).
    For whitened: curve[r] = Σ of all but the r largest eigenvalues of W G Wᵀ."""
    return decompose(weight, gram, method, alpha=alpha, gram_is_output=gram_is_output, name=name).curve


def optimal_loss(weight: torch.Tensor, gram: torch.Tensor, rank: int, gram_is_output: bool = False,
                 name: str | None = None) -> float:
    """min over rank-r W' of tr(E G Eᵀ): the sum of all but the r largest eigenvalues of W G Wᵀ."""
    curve = loss_curve(weight, gram, "whitened", gram_is_output=gram_is_output, name=name)
    _check_rank(rank, curve.numel() - 1, name)
    return float(curve[rank])


def normalized_curve(curve: torch.Tensor) -> torch.Tensor:
    """curve / curve[0] (a layer with no output energy gets all zeros)."""
    total = float(curve[0])
    return curve / total if total > 0 else torch.zeros_like(curve)
