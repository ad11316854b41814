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
Parameter counts and rank rounding are in `compress.linalg_params`, the KD losses in `compress.kd_losses`,
the checks of inputs and results (errors naming the layer) and the checked eigh / SVD in `compress.linalg_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.linalg_checks import (F64, cast_factors, check_psd, check_rank, check_shapes, eigh_desc, finite64,
                                    fix_signs, negative_part, rank_tol, sym, thin_svd, to64)
from compress.recipe_names import METHODS

BALANCES = ("sqrt", "orthonormal_up")


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
        padded = torch.zeros(self.max_rank + 1, dtype=F64, device=self.energies.device)
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


# ----------------------------------------------------------------------------- energies and losses


def output_energy(weight: torch.Tensor, gram: torch.Tensor, gram_is_output: bool = False,
                  name: str | None = None) -> float:
    """tr(W G Wᵀ) = ||W Xᵀ||²_F, the calibration output energy (tr(H) when given H)."""
    check_shapes(weight, gram, gram_is_output)
    g = to64(gram, "gram", name)
    if gram_is_output:
        return float(torch.diagonal(g).sum())
    w = to64(weight, "weight", name)  # (out, in)
    return float(((w @ g) * w).sum())


def reconstruction_loss(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """tr(E G Eᵀ) with E = W − W', measured directly (input Gram G only)."""
    err = weight.detach().to(F64) - approx.detach().to(F64)  # (out, in)
    return float(((err @ gram.detach().to(F64)) * err).sum())


# ----------------------------------------------------------------------------- the three bases


def _whitened_output_side(w, g, gram_is_output, name):
    """Eigenvectors of H = W G Wᵀ (out, out), O(out³). Directions with eigenvalue at round-off
    level are left out (clamped to zero energy) rather than trusted."""
    h = g if gram_is_output else finite64(w @ g @ w.T, "the output Gram W G Wᵀ", name)  # (out, out)
    vals, vecs = eigh_desc(h, "the output Gram W G Wᵀ", name)
    keep = vals > rank_tol(vals, h.shape[0])
    return vecs[:, keep], vals[keep], negative_part(vals)


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
    d = diag.clamp_min(rank_tol(diag, g.shape[0])).sqrt()  # (in,), > 0
    c = g / d[:, None] / d[None, :]  # divided in turn: no underflow of dᵢ·dⱼ
    return w * d, sym(c)


def _whitened_input_side(w, g, name):
    """Same optimum at O(in³): equilibrate G = D C D (`_equilibrated`), eigh of C = Q Λ Qᵀ,
    S = D Q₊ Λ₊^{1/2} on the positive eigen-space; then the left singular vectors of W S are the
    eigenvectors of W S Sᵀ Wᵀ = W G Wᵀ. No inverse of G is formed, so singular or ill-conditioned
    Grams are harmless. Every positive eigenvalue is kept, however small: one at round-off of the
    largest (1e-14) still carries output energy where W amplifies its direction (W ~1e7 along it), and
    dropping it left that energy out of both the basis and the loss (stop 54's review: factors 1.003-1.23×
    the optimum, reported below it); the output energies' own threshold below drops what W does not lift."""
    wd, c = _equilibrated(w, g)  # (out, in), (in, in)
    lam, q = eigh_desc(c, "the input Gram G (equilibrated)", name)
    neg = lam < 0
    negative = float((wd @ q[:, neg]).square().mul(-lam[neg]).sum())  # tr of H's negative part
    keep = lam > 0
    s = q[:, keep] * lam[keep].sqrt()  # (in, k)
    u, sig, _ = thin_svd(wd @ s, "W S (whitened weight)", name)  # u (out, min(out, k))
    energy = finite64(sig.square(), "the output Gram W G Wᵀ (its eigenvalues)", name)
    keep = energy > rank_tol(energy, max(w.shape))
    return u[:, keep], energy[keep], negative


def _svd_basis(w, g, gram_is_output, name):
    """Left singular vectors of W; energies measured under the data (order stays by σ)."""
    u, _, _ = thin_svd(w, "the weight", name)  # (out, min)
    return (u, *_basis_energies(u, w, g, gram_is_output))


def _asvd_basis(w, g, gram_is_output, alpha, act_scale, name):
    """ASVD (Yuan et al. 2023, "ASVD: Activation-aware Singular Value Decomposition"):
    S = diag(s)^alpha with s the per-channel activation scale (mean |x| if given as act_scale,
    else the RMS sqrt(diag G / n); the constant n does not change the factors). SVD of W S = U Σ Vᵀ,
    then folding S⁻¹ back gives W' = U_r Σ_r V_rᵀ S⁻¹ = U_r U_rᵀ W."""
    if act_scale is not None:
        s = to64(act_scale, "act_scale", name).reshape(-1)
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
    u, _, _ = thin_svd(w * s.pow(alpha), "W S (activation-scaled weight)", name)  # (out, min)
    return (u, *_basis_energies(u, w, g, gram_is_output))


def _basis_energies(u, w, g, gram_is_output):
    """(eᵢ = uᵢᵀ W G Wᵀ uᵢ clamped at 0 (k,), the negative part the clamp took off, for `check_psd`),
    via H when given, else as dᵢᵀ G dᵢ for the rows dᵢ of Uᵀ W."""
    if gram_is_output:
        signed = ((g @ u) * u).sum(dim=0)  # (k,)
    else:
        rows = u.T @ w  # (k, in)
        signed = ((rows @ g) * rows).sum(dim=1)  # (k,)
    return signed.clamp_min(0.0), negative_part(signed)


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
    check_shapes(weight, gram, gram_is_output)
    w = to64(weight, "weight", name)  # (out, in)
    g = sym(to64(gram, "gram", name))  # (in, in) or (out, out)
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
    finite64(energies, f"the output energies of the {method} decomposition (W G Wᵀ)", name)
    check_psd(negative, float(energies.sum()), gram.dtype, name)
    basis, energies = basis[:, :max_rank], energies[:max_rank].clamp_min(0.0)
    return Decomposition(fix_signs(basis), energies, max_rank, method, side)


# ----------------------------------------------------------------------------- factors


def _complete_basis(basis: torch.Tensor, w: torch.Tensor, rank: int, name: str | None) -> torch.Tensor:
    """Extend an orthonormal basis (out, k) to `rank` columns. The calibration data sees no energy
    outside it, so any extension is optimal on the data; we take the top left singular vectors of W
    restricted to the orthogonal complement (what of W the data never exercised)."""
    k = basis.shape[1]
    q, _ = torch.linalg.qr(basis, mode="complete")  # (out, out)
    comp = q[:, k:]  # (out, out - k), orthonormal, ⟂ basis
    z, _, _ = thin_svd(comp.T @ w, "the weight outside the calibrated subspace", name)
    extra = fix_signs(comp @ z[:, : rank - k])  # (out, rank - k)
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
    check_rank(rank, dec.max_rank, name)
    if balance not in BALANCES:
        raise ValueError(f"unknown balance {balance!r}; expected one of {BALANCES}")
    w = to64(weight, "weight", name)  # (out, in)
    basis = dec.basis[:, :rank]
    if basis.shape[1] < rank:
        basis = _complete_basis(basis, w, rank, name)
    up, down = basis, basis.T @ w  # (out, r), (r, in)
    if balance == "sqrt":
        up, down = balanced(up, down)
    curve = dec.curve
    dtype = out_dtype or F64
    return Factorization(*cast_factors(up, down, dtype, name), float(curve[rank]), float(curve[0]))


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
    check_rank(rank, curve.numel() - 1, name)
    return float(curve[rank])


def normalized_curve(curve: torch.Tensor) -> torch.Tensor:
    """curve / curve[0] (a layer with no output energy gets all zeros)."""
    total = float(curve[0])
    return curve / total if total > 0 else torch.zeros_like(curve)
