"""Factorizing one linear from its calibration stats, and swapping it for a LowRankLinear.

Math lives in `compress.linalg`; this file picks the Gram, measures the result and edits the model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from compress.arch.base import LinearInfo
from compress.calib_stats import Stats
from compress.linalg import Decomposition, balanced, decompose, factors_from
from compress.linalg_params import params_dense, params_lowrank
from compress.linalg_steps import asymmetric_excess, centered_moments
from compress.lowrank import LowRankLinear

F64 = torch.float64


@dataclass(frozen=True)
class LayerMath:
    """What `decompose` needs for one layer: weight (out, in) float64, the Gram and its side."""

    weight: torch.Tensor
    gram: torch.Tensor  # (in, in), or (out, out) when gram_is_output
    gram_is_output: bool
    act_scale: torch.Tensor | None  # (in,) per-channel RMS for asvd with an output Gram
    mean_in: torch.Tensor | None  # (in,) mean input (centered), or mean output W μ (output Gram)
    energy: float  # tr(W G Wᵀ), uncentered: the layer's calibration output energy
    # (out,) a centered target's own output offset (the centered asymmetric fit's, from the
    # reference's mean): the bias shift is (W − W')μ + offset
    offset: torch.Tensor | None = None


def layer_math(module: nn.Module, stats: Stats, gram_is_output: bool, center: bool,
               step: torch.Tensor | None = None, offset: torch.Tensor | None = None) -> LayerMath:
    """step (out, in): a weight change to factorize W + step instead of W (compensation; input
    Gram only). offset (out,): the target's output offset, centered only (the target is the affine
    map x ↦ (W + step) x + offset, linalg_steps.centered_asymmetric_step). The energy stays that of
    W: losses are normalized by the layer's own output."""
    dev = stats.gram.device
    w = module.weight.detach().to(dev, F64)  # (out, in)
    gram = stats.centered() if center else stats.gram
    if gram_is_output:
        energy = float(torch.diagonal(stats.gram).sum())
        scale = (stats.in_sq / max(stats.rows, 1)).sqrt() if stats.in_sq is not None else None
    else:
        energy = float(((w @ stats.gram) * w).sum())
        scale = None
    if step is not None:
        if gram_is_output:
            raise ValueError("a weight step needs the input Gram (gram_is_output=True)")
        w = w + step.to(dev, F64)
    if offset is not None:
        if not center:
            raise ValueError("an output offset needs a centered target (its bias takes it)")
        offset = offset.to(dev, F64)
    return LayerMath(w, gram, gram_is_output, scale, stats.mean if center else None, energy, offset)


def decompose_layer(m: LayerMath, method: str, alpha: float, name: str) -> Decomposition:
    return decompose(m.weight, m.gram, method, alpha=alpha, gram_is_output=m.gram_is_output,
                     act_scale=m.act_scale, name=name)


def measured_loss(m: LayerMath, up: torch.Tensor, down: torch.Tensor) -> float:
    """tr(E G Eᵀ) of W − up·down, computed afresh (not read off the spectrum). With an output Gram
    H: W' = Q Qᵀ W for Q an orthonormal basis of up's columns, so the loss is tr((I−P) H (I−P))."""
    if not m.gram_is_output:
        err = m.weight - up @ down  # (out, in)
        return float(((err @ m.gram) * err).sum())
    q, _ = torch.linalg.qr(up)  # (out, r)
    rest = m.gram - q @ (q.T @ m.gram)  # (I − P) H
    rest = rest - (rest @ q) @ q.T  # (I − P) H (I − P)
    return float(torch.diagonal(rest).sum())


def replace_linear(model: nn.Module, name: str, new: nn.Module) -> None:
    """`new` (the svd pass's LowRankLinear) in place of `name`, marked as the pass's (svd_checks.mark_made)."""
    from compress.passes.svd_checks import mark_made

    model.set_submodule(name, mark_made(new))


