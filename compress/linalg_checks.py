"""The float64 building blocks `linalg` and `linalg_steps` share, and the checks of their inputs and
results, each naming the layer: NaN/Inf in a weight or Gram, float64 overflowing in a product, an
eigh or SVD that fails or returns NaN/Inf, a Gram that is not positive semi-definite (NumericError), a
weight and Gram of unmatched shapes or a rank out of range (ValueError), and factors a storage dtype
cannot hold. Pure tensor functions (notation as in `compress.linalg`)."""

from __future__ import annotations

import numbers

import torch

from compress.errors import NumericError

F64 = torch.float64


def layer_label(name: str | None) -> str:
    return f"layer {name!r}" if name else "unnamed layer"


def to64(t: torch.Tensor, what: str, name: str | None) -> torch.Tensor:
    """float64 copy of t; NaN/Inf is a NumericError naming the layer."""
    t = t.detach().to(F64)
    if not torch.isfinite(t).all():
        raise NumericError(f"{layer_label(name)}: {what} contains NaN or Inf")
    return t


def finite64(t: torch.Tensor, what: str, name: str | None) -> torch.Tensor:
    """t, computed in float64 from finite weights and Gram; Inf/NaN there is their product overflowing
    float64 (a weight ~1e200), said so (eigh said 'failed to converge ... ill-conditioned')."""
    if not torch.isfinite(t).all():
        raise NumericError(f"{layer_label(name)}: float64 overflows in {what} (finite weights and Gram whose product "
                           "passes 1.8e308): the weight or the calibration inputs are far out of range")
    return t


def sym(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def rank_tol(values: torch.Tensor, dim: int) -> float:
    """Numerical-rank threshold for the spectrum of a PSD matrix: dim · eps · largest value."""
    top = float(values.max()) if values.numel() else 0.0
    return max(top, 0.0) * dim * torch.finfo(F64).eps


def fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive, so factors are deterministic."""
    if basis.numel() == 0:
        return basis
    idx = basis.abs().argmax(dim=0)  # (k,)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1.0
    return basis * signs


def eigh_desc(m: torch.Tensor, what: str, name: str | None):
    """Eigen-decomposition of a symmetric matrix, largest eigenvalue first."""
    try:
        vals, vecs = torch.linalg.eigh(sym(m))
    except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
        raise NumericError(f"{layer_label(name)}: eigh of {what} failed: {err}") from err
    if not (torch.isfinite(vals).all() and torch.isfinite(vecs).all()):
        raise NumericError(f"{layer_label(name)}: eigh of {what} returned NaN/Inf")
    return vals.flip(0), vecs.flip(1)


def thin_svd(m: torch.Tensor, what: str, name: str | None):
    """Thin SVD, singular values descending (never randomized)."""
    try:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    except RuntimeError as err:
        raise NumericError(f"{layer_label(name)}: SVD of {what} failed: {err}") from err
    if not (torch.isfinite(s).all() and torch.isfinite(u).all()):
        raise NumericError(f"{layer_label(name)}: SVD of {what} returned NaN/Inf")
    return u, s, vh


def negative_part(values: torch.Tensor) -> float:
    """−Σ of the negative entries (≥ 0)."""
    return float(-values[values < 0].sum())


def check_psd(negative: float, positive: float, gram_dtype: torch.dtype, name: str | None) -> None:
    """A Gram Σ xᵀx is positive semi-definite; the output energy its negative eigen-space would carry
    (`negative`, against `positive`) is round-off of the dtype it was accumulated in, which `decompose`
    clamps to zero. Beyond √eps of that dtype (1.5e-8 float64, 3.5e-4 float32) the matrix is not a
    Gram and every loss would be meaningless: NumericError naming the layer."""
    eps = torch.finfo(gram_dtype if gram_dtype.is_floating_point else F64).eps
    if negative > eps**0.5 * max(positive, 0.0):
        raise NumericError(
            f"{layer_label(name)}: the Gram is not positive semi-definite: its negative eigenvalues carry "
            f"{negative:.3g} of output energy against {max(positive, 0.0):.3g} (more than round-off of "
            f"{gram_dtype}); {_not_psd_advice(gram_dtype)}")


def _not_psd_advice(gram_dtype: torch.dtype) -> str:
    """Why a Gram is not PSD, and what to do: accumulated in a narrow dtype, widen it; accumulated in float64
    already, the likely cause is a centered Gram G − nμμᵀ (svd.center) whose inputs' mean is so far above
    their spread (about 1e6 times) that the subtraction cancels its digits."""
    if gram_dtype != F64:
        return "a Gram Σ xᵀx has none: accumulate it in float64 from the activations"
    return ("a Gram Σ xᵀx accumulated in float64 has none, but a centered one (G − nμμᵀ: svd.center) loses its "
            "digits where the layer's inputs have a mean far larger than their spread (about 1e6 times): the "
            "centering lost the precision; leave this layer out of svd.center (its mean error then stays in "
            "the factors instead of the bias)")


def check_shapes(weight: torch.Tensor, gram: torch.Tensor, gram_is_output: bool) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    side = weight.shape[0] if gram_is_output else weight.shape[1]
    if tuple(gram.shape) != (side, side):
        kind = "output Gram (out, out)" if gram_is_output else "input Gram (in, in)"
        raise ValueError(f"expected {kind} of shape {(side, side)}, got {tuple(gram.shape)}")


def check_rank(rank, max_rank: int, name: str | None) -> None:
    """A rank that is no integer (2.5: a raw 'slice indices must be integers') or outside [0, max_rank]
    is a ValueError naming the layer."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(f"{layer_label(name)}: rank must be an integer, got {rank!r}")
    if not 0 <= rank <= max_rank:
        raise ValueError(f"{layer_label(name)}: rank {rank} outside [0, {max_rank}]")


def cast_factors(up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype, name: str | None):
    """(up, down) in `dtype`; where it cannot hold them, a NumericError naming the layer: Inf past its
    range, or rank components (a column of up, a row of down) flushed to zeros (float16 below 6e-8).
    A component flushed whose product ||up_i||·||down_i|| (the Frobenius norm of what it adds, so what
    zeroing it loses) is at most `dtype`'s epsilon times the largest one's is none: its loss is within
    the cast's own rounding of that one, as for the round-off components past a weight's rank (an exactly
    rank-2 weight factorized at rank 12: components 3 to 12 ~1e-16 of the first)."""
    cast = up.to(dtype), down.to(dtype)  # (out, r), (r, in)
    if up.numel() == 0 or down.numel() == 0:
        return cast
    size = up.to(F64).norm(dim=0) * down.to(F64).norm(dim=1)  # (r,)
    felt = size > torch.finfo(dtype).eps * size.max()  # (r,)
    gone = felt & (((cast[0].abs().amax(0) == 0) & (up.abs().amax(0) > 0)) |
                   ((cast[1].abs().amax(1) == 0) & (down.abs().amax(1) > 0)))  # (r,)
    finite = all(bool(torch.isfinite(f).all()) for f in cast)
    if finite and not gone.any():
        return cast
    why = (f"{int(gone.sum())} of their {up.shape[1]} rank components underflow to zeros" if finite
           else f"they pass its largest value {torch.finfo(dtype).max:.5g}")
    top, said = max(float(up.abs().max()), float(down.abs().max())), str(dtype).removeprefix("torch.")
    raise NumericError(f"{layer_label(name)}: its factors, entries up to {top:.3g}, do not fit {said}: {why}; "
                       "give out_dtype float32 or bfloat16")
