"""A run folder's saved stage against the calibration inputs a recipe reads now (its prompts, the parts
of the pipeline it samples in), told before the teacher loads: a plain rerun's refusal
(runner_folders.check_run_folder) and Ctrl-C's note (interrupt_note) offer --resume for a stage only
where --resume, which compares them (runner_restore._check_inputs), would keep it. Imports no torch."""

from __future__ import annotations

from pathlib import Path

from compress.calib_prompts import (chosen_prompts, lines_of, prompt_path, prompts_digest as digest_of,
                                    prompts_in_words)
from compress.errors import UserError, read_utf8
from compress.io_signature import pipeline_signature
from compress.runner_pending import read_record
from compress.runner_resume import inputs_change, read_state, stage_dirs


def inputs_changed(state: dict, recipe, teacher_source: str | None = None) -> str | None:
    """What --resume would say changed (runner_resume.inputs_change: 'the calibration prompts changed
    (...)') between a saved stage's `state`, its calibration inputs as a pipeline source recorded them,
    and what the Recipe `recipe` reads now: its prompts (`prompts_digest`), the parts of the pipeline it
    samples in (calibration.pipeline, else the teacher source `teacher_source`: pipeline_signature).
    None where nothing does, or where that is not known before the teacher loads: no `recipe`, a stage
    that records none (toy, synthetic, older runs); a prompt file or pipeline not readable now (the
    run says why) is not compared."""
    before = state.get("inputs")
    if recipe is None or not isinstance(before, dict):
        return None
    pipeline = recipe.calibration.pipeline or teacher_source
    try:
        parts = pipeline_signature(pipeline) if pipeline else before.get("pipeline")
    except UserError:
        parts = before.get("pipeline")
    prompts = prompts_digest(recipe)
    now = {"prompts": before.get("prompts") if prompts is None else prompts, "pipeline": parts}
    return inputs_change(before, now, pipeline or "", prompts_in_words(recipe.calibration))


def prompts_digest(recipe) -> str | None:
    """The digest of the prompts `recipe`'s pipeline source reads (calib_prompts.chosen_prompts, the
    rule read_prompts reads them by: its calibration.prompts, then prompt_file's lines, the first
    num_prompts where given) as calib_pipeline's inputs_identity records it, read quietly (the run
    reads them again, saying its notes and warnings); None where the prompt file cannot be read (the
    run says why)."""
    calib, lines = recipe.calibration, []
    if calib.prompt_file:
        try:
            lines = lines_of(read_utf8(prompt_path(calib, Path(recipe.path).parent), "", ""))
        except UserError:
            return None
    return digest_of(chosen_prompts(calib, lines))


def saved_state(run_dir: Path, i: int) -> dict:
    """The state of pass index `i`'s saved stage in `run_dir`, or of the streamed stage being written
    for it (runner_pending); {} where there is none or it cannot be read."""
    stage = dict(stage_dirs(run_dir)).get(i)
    if stage is not None:
        return read_state(stage) or {}
    pending = read_record(run_dir)
    return pending[1] if pending is not None and pending[0] == i else {}
