"""svd.objective: the prediction the svd pass's output Fishers and compensation weigh errors by. `branches`
(the default): each calibration row's own, the prompt's branch and the empty prompt's alike; `guided`: the
prediction a user samples with, u + s·(c − u) of each input's two classifier-free-guidance rows (s the
source's guidance scale, the held-out guided error's); `guided_fisher` / `guided_compensation`: that part
alone. The guided Fisher's probes go back from each pair's guided prediction; a layer whose input a pair
shares (a modulation linear on the timestep) has one error for the pair, so the pair is one of its Fisher's
rows (guided.CalibrationGuidance.shared). Compensation fits toward the teacher's guided prediction and its
line search measures the guided calibration error.

Measured on the toy recipes (both svd passes set; held-out conditional / guided error, branches → this):
- guided_compensation, seeds 0-2: after the svd passes the guided error 0.69-0.84x, the conditional 1.13-1.47x
  (PixArt seed 0: 0.1717 / 0.2249 → 0.1946 / 0.1618); after distill both lower: PixArt 0.93-0.97x, Flux
  0.95-0.995x (PixArt seed 0: 0.06519 / 0.1089 → 0.06065 / 0.1024; Flux: 0.08019 / 0.1545 → 0.07914 / 0.1537).
  The svd passes took 0.92-1.04x the time.
- guided_fisher, seed 0: PixArt 0.1611 / 0.2224 after the svd passes, 0.06374 / 0.1084 after distill; Flux
  worse than branches (0.1565 / 0.2748, 0.08074 / 0.1556). guided: PixArt 0.1884 / 0.1789, 0.06279 / 0.1055;
  Flux 0.2193 / 0.2098, 0.0782 / 0.1537."""

from __future__ import annotations

from compress.errors import UserError

PARTS = {"branches": (), "guided": ("fisher", "compensation"), "guided_fisher": ("fisher",),
         "guided_compensation": ("compensation",)}


def calibration_guidance(objective: str, heldout_guidance, batches: list[dict], scale: float | None = None):
    """guided.CalibrationGuidance of the calibration `batches` (each batch's CFG row pairs, at the scale of the
    source's `heldout_guidance()`, or `scale` (a pipeline's calibration.guidance_scale) before its held-out
    inputs are read), or None for objective branches. A UserError where the inputs hold no such pairs (no CFG
    branches, a source that samples one branch)."""
    if not PARTS[objective]:
        return None
    from compress.guided import CalibrationGuidance, calibration_pairs

    held = heldout_guidance()
    scale = held.scale if held is not None else scale
    pairs = [calibration_pairs(b) for b in batches]
    split = [i for i, (p, b) in enumerate(zip(pairs, batches)) if p is None and b["hidden_states"].shape[0] % 2]
    if scale is not None and split:  # an odd row count: some input's other branch is in another batch
        rows = batches[split[0]]["hidden_states"].shape[0]
        raise UserError(f"svd.objective {objective} needs both classifier-free-guidance branches of each input in "
                        f"one calibration batch, and calibration batch {split[0] + 1} holds {rows} rows (an odd "
                        "calibration.batch_size splits an input's two branches across batches); set an even "
                        "calibration.batch_size, or svd.objective: branches")
    if scale is None or any(p is None for p in pairs):
        raise UserError(f"svd.objective {objective} needs calibration inputs holding both classifier-free-guidance "
                        "branches of each input (calibration.cfg_branches: true, a source that samples with "
                        "guidance); set svd.objective: branches")
    return CalibrationGuidance(scale, pairs)


def no_pairs(calib, kind: str, single: bool) -> tuple[str, str, tuple[str, ...]] | None:
    """(why, what to set, the calibration keys read) where the recipe alone tells that its calibration
    inputs hold no CFG pair of any input, or a toy source's odd batch_size splits some (ToySource.calibration
    chunks the interleaved rows u0, c0, u1, c1, … by it) (`calib`: its CalibrationConfig; `kind`: its source's,
    inputs.source_kind; `single`: a pipeline source's pipeline runs one branch, calib_prompts.one_branch),
    as the sources draw them (inputs.ToySource, calib_pipeline.PipelineSource.guidance); None where the
    sampled records alone can tell (then calibration_guidance refuses when the pass starts)."""
    if kind == "synthetic":
        return "calibration.source synthetic draws random inputs, no such pairs", "", ("calibration.source",)
    if kind == "pipeline" and single:
        return ("FluxPipeline runs one branch per step (FLUX.1-dev takes guidance as an input, FLUX.1-schnell "
                "samples unguided)", "", ("calibration.source",))
    if not calib.cfg_branches:
        return ("calibration.cfg_branches is false (the inputs hold the prompt's branch alone)",
                "calibration.cfg_branches: true", ("calibration.cfg_branches",))
    if kind == "toy" and calib.batch_size % 2 and calib.batch_size < 2 * calib.num_prompts * calib.timesteps:
        return (f"calibration.batch_size {calib.batch_size} is odd (a batch would split an input's two branches)",
                "an even calibration.batch_size", ("calibration.batch_size",))
    if kind == "pipeline" and calib.guidance_scale <= 1:
        return (f"calibration.guidance_scale {calib.guidance_scale:g} turns classifier-free guidance off",
                "calibration.guidance_scale above 1", ("calibration.guidance_scale",))
    return None


def guide_for(objective: str, guide, part: str):
    """`guide` where svd.objective guides `part` ("fisher", "compensation"), else None (each row's own)."""
    return guide if part in PARTS[objective] else None
