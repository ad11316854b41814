"""Global allocation's sensitivity model (DESIGN.md convention 2): a target's weight, its squared final error
per unit of normalized loss, from one measurement (`sensitivity_weight`) at the rank it is measured at
(`measurement_rank`), and the final error the weighted losses predict for an allocation against `uniform`
(`error_vs_uniform`). `alloc.global_greedy` spends its budget on these weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from compress.alloc import (DENSE, LayerSpec, _check_curve, global_greedy, min_budget, rank_options, ratio_rank,
                            uniform, weighted_loss)

MEASURABLE_LOSS = 1e-6  # normalized loss a sensitivity is measured at, at least (see `measurement_rank`)


def sensitivity_weight(final_error: float, normalized_loss: float, eps: float = 1e-12) -> float:
    """Weight of a layer in `global_greedy`: the squared relative error of the model's final prediction
    when only this layer is compressed (at its `measurement_rank`), per unit of its normalized whitened
    loss there. The (Fisher-weighted) loss of a layer is a first-order estimate of its squared contribution
    to the prediction error, and squared contributions of independent layers add; so weight·curve[r]
    estimates the layer's squared final error at rank r, calibrated by one measurement, and
    Σ weight·curve[r] the squared error of the whole model."""
    if final_error < 0 or normalized_loss < 0:
        raise ValueError("final_error and normalized_loss must be ≥ 0")
    return final_error**2 / max(normalized_loss, eps)


def measurement_rank(spec: LayerSpec, ratio: float, multiple: int, bounds: tuple[int, int] | None,
                     floor: float = MEASURABLE_LOSS) -> int | None:
    """The rank a layer's sensitivity is measured at: its uniform rank at `ratio`, where the layer
    loses at least `floor` of its output energy. Past the rank of its data (the toy PixArt's caption
    k/v read a 14-dimensional masked caption) it loses nothing but round-off, and the weight was the
    prediction's float32 round-off over the 1e-12 floor of `sensitivity_weight`, a number unrelated to
    the layer; there, the highest allowed rank below it (multiples within `bounds`, `rank_options`)
    that loses `floor`. None where the uniform rank saves nothing, or no allowed rank up to it loses
    `floor` (its weighted losses are then ~0 whatever its weight)."""
    rank = ratio_rank(spec, ratio, multiple)
    if rank is DENSE:
        return None
    curve = _check_curve(spec)
    options, _ = rank_options(spec, multiple, bounds)
    for r in [rank, *sorted(options[options < rank], reverse=True)]:
        if curve[r] >= floor:
            return int(r)
    return None


def error_vs_uniform(layers: Sequence[LayerSpec], ranks: Mapping[str, int | None], weights: Mapping[str, float],
                     ratio: float, multiple: int = 16,
                     ranges: Mapping[str, tuple[int, int]] | None = None) -> tuple[float | None, float | None, int]:
    """The final-prediction error the weighted loss model expects of `ranks` relative to `uniform` at
    `ratio`: √(Σ weight·loss at ranks / the same at uniform's ranks). Uniform's ranks, rounded per
    layer, keep another parameter count than a global budget (toy PixArt's global pass at 0.6: uniform
    827,520, global 790,656; at 0.3: 376,960 and 395,392), so also the same ratio for `global_greedy`
    given uniform's own count (None below `min_budget`). Returns (at `ranks`, at uniform's count,
    uniform's count); ratios None where uniform's weighted loss is 0."""
    uni = uniform(layers, ratio, multiple)
    base = weighted_loss(layers, uni.ranks, weights)

    def relative(r: Mapping[str, int | None]) -> float | None:
        return (weighted_loss(layers, r, weights) / base) ** 0.5 if base > 0 else None

    same = None
    if uni.spent >= min_budget(layers, multiple, ranges):
        same = relative(global_greedy(layers, uni.spent, multiple, weights, ranges).ranks)
    return relative(ranks), same, uni.spent