def weighted(m: LayerMath, root: torch.Tensor) -> LayerMath:
    """The same layer seen through an output weighting L (out, out): W -> L W (see svd_fisher)."""
    root = root.to(m.weight.device, F64)
    gram = root @ m.gram @ root.T if m.gram_is_output else m.gram
    mean = root @ m.mean_in if (m.mean_in is not None and m.gram_is_output) else m.mean_in
    w = root @ m.weight  # (out, in)
    energy = float(torch.diagonal(gram).sum()) if m.gram_is_output else float(((w @ gram) * w).sum())
    offset = root @ m.offset if m.offset is not None else None
    return LayerMath(w, gram, m.gram_is_output, m.act_scale, mean, energy, offset)


def compress_layer(model: nn.Module, info: LinearInfo, stats: Stats, *, method: str, alpha: float,
                   center: bool, gram_is_output: bool,
                   choose_rank: Callable[[Decomposition], int | None],
                   out_root: tuple[torch.Tensor, torch.Tensor] | None = None,
                   step: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                   fitted: bool = False) -> dict:
    """Factorize one target in place (or leave it dense) and return its report record.
    out_root: (L, L⁻¹) of an output weighting; losses are then measured in the weighted metric.
    step, offset: factorize W + step, the bias taking offset too (see layer_math); the losses are
    then those of W + step's factorization (for an asymmetric fit without damping, its fit to the
    reference's outputs less the part no W' can remove, the residual of the full-rank fit).
    fitted: step is the asymmetric fit alone (stats hold the reference's cross term); the record then
    also says how close the factorization comes to that fit's undamped rank-r optimum (`_fit_record`)."""
    start = time.perf_counter()
    module = model.get_submodule(info.name)
    bias = module.bias is not None
    m = layer_math(module, stats, gram_is_output, center, step, offset)
    if out_root is not None:
        m = weighted(m, out_root[0])
    dec = decompose_layer(m, method, alpha, info.name)
    rank = choose_rank(dec)
    record = dict(role=info.role, shape=[info.out_features, info.in_features], method=method,
                  params_dense=params_dense(info.out_features, info.in_features, bias))
    if rank is None:
        return dense_record(info, method, bias, round(time.perf_counter() - start, 4))
    fac = factors_from(dec, m.weight, rank, name=info.name)
    whitened = dec if method == "whitened" else decompose_layer(m, "whitened", alpha, info.name)
    loss, optimal = _clamped(measured_loss(m, fac.up, fac.down), m.energy), float(whitened.curve[rank])
    target = float(whitened.curve[0])  # the objective's energy of the weight factorized (W + step)
    up, down, shift = fac.up, fac.down, _mean_shift(m, fac.up, fac.down)
    if out_root is not None:  # back from V = L W to W, the Fisher's scale shared by both factors
        inv = out_root[1].to(up.device, F64)
        (up, down), shift = balanced(inv @ up, down), (inv @ shift if shift is not None else None)
    error = _output_error(module, stats, gram_is_output, up, down, shift, fac.up, out_root)
    fit = _fit_record(module, stats, center, up @ down, rank, out_root, info.name) if fitted else {}
    new_bias = module.bias.detach().to(up.device, F64) if bias else None
    if shift is not None:
        new_bias = shift if new_bias is None else new_bias + shift
    layer = LowRankLinear.from_factors(up, down, new_bias, dtype=module.weight.dtype)
    replace_linear(model, info.name, layer.to(module.weight.device))
    return dict(record, rank=rank, kept_params=params_lowrank(info.out_features, info.in_features,
                                                              rank, bias),
                loss=loss, optimal_loss=optimal, **_ratio(loss, optimal, m.energy, method, rank,
                                                          int(whitened.energies.numel())),
                # the objective's energy kept: 1 − loss / its energy of the weight factorized (W + step:
                # what the energy allocation reads, curve[0]), all in its (weighted) metric
                # (None where that energy is 0: a zero Gram keeps no share of nothing)
                energy_kept=1.0 - loss / target if target > 0 else None,
                rel_output_error=error,
                # what its loss weighs output errors by (older reports named it `objective`, the name of
                # svd.objective's setting in the summary: report_card.weighting reads both)
                weighting="output-weighted" if out_root is not None else "calibration output",
                spectrum=[float(e) for e in dec.energies[:512]],  # for `inspect --plot`
                # directions the calibration data excites above round-off; the rest of the Gram's
                # eigenvalues were clamped to zero (singular / ill-conditioned Gram), not inverted
                # (asvd and svd keep every direction of their own basis: the whitened one counts)
                data_rank=int(whitened.energies.numel()),
                clamped=bool(whitened.energies.numel() < min(info.out_features, info.in_features)),
                centered=center, **fit, time_s=round(time.perf_counter() - start, 4))


