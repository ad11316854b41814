"""Each stage's held-out error, the run's check of its student against the teacher: measured once the
stage is saved (check_stage: printed, added to the stage's record and state.json, warned of above 1),
and on --resume for a kept stage stopped before it was (check_kept). Where the source's pipeline samples
with classifier-free guidance, beside it the error of the guided prediction (guided_error; above 1 warned of too)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import torch

from compress.errors import NumericError
from compress.guided import guided_predictions, relative_distance
from compress.inputs import PIPELINE_HELDOUT_SEED, heldout_seed, moved, older_heldout_is_todays
from compress.passes.base import relative_error
from compress.passes.distill_resume import lower_lr, trains_again
from compress.report import console, is_number, note, warn
from compress.report_card import against_base
from compress.runner_setup import DTYPES, locate
from compress.runner_stages import save_state


def check_stage(runner, student, record: dict, reference, heldout, teacher_params: int) -> None:
    """The held-out error of the student of pass `runner.doing`, printed and added to its stage
    `record` (its seconds too) and to the stage's state.json. A streamed run's last pass records there
    the largest activations of that forward too (activation_range.stage_maxima): its export measures no
    weights of its own, and warns from them (runner_export.exported_error)."""
    from compress.activation_range import block_names, recording_if, stage_maxima

    guide = guided_reference(runner, reference)  # the teacher's, once (before this stage's clock)
    t0 = time.perf_counter()
    last = runner.recipe.stream and runner.doing == len(runner.passes) - 1
    kept = [] if guide is not None else None  # the student's predictions, guided below
    with runner.models.forwards(student):
        with recording_if(last, student, runner.adapter) as maxima:
            err = relative_error(student, reference, runner.adapter, heldout, kept=kept)
            if not math.isfinite(err):  # (the teacher's reference is checked finite): refused before the export
                raise NumericError(nonfinite_words(runner, student, heldout))
        guided = guided_error(runner, student, kept, guide) if guide is not None else {}
    record.update(seconds=round(record["seconds"] + time.perf_counter() - t0, 3), relative_error=err, **guided)
    runner.ctx.report["heldout"] = draw_marks(runner)  # which stages were measured on which draw (older_heldout_note)
    if maxima is not None:
        record.update(stage_maxima(maxima, block_names(student, runner.adapter)))
    save_state(runner, runner.doing)
    console.print(f"  params {record['params']:,} / {teacher_params:,}   teacher-relative error {err:.4g}"
                  f"{guided_words(record)}{against_base_words(record)}")
    for value, guided in ((err, False), (record.get("guided_error"), True)):  # guided: None where not finite
        if is_number(value) and (said := above_one_words(value, "the student", guided)):
            warn(f"{runner._doing_words()}: {said}; check this pass's settings")


def above_one_words(err: float, whose: str, guided: bool = False) -> str | None:
    """What a teacher-relative error `err` above 1 of the model `whose` means (the run's check says it of
    each stage, eval of the model it measures); `guided`: of its guided prediction (guided_error), against
    the teacher's. None where it is at most 1 (or NaN)."""
    if not err > 1:
        return None
    what, of = ("guided error", "the teacher's guided prediction") if guided else (
        "teacher-relative error", "the teacher")
    return f"{whose}'s {what} {err:.4g} is above 1: a model predicting zeros would be closer to {of}"


def guided_reference(runner, reference: list) -> tuple | None:
    """(the source's guided.HeldOutGuidance, the teacher's guided prediction of each held-out batch),
    computed at the first call and kept on `runner`; None where the source's pipeline samples one branch
    (ctx.heldout_guidance: Flux.1-dev, synthetic inputs, calibration.cfg_branches false). The toy source's
    empty-prompt batches are forwards of their own, as many as the held-out ones."""
    if not hasattr(runner, "held_out_guided"):
        guidance = source_guidance(runner.ctx.heldout_guidance, runner.device, DTYPES[runner.recipe.compute_dtype])
        runner.held_out_guided = None
        if guidance is not None:
            with runner.models.forwards(runner.teacher):
                runner.held_out_guided = guidance, guided_of(runner.adapter, runner.teacher, reference, guidance)
    return runner.held_out_guided


