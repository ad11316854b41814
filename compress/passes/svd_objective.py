"""svd.objective: the prediction the svd pass's output Fishers and compensation weigh errors by. `branches`:
each calibration row's own, the prompt's branch and the empty prompt's alike; `guided`: the
prediction a user samples with, u + s·(c − u) of each input's two classifier-free-guidance rows (s the
source's guidance scale, the held-out guided error's); `guided_fisher` / `guided_compensation`: that part
alone. The guided Fisher's probes go back from each pair's guided prediction; a layer whose input a pair
shares (a modulation linear on the timestep) has one error for the pair, so the pair is one of its Fisher's
rows (guided.CalibrationGuidance.shared). Compensation fits toward the teacher's guided prediction and its
line search measures the guided calibration error. `auto` (the default): `guided_compensation` where a distill
pass follows, the calibration holds each input's two branches and compensation applies, else `branches`
(`resolve`; the runner and plan resolve it before their checks, `runner_checks_objective`).

On the embedded default, `python tools/bench_objective.py --family pixart|flux [--seed N] [--objectives ...]`
runs the recipe once per objective (both svd passes set) and prints the held-out conditional / guided error
after the svd passes and after distill, the svd passes' seconds, and each objective's over the first's
(branches by default; README quotes its guided_compensation figures, commit 2383677's message all four's)."""

from __future__ import annotations

from compress.errors import UserError

PARTS = {"branches": (), "guided": ("fisher", "compensation"), "guided_fisher": ("fisher",),
         "guided_compensation": ("compensation",)}
AUTO = "auto"  # resolved per pass to one of PARTS (`resolve`)
OBJECTIVES = (AUTO, *PARTS)  # svd.objective's choices
RESOLVED = "_objective"  # on an SVDConfig under auto: (the objective it runs as, why), not a field (asdict)
# what the toy recipes measured (tools/bench_objective.py, seeds 0-2), the reason auto gives for each side
AFTER_SVD = ("right after the svd passes guided_compensation measured 1.15-1.47x branches' conditional error on "
             "the toy recipes")
AFTER_DISTILL = ("after distillation it measured 0.94-0.99x branches' conditional and guided errors on the toy "
                 "recipes")


def resolve(c, distill_line: int | None, unpaired: str | None, stream: bool, saved_before: bool) -> tuple[str, str]:
    """(the objective an svd pass of config `c` runs as, why) under svd.objective auto: guided_compensation
    where a distill pass follows it (`distill_line`: the first one's recipe line, None: none), its calibration
    inputs hold both CFG branches of each input as far as the recipe tells (`unpaired`: why not, no_pairs'
    words; None: they do, or only the sampled inputs tell), it weighs by the prediction's Fisher (fisher all
    or modulation), compensates and is not streamed (`stream`); else branches. `saved_before`: `c` is a
    saved recipe's that writes no objective key (saved before svd.objective existed, its runs branches').
    An explicit objective is itself, with no reason."""
    from compress.passes.svd_config import no_compensation

    if c.objective != AUTO:
        return c.objective, ""
    blocked = no_compensation(c)
    why = ("a saved recipe written before svd.objective existed (it has no objective key), whose run weighed "
           "by branches" if saved_before else
           "stream: true (the prediction's Fisher needs the whole model)" if stream else
           f"no compensation {blocked[0]}" if blocked else
           f"{unpaired}" if unpaired else
           f"no distill pass follows it; {AFTER_SVD}" if distill_line is None else None)
    if why is not None:
        return "branches", why
    return "guided_compensation", (f"the distill pass at line {distill_line} follows it and its calibration holds "
                                   f"both classifier-free-guidance branches of each input; {AFTER_DISTILL}")


def objective_of(c) -> str | None:
    """The objective an svd pass of config `c` runs as: its resolution under auto (`RESOLVED`; unresolved,
    as a pass made outside the runner and plan: branches, the objective before auto), else its own."""
    resolved = getattr(c, "__dict__", {}).get(RESOLVED)
    if resolved is not None:
        return resolved[0]
    given = getattr(c, "objective", "branches")
    return "branches" if given == AUTO else given


def set_resolved(c, objective: str, why: str) -> None:
    """Record on config `c` (svd.objective auto) the objective it runs as, and why."""
    c.__dict__[RESOLVED] = (objective, why)


def resolved_step(c) -> dict | None:
    """{"given": "auto", "runs_as": objective, "why": reason} of a pass resolved under auto (plan's step, its
    --json), None otherwise."""
    resolved = getattr(c, "__dict__", {}).get(RESOLVED)
    return None if resolved is None else {"given": AUTO, "runs_as": resolved[0], "why": resolved[1]}


