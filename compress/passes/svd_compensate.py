"""First-order compensation: a stage of targets absorbs the prediction error left before it.

The reference is the teacher's prediction (`svd.compensate_toward: teacher`, so the error of earlier
passes, such as removed blocks, is undone too) or the model's as the svd pass found it (`input`).
Once earlier layers are changed, the student's prediction differs from the reference by e. One
backward of ½||e||² gives each target of the next stage its weight gradient M = Σ g xᵀ
(svd_fisher.prediction_gradients). Under the Kronecker model of the prediction loss the pass already
factorizes in (output Fisher F ⊗ input Gram G), the weight change that best cancels e is the Newton
step Δ = −F̄⁻¹ M G⁻¹ (linalg_steps.kfac_step, F̄ = F per row). The stage's targets are then factorized at
W + β·Δ for β = 0 and the ×4 ladder STEPS[1:], then at the best β·2 and β/2, the calibration
prediction error is measured for each, and the best β is kept: β = 0 (plain factorization) is always
a candidate, so no stage makes the calibration error worse than its plain factorization would. A
pass's first stage tries the whole ladder; later stages walk it from the previous stage's best β
(`_walk`): on the toys (50% uniform and global, the embedded default) the same errors to the last
digit, with 0.65-0.66x the candidates (`tools/bench_replay.py`).

Why a measured β: the Kronecker model drops the coupling between the rows (tokens) of a sample,
whose errors add coherently, so it underestimates the curvature and its full step overshoots, the
more so the larger e is. Measured on the toy teachers:
- 50% kept parameters of attention + MLP, nothing else: best β 1/256 to 1/128 in every block (the full
  step made the error 30x worse); held-out prediction error −5% (PixArt), −10% (Flux).
- the embedded-default recipes (a block removed first, compensating toward the teacher): best β
  1/4096 to 1/1024 (PixArt) and 1/8 (Flux), measured with one stage per block; with the two stages
  the error after the svd passes fell from 0.273 to 0.166 (PixArt) and from 0.294 to 0.147 (Flux).

The svd pass runs this per stage: twice per block, in the order the block computes (its
attention-side targets: attention, cross-attention, modulation; then its MLP, whose gradient then
also sees the error the first stage left), and likewise for the targets outside the blocks (the top
level, e.g. PixArt's adaLN-single, which toward the teacher undoes earlier passes too; the tail). On the toy teachers at 50% the two stages cut the held-out error a
further 2.2% (PixArt) and 1.8% (Flux) against one search per block, for twice the cost.

A guard: a β at which some target's plain relative output error (its record's rel_output_error,
against the layer as the pass found it) exceeds REFUSE_ABOVE = 2, twice a zero output's, and its own at
β = 0, is not kept (`line_search`). The damped inverse Fisher grows the step most in the outputs the
prediction's Fisher barely weighs, which the calibration error barely sees: on a tiny random Flux (T1:
blocks removed, recipes/flux-dev-deep.yaml) the chosen steps left Flux's text stream before the single
blocks 81-350x its layers' outputs, 1.4e7 in the last double block's text output (the teacher's: 70),
NaN in float16, distill's feature loss at 7.5e10; with the guard, 1.5x at worst, 93 in that text
output, finite in float16, a feature loss of 4.4.
Not the factorization: without compensation every layer stayed below 0.84 there, and the
Fisher-weighted truncation alone stayed below 1 in a search over random weights and Fishers. Why not 1:
a compensating layer moves its output on purpose (toward the teacher, undoing a removed block): toy
PixArt's first stage keeps a step leaving attn1.to_k at 1.13x; refusing it moved the toy's numbers
(held-out error after its svd passes 0.1602 / 0.1555 against 0.1780 / 0.1717). The steps refused on the
tiny Flux were 43-700x; the toy recipes keep every number (none of the steps they keep is refused).

Cost per stage: one forward and backward, then at most len(STEPS) + 2 factorizations of its targets
and forwards, over `svd.compensate_batches` calibration batches (all by default; on the toy PixArt 1 or 2
of its 4 batches kept about 60% or 75% of the gain). The forwards and the backward start at the
stage's block: the blocks before it do not change during the stage, so the input of its block is
recorded once per block and replayed (`replay.Prefix`); on the toys at 50% this took the svd pass
to 0.74x (PixArt) / 0.66x (Flux) of its time with whole forwards, and with the walk to 0.56x / 0.53x,
the same error to the last digit
(`tools/bench_replay.py`). Deep models gain more (block k of N runs N − k blocks, not N).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import torch
from torch import nn

from compress.arch.base import LinearInfo
from compress.calib_stats import Stats
from compress.dtype_range import overflow_hint
from compress.errors import NumericError
from compress.linalg_steps import kfac_step
from compress.passes.svd_fisher import prediction_gradients
from compress.replay import Prefix

STEPS = (0.0,) + tuple(4.0**-k for k in range(9, 1, -1))  # fractions of the Newton step: 0, 4⁻⁹ … 1/16
GRAM_DAMPING = 1e-2  # ridge on G, relative to its mean eigenvalue (1e-3 … 1e-1 gave the same error)


def newton_steps(model: nn.Module, adapter, batches: list[dict], refs: list[torch.Tensor],
                 pairs: list[tuple[LinearInfo, Stats]], roots: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 probes: int, share: float = 1.0, prefix: Prefix | None = None,
                 guide=None) -> dict[str, torch.Tensor]:
    """name -> Δ (out, in) for the targets that have an output Fisher (`roots`, a dict or
    svd_fisher_roots.Roots: name -> (L, L⁻¹), L² = F + λI with F summed over `probes` probes and every
    calibration row) and an input Gram.
    `batches` may be a `share` of the calibration batches the Fisher summed over; `prefix` (a
    `replay.Prefix` over them) skips the blocks before the stage. Empty if nothing
    upstream has been changed yet (every gradient is zero)."""
    eligible = [(info, stats) for info, stats in pairs if info.name in roots]
    if not eligible:
        return {}
    grads = prediction_gradients(model, adapter, batches, refs, [i.name for i, _ in eligible], prefix, guide)
    steps = {}
    for info, stats in eligible:
        moment, rows = grads[info.name]  # (out, in) on the model's device
        if torch.count_nonzero(moment) == 0:
            continue
        all_rows = rows / share  # the rows the Fisher summed over
        inv = roots[info.name][1].to(moment)
        per_row_inverse = probes * all_rows * (inv @ inv)  # (F / (probes · rows))⁻¹, (out, out)
        # the Gram must sum over the same rows: a modulation Gram is taken over a timestep grid and a
        # caption Gram over the caption tokens attention reads (the gradient's rows hold the padding
        # too), so rescale it to the gradient's row count
        gram = stats.gram.to(moment) * (all_rows / max(stats.rows, 1))  # (in, in)
        # the gradient over a share of the rows stands for the whole sum: M / share
        steps[info.name] = kfac_step(moment / share, gram, per_row_inverse, GRAM_DAMPING, info.name)
    return steps


def line_search(model: nn.Module, pairs: list[tuple[LinearInfo, Stats]], steps: dict[str, torch.Tensor],
                factorize: Callable[[LinearInfo, Stats, torch.Tensor | None, object], dict],
                measure: Callable[[], float], near: float | None = None) -> tuple[dict[str, dict], dict]:
    """Factorize a stage's targets at W + β·Δ for β = 0 and the β of STEPS, then at the best β·2 and
    β/2 (one factorization and one calibration measurement each), and keep the best.
    near: an earlier stage's best β (> 0). The ladder STEPS[1:] is then walked from the step nearest
    to it (`_walk`) instead of tried whole; along a run the best β changes little between stages.
    A heuristic: where the error has several dips along the ladder the walk can stop at a worse one
    (`svd.compensate_search: ladder` tries every step).
    factorize(info, stats, step, rank): rank None lets the pass choose (done at β = 0); every later
    candidate keeps the rank chosen at β = 0, so candidates differ in their error only. Targets
    without a step are factorized once, before the search. A candidate whose error is NaN is never
    kept; a NaN/Inf error at β = 0 is a NumericError naming the layers. Nor is a β that leaves some
    layer's plain relative output error (its record's rel_output_error) above REFUSE_ABOVE and above
    its own at β = 0 (`_refused`): the damped inverse Fisher grows the step most in the outputs the
    prediction's Fisher barely weighs (see the module docstring). Returns (records by name, search
    summary); a kept record's time_s is its factorizations at every candidate, the summary's seconds
    the whole search, the calibration measurements included. The summary's `refused` lists the
    refused β and the layers each left above it; where the error alone would have kept one of them,
    `unguarded_step` names it and each layer it was refused for has a `guard` record (the step, its
    error there, why)."""
    start = time.perf_counter()
    records = {info.name: factorize(info, stats, None, None) for info, stats in pairs
               if info.name not in steps}
    stepped = [(info, stats) for info, stats in pairs if info.name in steps]
    originals = {info.name: model.get_submodule(info.name) for info, _ in stepped}
    errors, best, ranks, spent = {}, None, {}, {}
    # β -> (the worst refused layer's plain error, 0 where none is; the calibration error): the
    # order candidates are compared in, a refused β after every other, the less refused first
    keys: dict[float, tuple[float, float]] = {}
    plain: dict[str, float] = {}  # name -> its plain relative output error at β = 0
    refused: dict[float, dict[str, float]] = {}  # β -> {name: its plain relative output error there}

    def trial(beta: float) -> None:
        nonlocal best
        found = {}
        for info, stats in stepped:
            found[info.name] = factorize(info, stats, beta * steps[info.name] if beta else None,
                                         ranks.get(info.name))
            ranks.setdefault(info.name, found[info.name]["rank"])
            spent[info.name] = spent.get(info.name, 0.0) + found[info.name].get("time_s", 0.0)
        errors[beta] = measure()
        if not beta:
            plain.update({n: rec.get("rel_output_error") for n, rec in found.items()})
        worse = _refused(found, plain) if beta else {}
        if worse:
            refused[beta] = worse
        keys[beta] = (max(worse.values(), default=0.0), errors[beta])
        if best is None or keys[beta] < best[0]:  # a NaN candidate is never the best
            best = (keys[beta], beta, found, {n: model.get_submodule(n) for n in originals})
        for name, module in originals.items():  # back to dense for the next candidate
            model.set_submodule(name, module)
        if not beta and not math.isfinite(errors[beta]):  # nothing to compare the steps with
            raise NumericError(f"layers {sorted(originals)}: the calibration prediction error with "
                               f"their plain factors is {errors[beta]}: the forward overflowed "
                               f"({overflow_hint(next(model.parameters()).dtype)})")

    trial(0.0)
    ladder = STEPS[1:]
    if near:
        _walk(ladder, min(range(len(ladder)), key=lambda j: abs(math.log(ladder[j] / near))), trial, keys)
    else:
        for beta in ladder:
            trial(beta)
    if best[1]:
        for beta in (best[1] * 2, best[1] / 2):
            trial(beta)
    (_, error), beta, found, modules = best
    for name, module in modules.items():
        model.set_submodule(name, module)
    found = {name: dict(rec, time_s=round(spent[name], 4)) if "time_s" in rec else rec
             for name, rec in found.items()}
    chosen = min((b for b in errors if math.isfinite(errors[b])), key=errors.get)  # by the error alone
    guarded = refused.get(chosen, {})
    found = {name: dict(rec, guard={"step": chosen, "rel_output_error": guarded[name], "why": GUARD_WHY})
             if name in guarded else rec for name, rec in found.items()}
    return {**records, **found}, {"step": beta, "calibration_error": error,
                                  "uncompensated_error": errors[0.0], "candidates": len(errors),
                                  **({"refused": _refused_summary(refused)} if refused else {}),
                                  **({"unguarded_step": chosen} if guarded else {}),
                                  "seconds": round(time.perf_counter() - start, 3)}


REFUSE_ABOVE = 2.0  # a step's largest plain relative output error (a zero output's: 1; see the module docstring)

# a layer's record's `guard`, where the step the calibration error alone would have kept was refused for it
GUARD_WHY = (f"the compensation step the calibration error alone would have kept left this layer's plain relative "
             f"output error above {REFUSE_ABOVE:g} ({REFUSE_ABOVE:g}x a zero output's), in outputs the prediction's "
             "Fisher barely weighs, so the step's damped inverse Fisher grows them: its stage kept the best step "
             "that did not")


def _refused(found: dict[str, dict], plain: dict[str, float]) -> dict[str, float]:
    """name -> plain relative output error of each layer of a candidate (`found`: records by name)
    above REFUSE_ABOVE and above its own at β = 0 (`plain`): made so by the step."""
    out = {}
    for name, rec in found.items():
        error = rec.get("rel_output_error")
        if isinstance(error, float) and not error <= max(REFUSE_ABOVE, plain.get(name) or 0.0):  # NaN: refused
            out[name] = error
    return out


def _refused_summary(refused: dict[float, dict[str, float]]) -> list[dict]:
    """A stage's refused candidates, by β: the layers each left above REFUSE_ABOVE, their errors."""
    return [{"step": beta, "layers": worse} for beta, worse in sorted(refused.items())]


def _walk(ladder: tuple[float, ...], start: int, trial: Callable[[float], None], errors: dict) -> None:
    """Try ladder[start] and its neighbours, then keep stepping the way the error falls until it
    rises or the ladder ends (the whole ladder's best when the error is unimodal along it); then the
    top step, if not tried yet: on a tiny random Flux one stage's errors dipped at 4⁻⁵, rose, and
    fell lower at 1/16 (truncating W + β·Δ can switch the kept directions between steps).
    errors: β -> what candidates compare by (line_search's keys: refused steps after the others),
    filled by `trial`."""
    around = [j for j in (start - 1, start, start + 1) if 0 <= j < len(ladder)]
    for j in around:
        trial(ladder[j])
    here = min(around, key=lambda j: errors[ladder[j]])
    way = here - start
    while way and 0 <= here + way < len(ladder):
        trial(ladder[here + way])
        if errors[ladder[here + way]] >= errors[ladder[here]]:
            break
        here += way
    if ladder[-1] not in errors:
        trial(ladder[-1])