def source_guidance(heldout_guidance, device, dtype):
    """A source's heldout_guidance() (guided.HeldOutGuidance, or None where its pipeline samples one branch),
    the toy source's empty-prompt batches moved to `device` in `dtype` as its held-out batches are (the run's
    check and eval's)."""
    guidance = heldout_guidance()
    if guidance is not None and guidance.unconditional is not None:
        guidance = replace(guidance, unconditional=[moved(b, device, dtype) for b in guidance.unconditional])
    return guidance


def guided_of(adapter, model, predictions: list, guidance) -> list:
    """`model`'s guided predictions of the held-out batches from its `predictions` of them (float64), its
    forwards (the toy source's empty-prompt batches) run as the caller allows them (runner.models.forwards)."""
    with torch.no_grad():
        return guided_predictions(predictions, guidance, lambda kw: adapter.predict(model, kw).double())


def guided_distance(adapter, student, predictions: list, guide: tuple) -> float:
    """||guided(student) − guided(teacher)|| / ||guided(teacher)|| over the held-out batches, the student's
    guided from its `predictions` of them (guide: (guided.HeldOutGuidance, the teacher's guided predictions));
    the run's check (guided_error) and eval's."""
    guidance, teacher = guide
    return relative_distance(guided_of(adapter, student, predictions, guidance), teacher)


def guided_error(runner, student, predictions: list, guide: tuple) -> dict:
    """{"guided_error": ||guided(student) − guided(teacher)|| / ||guided(teacher)||} over the held-out batches
    (guide: guided_reference's), the student's guided from its `predictions`; null, warned of, where its
    guided prediction holds NaN/Inf (its empty prompt's branch: the prompt's is checked finite first)."""
    whose = lambda: f"{runner._doing_words()}: the student"  # noqa: E731 (said only where not finite)
    return {"guided_error": finite_guided(runner.adapter, student, predictions, guide, whose)}


def finite_guided(adapter, student, predictions: list, guide: tuple, whose: Callable[[], str]) -> float | None:
    """guided_distance where it is finite; else None, warned of: '{whose()}'s guided prediction (with the
    empty prompt's branch) holds NaN/Inf' (the run's check, guided_error, and its export's)."""
    err = guided_distance(adapter, student, predictions, guide)
    if math.isfinite(err):
        return err
    warn(f"{whose()}'s guided prediction (with the empty prompt's branch) holds NaN/Inf")
    return None


def heldout_record(runner) -> dict:
    """report.json's `heldout`: the held-out inputs every stage's errors are measured on, `inputs` (rows of the
    transformer's batch: a pipeline's both CFG branches counted), and `guidance_scale`, the scale s of the stages'
    guided_error (None where the source's pipeline samples one branch: none is recorded); and draw_marks'."""
    held = getattr(runner, "held_out", None)  # (batches, the teacher's predictions): Runner._run's
    guide = getattr(runner, "held_out_guided", None)  # a resumed run that checked no stage computed none
    guidance = guide[0] if guide is not None else runner.ctx.heldout_guidance()
    return {"inputs": sum(b["hidden_states"].shape[0] for b in held[0]) if held is not None else None,
            "guidance_scale": None if guidance is None else guidance.scale, **draw_marks(runner)}


def draw_marks(runner) -> dict:
    """Which held-out draw the stages' errors are of: {"seed": today's draw's}; where a --resume kept passes
    an older dit-compress measured on an older draw (runner.older_heldout, check_kept: their count), no seed
    (as their stages' reports) but {"older_draw_stages": N}: the first N stages are of the older draw, the
    later ones and the export's error of today's."""
    if older := getattr(runner, "older_heldout", 0):
        return {"older_draw_stages": older}
    return {"seed": heldout_seed(runner.ctx.source_kind)}


