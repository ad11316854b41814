"""Parameter counts of a dense and a low-rank linear, the rank at which factoring stops saving
parameters, and rank rounding (pure integer functions, beside the math of `compress.linalg`)."""

from __future__ import annotations


def params_dense(out_features: int, in_features: int, bias: bool = True) -> int:
    """Parameters of nn.Linear(in, out): out·in (+ out)."""
    return out_features * in_features + (out_features if bias else 0)


def params_lowrank(out_features: int, in_features: int, rank: int, bias: bool = True) -> int:
    """Parameters of LowRankLinear: r·(out + in) (+ out)."""
    return rank * (out_features + in_features) + (out_features if bias else 0)


def breakeven_rank(out_features: int, in_features: int) -> int:
    """Smallest rank that saves nothing: ceil(m·n / (m + n)). Ranks ≥ this stay dense."""
    m, n = out_features, in_features
    return -(-(m * n) // (m + n))


def saves_params(out_features: int, in_features: int, rank: int) -> bool:
    """True when rank r factors are strictly smaller than the dense weight (r < breakeven)."""
    return rank < breakeven_rank(out_features, in_features)


def round_rank(rank: float, multiple: int = 16, max_rank: int | None = None) -> int:
    """Round to the nearest multiple (halves up), at least one multiple, at most max_rank."""
    if multiple < 1:
        raise ValueError(f"multiple must be ≥ 1, got {multiple}")
    r = max(multiple, multiple * int(rank / multiple + 0.5))
    return min(r, max_rank) if max_rank is not None else r