def _fit_record(module: nn.Module, stats: Stats, center: bool, approx: torch.Tensor, rank: int,
                out_root, name: str) -> dict:
    """The report's view of an asymmetric fit: Σ ‖R (W' x̃ − W x)‖² of the factorized layer W'
    (out, in) above the least-squares minimum (fit_excess), the rank-r minimum of that excess
    (fit_optimal), both without the damping the step used (linalg_steps.asymmetric_excess), and
    fit_gap = (fit_excess − fit_optimal) / ‖R W X̃‖²: what the damping costs on the calibration data,
    as a share of the layer's (weighted) output energy. A ratio of the two would not do: the
    optimum's tail vanishes as r nears the data's rank while the damping's cost does not."""
    w = module.weight.detach().to(F64)  # (out, in)
    gram, cross = stats.gram, stats.cross
    if center:
        gram, cross, _, _ = centered_moments(gram, cross, stats.total, stats.ref_total, stats.rows, name)
    root = out_root[0] if out_root is not None else None
    excess, optimal = asymmetric_excess(w, gram, cross, approx, rank, root, name)
    rw = w if root is None else root.to(w.device, F64) @ w
    energy = float(((rw @ gram.to(F64)) * rw).sum())
    gap = max(excess - optimal, 0.0) / energy if energy > 0 else 0.0
    return dict(fit_excess=excess, fit_optimal=optimal, fit_gap=gap)


def _output_error(module: nn.Module, stats: Stats, gram_is_output: bool, up, down, shift, basis_up,
                  out_root) -> float:
    """‖y − y'‖ / ‖W x‖ over the calibration rows the layer read (the student's inputs with
    activations: student): y' the layer the pass makes (its bias shift included) against the layer
    as the pass found it, unweighted and without any compensation or asymmetric step.
    Rows r = x (input Gram) or y = W x (output Gram), each row's error A r − s:
    Σ‖A r − s‖² = tr(A G Aᵀ) − 2 sᵀA Σr + n‖s‖²."""
    w = module.weight.detach().to(stats.gram.device, F64)  # (out, in)
    gram, total = stats.gram, stats.total.to(F64)
    if gram_is_output:  # W' = M W, M = L⁻¹ Q Qᵀ L (Q: an orthonormal basis of the weighted up)
        q, _ = torch.linalg.qr(basis_up)  # (out, r)
        project = q @ q.T
        if out_root is not None:
            root, inv = (t.to(q.device, F64) for t in out_root)
            project = inv @ project @ root
        a = torch.eye(w.shape[0], dtype=F64, device=q.device) - project  # (out, out)
        energy = float(torch.diagonal(gram).sum())
    else:
        a = w - up @ down  # (out, in)
        energy = float(((w @ gram) * w).sum())
    err = float(((a @ gram) * a).sum())
    if shift is not None:
        err += stats.rows * float(shift @ shift) - 2 * float(shift @ (a @ total))
    return max(err, 0.0) ** 0.5 / energy ** 0.5 if energy > 0 else 0.0


def _mean_shift(m: LayerMath, up, down):
    """Centered factorization: the mean input's error (W − W')μ, plus the target's own offset, to
    move into the bias (or None)."""
    if m.mean_in is None:
        return None
    if m.gram_is_output:  # mean_in is the mean output W μ; W' μ = P W μ
        q, _ = torch.linalg.qr(up)
        return m.mean_in - q @ (q.T @ m.mean_in)
    shift = (m.weight - up @ down) @ m.mean_in  # (out,)
    return shift + m.offset if m.offset is not None else shift