def guided_words(record: dict) -> str:
    """What the stage line adds where the stage `record` has a guided error: ' (guided 0.1702)'; else ''."""
    value = record.get("guided_error")
    return f" (guided {value:.4g})" if is_number(value) else ""


def nonfinite_words(runner, student, heldout: list[dict]) -> str:
    """Why the student of pass `runner.doing` has no finite held-out error: its prediction holds NaN/Inf,
    on which held-out batch, which layer's output holds it first (runner_setup.check_reference's words
    for the teacher), what to change and what --resume then keeps: its stage is deleted (Runner._checked,
    runner_stages.drop_refused), so --resume runs the pass again, from the stage before it (a distill
    pass from its start: its checkpoints went as its stage was saved, DistillPass.stage_saved)."""
    bad, where = None, ""
    for b, kwargs in enumerate(heldout):
        if (found := locate(student, runner.adapter, kwargs)) is not None:
            bad, where = b, f": {found}"
            break
    batch = f" on held-out batch {bad + 1} of {len(heldout)}" if bad is not None else ""
    return f"{runner._doing_words()}: the student's prediction holds NaN/Inf{batch}{where}; {_rerun_words(runner)}"


def _rerun_words(runner) -> str:
    """What to change of pass `runner.doing` refused for NaN/Inf, and what --resume keeps: a distill pass's
    lr by its key, as its own divergence words say it (distill_resume.lower_lr, trains_again); another's
    settings, '(it keeps the passes before it)' where there are some."""
    i, p = runner.doing, runner.passes[runner.doing]
    if p.name == "distill":
        return f"{lower_lr(p.config, i)} ({trains_again(p.config, i)})"
    return f"change its settings and rerun with --resume{' (it keeps the passes before it)' if i else ''}"


def against_base_words(record: dict) -> str:
    """What the stage line adds where its pass distilled toward the chain's base (the stage `record`'s
    `kd_teacher`: Pass.against_base): which teacher each error is against, as that pass's note and inspect
    say its own: ' (against the recipe's teacher; against the chain's base BASE 0.0776)'; else ''."""
    if (base := against_base(record)) is None:
        return ""
    return (f" (against the recipe's teacher; against the chain's base {base.get('source')} "
            f"{base['relative_error']:.4g})")


def check_kept(runner, start: int, student, reference, heldout, teacher_params: int) -> None:
    """A resumed run whose last kept pass was stopped before its held-out error was measured (during
    its held-out check, Runner._stage, or while its streamed stage was written, runner_restore._finish): its
    error measured now, on the restored student."""
    kind, seed = runner.ctx.source_kind, runner.recipe.calibration.seed
    if older := older_draw_stages(runner.ctx.report, start, kind, seed):
        runner.older_heldout = older  # the kept errors stay of the older draw (draw_marks records it)
        note(older_heldout_note(older, kind, seed))
    record = (runner.ctx.report.get("stages") or [{}])[-1]
    if start == 0 or "relative_error" not in record or record["relative_error"] is not None:
        return
    runner.doing = start - 1
    where, when = getattr(runner, "stopped_in", None) or (None, "check")
    when = when if where == start - 1 else "check"
    console.print(f"  {unmeasured_in_words(start, len(runner.passes), record['pass'], when)}", highlight=False)
    check_stage(runner, student, record, reference, heldout, teacher_params)


STOPPED = {"check": "during its held-out check",  # (Runner._stage)
           "write": "while its stage was being written, before its held-out check",  # (runner_restore._finish)
           "adopt": "after its stage was saved, before its held-out check"}  # (runner_restore._finish_adopting)


def unmeasured_in_words(done: int, total: int, name: str, when: str) -> str:
    """What --resume says of kept pass `done` (of `total`, from 1) whose held-out error it measures:
    where the run stopped (`when`, a key of STOPPED): during that check, while the pass's stage was
    being written (--resume has just finished it), or once it was saved, before the check began."""
    return f"pass {done}/{total} ({name}, kept) was stopped {STOPPED[when]}: measuring it now"