def resolved_words(step: dict) -> str:
    """plan's line of a `resolved_step`: 'objective auto runs as guided_compensation: why'."""
    return f"objective {step['given']} runs as {step['runs_as']}: {step['why']}"


def calibration_guidance(objective: str, heldout_guidance, batches: list[dict], scale: float | None = None,
                         source: str | None = None):
    """guided.CalibrationGuidance of the calibration `batches` (each batch's CFG row pairs, at the scale of the
    source's `heldout_guidance()`, or `scale` (a pipeline's calibration.guidance_scale) before its held-out
    inputs are read), or None for objective branches. A UserError where the inputs hold no such pairs (no CFG
    branches, a source that samples one branch), in words for the source's kind `source` (inputs.source_kind:
    a pipeline's batches are whole transformer calls, the toy's cut from its interleaved rows)."""
    if not PARTS[objective]:
        return None
    guidance, refusal, _ = _guidance(objective, heldout_guidance, batches, scale, source)
    if refusal is not None:
        raise UserError(refusal)
    return guidance


def pass_guidance(c, heldout_guidance, batches: list[dict], scale: float | None = None, source: str | None = None):
    """`calibration_guidance` of the objective an svd pass of config `c` runs as (`objective_of`). Under
    svd.objective auto, never a refusal: where the sampled inputs pair no branches (what the recipe alone
    could not tell: a pipeline whose calls hold one branch each), the pass runs as branches, said in one note
    and recorded on `c` (its report's objective)."""
    objective = objective_of(c)
    if not PARTS[objective] or c.objective != AUTO:
        return calibration_guidance(objective, heldout_guidance, batches, scale, source)
    guidance, refusal, why = _guidance(objective, heldout_guidance, batches, scale, source)
    if refusal is None:
        return guidance
    from compress.report import note

    set_resolved(c, "branches", why)
    note(f"svd.objective auto runs as branches, not {objective}: {why}")
    return None


def _guidance(objective: str, heldout_guidance, batches: list[dict], scale: float | None, source: str | None):
    """(guided.CalibrationGuidance, None, None) of `calibration_guidance`, or (None, its refusal, why in a
    few words) where the inputs pair no branches."""
    from compress.guided import CalibrationGuidance, calibration_pairs

    held = heldout_guidance()
    scale = held.scale if held is not None else scale
    pairs = [calibration_pairs(b) for b in batches]
    unpaired = [i for i, p in enumerate(pairs) if p is None]
    if scale is not None and unpaired and source == "pipeline":
        b, rows = unpaired[0], batches[unpaired[0]]["hidden_states"].shape[0]
        return None, _pipeline_words(objective, b, rows), (
            f"calibration batch {b + 1} ({rows} rows, whole calls of the calibration pipeline to its transformer) "
            "does not hold each input's empty-prompt and prompt branches (the pipeline runs them in calls of their "
            "own, or one branch alone)")
    split = [i for i in unpaired if batches[i]["hidden_states"].shape[0] % 2]
    if scale is not None and split:  # an odd row count: some input's other branch is in another batch
        rows = batches[split[0]]["hidden_states"].shape[0]
        why = (f"calibration batch {split[0] + 1} holds {rows} rows (an odd calibration.batch_size splits an "
               "input's two branches across batches)")
        return None, (f"svd.objective {objective} needs both classifier-free-guidance branches of each input in "
                      f"one calibration batch, and {why}; set an even calibration.batch_size, or svd.objective: "
                      "branches"), why
    if scale is None or unpaired:
        return None, (f"svd.objective {objective} needs calibration inputs holding both classifier-free-guidance "
                      "branches of each input (calibration.cfg_branches: true, a source that samples with "
                      "guidance); set svd.objective: branches"), (
            "the calibration inputs do not hold both classifier-free-guidance branches of each input")
    return CalibrationGuidance(scale, pairs), None, None


def _pipeline_words(objective: str, b: int, rows: int) -> str:
    """Why a pipeline source's calibration batch `b` (0-based) of `rows` rows pairs no branches: rebatch joins
    whole records, one per transformer call, so the pipeline's calls do not hold each input's two branches
    ([empty prompt × k; prompt × k], as diffusers' CFG pipelines batch them); no batch size would pair them."""
    what = "an odd number of rows" if rows % 2 else "rows that are not each input's two branches"
    return (f"svd.objective {objective} needs both classifier-free-guidance branches of each input in one "
            f"calibration batch, and calibration batch {b + 1} ({rows} rows, whole calls of the calibration pipeline "
            f"to its transformer) holds {what}: the pipeline does not run each input's empty-prompt and prompt "
            "branches in one transformer call (it runs them in calls of their own, or one branch alone); calibrate "
            "through a pipeline that batches both (as diffusers' PixArtSigmaPipeline does), or set svd.objective: "
            "branches")


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
