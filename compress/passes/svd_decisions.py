"""What an svd pass's config decides for its targets, without a pass (also read by plan, plan_fisher,
plan_factorize and calib_footprint): which targets are fitted to the reference (svd.asymmetric),
whether blocks are calibrated sequentially, which outputs the prediction's Fisher weighs; what of
the config streamed block weights refuse (`streaming_refusals`), and why a target is never fitted."""

from __future__ import annotations

from compress.arch.base import LinearInfo
from compress.passes.svd_config import SVDConfig
from compress.passes.svd_targets import is_model_wide, uses_output_gram
from compress.passes.svd_walk import from_conditioning
from compress.stream_refusals import Refusal

# why a target (of a whitened, student-activation pass) is never fitted to the reference, by target_kind
NOT_FITTED = {
    "conditioning": "the modulation linears read the conditioning (the timestep embedding; Flux's pooled text "
                    "too), whose stats are taken on the student's stream alone",
    "top level": "top-level layers are calibrated before the blocks, on the student's stream alone",
    "block": "a layer factorized on its output Gram (Flux's single-block proj_out) has no input to fit",
    "caption": "the cross-attention keys and values read the caption, which the student's stream leaves as the "
               "teacher's"}


def streaming_refusals(c) -> list[Refusal]:
    """What of an svd config needs whole-model forwards, which block weights streamed cannot run: the
    prediction's Fisher (and with it compensation and a guided svd.objective, which weighs by it),
    global allocation's measured sensitivities."""
    out = []
    if c.fisher in ("all", "modulation"):
        out.append(Refusal("fisher", c.fisher, "needs the whole model in memory (one forward and backward per "
                           "probe)", "block (each block's own output Fisher) or none"))
    if c.objective not in ("branches", "auto"):  # auto: branches when streamed (svd_objective.resolve)
        out.append(Refusal("objective", c.objective, "weighs by the prediction's Fisher, which needs the whole model "
                           "in memory", "branches (each calibration row's own prediction)"))
    if c.allocation == "global" and c.sensitivity is not False:
        shown = "true" if c.sensitivity else "on with allocation: global"
        out.append(Refusal("sensitivity", shown, "needs the whole model in memory (one forward per layer)",
                           "false", reads=("allocation",)))
    return out


# ---- what a pass's config decides for its targets (also read by calib_footprint, without a pass) ----
def fits_asymmetrically(c: SVDConfig, targets: list[LinearInfo]) -> bool:
    """Whether some target is fitted asymmetrically (a reference stream in the calibration): only
    block targets re-run within their block are (fitted_to_reference)."""
    return any(fitted_to_reference(c, i) for i in targets)


def calibrates_sequentially(c: SVDConfig, targets: list[LinearInfo]) -> bool:
    """svd.sequential resolved: auto is on where targets are fitted asymmetrically."""
    return c.sequential is True or (c.sequential == "auto" and fits_asymmetrically(c, targets))


def fitted_to_reference(c: SVDConfig, info: LinearInfo) -> bool:
    """Whether a target is fitted to the uncompressed model's outputs (svd.asymmetric): whitened,
    input Gram, student activations, stats from the blocks' streams (not the conditioning's,
    svd_walk.from_conditioning, nor the caption's: svd_targets.is_model_wide); under auto only
    targets without the prediction's Fisher
    (with it, the Fisher and compensation already weigh the upstream error by its effect on the
    prediction, and the layer-wise fit measured worse on both toys)."""
    if c.asymmetric is False or c.method != "whitened" or c.activations != "student" \
            or uses_output_gram(info) or from_conditioning(info) or is_model_wide(info):
        return False
    return c.asymmetric is True or not prediction_fisher(c, info)


def prediction_fisher(c: SVDConfig, info: LinearInfo) -> bool:
    """Whether a target's outputs are weighted by the output Fisher of the final prediction."""
    return c.fisher == "all" or (c.fisher == "modulation" and info.role == "modulation")