def older_heldout_draw(kind: str, seed: int) -> int:
    """The seed an older dit-compress drew the held-out inputs of calibration.seed `seed` with, for a source of
    `kind`: seed + 1, a pipeline source's held-out prompts seed + 10000 (inputs.older_heldout_is_todays)."""
    return seed + (PIPELINE_HELDOUT_SEED if kind == "pipeline" else 1)


def older_heldout_eval_note(report: dict, kind: str, seed: int) -> str | None:
    """What eval says of an output whose `report` (report.json) records its stages' errors but no held-out seed
    (an older dit-compress's) where that draw is not today's (older_heldout_is_todays): the pred_rel_error it
    measures now is on other held-out inputs than report.json's stages' (a pipeline source's prompts sampled
    again: its inputs_cache holds the older draw's calls). A resumed run's report whose first N stages only
    were of the older draw (heldout.older_draw_stages, draw_marks): said of those N, where the figure eval's is
    set beside (export's relative_error; the last stage's where the export's is that or none) is theirs;
    nothing where it was measured on today's inputs. None otherwise."""
    stages, heldout = report.get("stages"), report.get("heldout") or {}
    if not stages or heldout.get("seed") is not None or older_heldout_is_todays(kind, seed):
        return None
    older = heldout.get("older_draw_stages")
    if older is not None and (older < len(stages) or _export_measured(report)):
        return None  # the later stages and the export: on the inputs eval measures on
    whose = "report.json's errors" if older is None else \
        f"the errors of report.json's first {older} stage{'s' if older > 1 else ''} (a --resume kept them)"
    return (f"eval: {whose} were measured by an older dit-compress, on held-out inputs drawn for calibration.seed "
            f"{seed} (with seed {older_heldout_draw(kind, seed)}); eval measures on the held-out inputs every seed "
            "shares now, so its pred_rel_error is not on report.json's stages' inputs")


def _export_measured(report: dict) -> bool:
    """Whether report.json's export error was measured by the export itself (not the last stage's copy, where
    `exact`, nor none: a streamed run's), so on the held-out inputs of the run's own draw."""
    export = report.get("export") if isinstance(report.get("export"), dict) else {}
    return is_number(export.get("relative_error")) and not export.get("exact")


def older_draw_stages(report: dict, start: int, kind: str, seed: int) -> int:
    """How many of the passes a --resume keeps (before `start`) had their held-out errors measured by an older
    dit-compress, on the held-out inputs it drew with calibration.seed (`seed`) + 1 (a pipeline source's
    + 10000), which are not those drawn now for a source of `kind` (inputs.older_heldout_is_todays): the
    restored `report`'s heldout.older_draw_stages where an earlier --resume recorded it (its later stages:
    today's draw), else every kept pass measured (none of them records a seed). 0 where the report records
    today's held-out `seed` (check_stage does for every stage measured on today's draw), no kept pass was
    measured (a run stopped during its first pass's held-out check: check_kept measures it now) or the two
    draws are one (seed 0, but synthetic). check_kept's one count: its note's and draw_marks' record."""
    heldout = report.get("heldout") or {}
    if heldout.get("seed") is not None or older_heldout_is_todays(kind, seed):
        return 0
    measured = sum(s.get("relative_error") is not None for s in (report.get("stages") or [])[:start])
    recorded = heldout.get("older_draw_stages")
    return min(recorded, measured) if is_number(recorded) else measured


def older_heldout_note(measured: int, kind: str, seed: int) -> str:
    """What --resume says where `measured` of the passes it keeps (older_draw_stages) had their held-out errors
    measured on an older dit-compress's draw of a source of `kind` for calibration.seed `seed`."""
    return (f"--resume: the held-out errors of the {measured} pass{'es' if measured > 1 else ''} kept were measured "
            f"by an older dit-compress, on held-out inputs drawn for calibration.seed {seed} (with seed "
            f"{older_heldout_draw(kind, seed)}: each seed had its own); "
            "the passes run now are measured on the held-out inputs every seed shares, so their errors and the kept "
            "ones' are not on the same inputs: rerun with --restart to measure every pass on them")