def _clamped(loss: float, energy: float) -> float:
    """A measured loss, a round-off negative (≥ −1e-10 of the layer's energy: −6e-15 on an exact
    layer) as 0; a larger negative is kept, to be seen."""
    return 0.0 if -1e-10 * max(energy, 0.0) <= loss < 0 else loss


def _ratio(loss: float, optimal: float, energy: float, method: str, rank: int,
           data_rank: int | None = None) -> dict:
    """{"loss_ratio": loss / optimal}; both at round-off level (≤ 1e-10 of the layer's energy) count
    as equal (1.0), but where that energy is 0 (0/0: no ratio, None). An optimum of 0 under a loss that is not (asvd or svd at a rank at or above the
    calibration data's rank, where whitening is exact) has no finite ratio: None, and
    `loss_ratio_note` says why, naming the data's rank (the whitened directions above round-off)
    where known (report.json stays strict JSON: no Infinity, no NaN)."""
    floor = 1e-10 * max(energy, 0.0)
    if not (math.isfinite(loss) and math.isfinite(optimal)):
        return {"loss_ratio": None, "loss_ratio_note": f"loss {loss} or optimum {optimal} is not finite"}
    if energy <= 0:  # 0/0: inspect showed 1.000000, as if optimal
        return {"loss_ratio": None,
                "loss_ratio_note": "no ratio: the layer's calibration output energy, in its objective, is 0 (its "
                                   "calibration inputs are all zero, or its weight maps them to 0), so loss and "
                                   "optimum are both 0"}
    if optimal > floor:
        return {"loss_ratio": loss / optimal}
    if loss <= floor:
        return {"loss_ratio": 1.0}
    share = f" ({loss / energy:.2e} of the layer's output energy)" if energy > 0 else ""
    spans = f"{data_rank} directions" if data_rank is not None and data_rank <= rank else f"at most {rank} directions"
    return {"loss_ratio": None,
            "loss_ratio_note": f"no ratio: the whitened optimum at rank {rank} is 0 (the calibration data, in "
                               f"this layer's objective, spans {spans}) while this {method} "
                               f"factorization leaves a loss of {loss:.3g}{share}"}


def approximation(m: LayerMath, dec: Decomposition, rank: int, root: torch.Tensor | None = None,
                  name: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(up (out, r), down (r, in), bias shift (out,) or None): the layer `compress_layer` would make
    from `dec` (of m, seen through L⁻¹ = root when weighted) at `rank`, the centered mean error
    included: without it a centered target's W' alone leaves (W − W')μ in every output."""
    fac = factors_from(dec, m.weight, rank, name=name)
    up, shift = fac.up, _mean_shift(m, fac.up, fac.down)
    if root is not None:  # back from V = L W to W
        inv = root.to(up.device, F64)
        up, shift = inv @ up, (inv @ shift if shift is not None else None)
    return up, fac.down, shift


@torch.no_grad()
def swapped_weight(model: nn.Module, name: str, approx: torch.Tensor, bias_shift: torch.Tensor | None = None):
    """Context manager: temporarily give linear `name` the dense weight `approx` (out, in), and add
    `bias_shift` (out,) to its bias (a centered factorization's mean error, `approximation`)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        module = model.get_submodule(name)
        saved, saved_bias = module.weight.data, module.bias
        module.weight.data = approx.to(saved.device, saved.dtype)
        if bias_shift is not None:
            shift = bias_shift.to(saved.device, saved.dtype)
            module.bias = nn.Parameter(shift if saved_bias is None else saved_bias.data + shift,
                                       requires_grad=False)
        try:
            yield
        finally:
            module.weight.data = saved
            module.bias = saved_bias
    return ctx()


def dense_record(info, method: str, bias: bool, time_s: float, why: str = "") -> dict:
    """The record of a target kept dense, its rank saving no parameters (`why`: ' (not calibrated)' where
    the pass skipped calibration, svd.SVDPass._left_dense)."""
    dense = params_dense(info.out_features, info.in_features, bias)
    return dict(role=info.role, shape=[info.out_features, info.in_features], method=method, params_dense=dense,
                rank="dense", kept_params=dense, note=f"rank would not save parameters: kept dense{why}", time_s=time_s)
