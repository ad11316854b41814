"""What rank 0 writes at the end of a run, as plain functions of its Runner: the output's files
(report.json with the teacher it recorded, recipe.yaml, the model card, block_map.json) and the run
folder's stages/FINISHED mark."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

import compress
from compress.io_source import looks_local
from compress.io_export import ranks_of
from compress.recipe_dump import dump_recipe
from compress.report import console, param_count
from compress.report_card import model_card
from compress.report_teacher import CONFIG_CHECKSUM
from compress.runner_config_sum import CONFIG_SUM
from compress.runner_written import WRITTEN_BY
from compress.runner_ranks import is_main_process
from compress.runner_resume import FINISHED


def recorded_teacher(runner) -> dict:
    """The teacher as the output records it (config.json and report.json): local paths absolute, so
    eval and bench find it; its config, weight files and the checksum of its config file where known."""
    recorded = {"teacher": runner.identity["source"]}
    if runner.identity["config"]:
        recorded["teacher_config"] = runner.identity["config"]
    if runner.teacher_files:  # a local teacher's weight files (io_signature.teacher_signature)
        recorded["teacher_files"] = runner.teacher_files
    if runner.identity.get(CONFIG_SUM):  # what its local config file held: eval and bench tell an edit
        recorded[CONFIG_CHECKSUM] = runner.identity[CONFIG_SUM]  # in place (report_teacher.check_config_unedited)
    return recorded


def output_report(runner, student, teacher_params: int, recorded: dict) -> dict:
    """report.json: the passes' records, the teacher, parameter counts, the held-out inputs (their count and
    the guided error's scale), the chain's first teacher and the sampled inputs' cache where there are."""
    from compress.report_teacher import chain_base_record
    from compress.runner_heldout import heldout_record

    report = dict(runner.ctx.report, **recorded, teacher_params=teacher_params,
                  student_params=param_count(student), export=exported_error(runner, student),
                  heldout=heldout_record(runner), calibration={"seed": runner.recipe.calibration.seed},
                  version=compress.__version__)
    base = chain_base_record(runner.source)  # a teacher that is an output: the chain's first teacher
    if base is not None:
        report["base"] = base
    if runner.inputs_cache is not None:
        report["inputs_cache"] = str(runner.inputs_cache)  # eval reads the held-out inputs back
    return report


def exported_error(runner, student) -> dict:
    """report.json's `export`: the dtype the output holds its weights in (export.dtype), the one its stages'
    errors were measured in (`computed_in`: the compute dtype, before the export cast), and the output's
    teacher-relative error on the same held-out inputs: the student's weights rounded in place to what the
    export writes (io_export.round_to_export; it writes them next), run as eval runs the output. The last
    stage's where the export holds them exactly (`exact`: float32, or their own dtype); None for a streamed
    run, whose blocks it does not hold (eval measures it), or where the run's held-out reference is unknown.
    Where measured, `activation_max`: the largest |activation| of each block (and top-level linear) on those
    inputs, warned of where float16 cannot hold it (activation_range: float32 compute never overflows);
    streamed, those its last pass's held-out check recorded (the final student before the export's rounding).
    Where the last stage records a guided error, `guided_error`: the rounded weights' too (a --resume that kept
    every stage computes the teacher's guided reference for it: runner_heldout.guided_reference)."""
    from compress.activation_range import block_names, checked_maxima, recording_maxima, streamed_maxima
    from compress.dtype_range import DTYPES
    from compress.io_export import round_to_export
    from compress.passes.base import relative_error
    from compress.runner_heldout import finite_guided, guided_reference, guided_words

    dtype, stages = DTYPES[runner.recipe.export.dtype], runner.ctx.report.get("stages") or [{}]
    record = {"dtype": runner.recipe.export.dtype, "computed_in": runner.recipe.compute_dtype}
    held = getattr(runner, "held_out", None)  # (batches, the teacher's predictions on them): Runner._run's
    kept = {t.dtype for t in student.state_dict().values() if t.is_floating_point()}
    if dtype == torch.float32 or kept <= {dtype}:
        guided = {"guided_error": stages[-1]["guided_error"]} if "guided_error" in stages[-1] else {}
        return {**record, "exact": True, "relative_error": stages[-1].get("relative_error"), **guided}
    if runner.recipe.stream:  # its last stage's maxima (runner_heldout.check_stage), before the rounding
        return {**record, "relative_error": None, **streamed_maxima(stages[-1], dtype)}
    if held is None:
        return {**record, "relative_error": None}
    round_to_export(student, dtype)
    # where the stages measured a guided error: their reference (computed now by a --resume that checked no stage)
    guide = guided_reference(runner, held[1]) if "guided_error" in stages[-1] else None
    predictions = [] if guide is not None else None
    with runner.models.forwards(student):
        with recording_maxima(student, runner.adapter) as maxima:
            error = relative_error(student, held[1], runner.adapter, held[0], kept=predictions)
        guided = {} if guide is None else {  # the stages' measure
            "guided_error": finite_guided(runner.adapter, student, predictions, guide, lambda: "export: the exported model")}
    console.print(f"  exported in {record['dtype']}: teacher-relative error {error:.4g}{guided_words(guided)}",
                  highlight=False)
    largest = checked_maxima(maxima, dtype, block_names(student, runner.adapter))  # float16's range: warned
    return {**record, "relative_error": error, **guided, "activation_max": largest}


def output_files(runner, student, report: dict) -> dict[str, str]:
    """The output's files beside its weights, by name: what the output holds."""
    files = {"recipe.yaml": recipe_as_run(runner.recipe, runner.prompts, report),
             "report.json": json.dumps(report, indent=2, default=str) + "\n",
             "README.md": model_card(runner.recipe, report, ranks_of(student))}
    if runner.ctx.block_map is not None:
        files["block_map.json"] = json.dumps(runner.ctx.block_map, indent=2) + "\n"
    return files


def recipe_as_run(recipe, prompts: list[str] | None, recorded: dict) -> str:
    """recipe.yaml: `recipe` as run, its teacher and teacher_config the ones the run read (`recorded`:
    recorded_teacher's, local paths absolute: --teacher and --teacher-config where given, and a recipe's
    own relative path would otherwise be read against the output folder; no teacher_config where the
    teacher reads none), so that running it again by itself compresses the same model."""
    as_run = copy.copy(recipe)  # its marks (`_given`) and key places kept
    as_run.teacher, as_run.teacher_config = recorded["teacher"], recorded.get("teacher_config")
    pipeline = recipe.calibration.pipeline
    if pipeline and looks_local(pipeline) and Path(pipeline).expanduser().exists():  # as the run read it
        as_run.calibration = copy.copy(recipe.calibration)  # from the current folder: absolute, as the teacher
        as_run.calibration.pipeline = str(Path(pipeline).expanduser().resolve())
    text = dump_recipe(as_run, prompts)
    notes = teacher_notes(recipe, recorded)
    if not notes:
        return text
    first, rest = text.split("\n", 1)  # MARKS_HEADER stays the first line
    return "\n".join([first, *notes, rest])


def teacher_notes(recipe, recorded: dict) -> list[str]:
    """YAML comments on the teacher of a dumped recipe: the recipe's own teacher and teacher_config
    where the run read others (--teacher, --teacher-config, or a teacher that reads no config)."""
    notes = []
    if recipe.teacher != recorded["teacher"]:
        notes.append(f"# teacher: the one the run read (the recipe's was {recipe.teacher})")
    given = recipe.teacher_config
    if given is not None and str(Path(given).expanduser().resolve()) != recorded.get("teacher_config"):
        notes.append(f"# teacher_config: the one the run read (the recipe's was {given})")
    return notes


def mark_finished(run_dir: Path, out: Path) -> None:
    """stages/FINISHED: a run folder from now on started over without --resume."""
    if is_main_process():
        (run_dir / "stages").mkdir(parents=True, exist_ok=True)
        finished = json.dumps({**WRITTEN_BY, "out": str(out.resolve())}) + "\n"
        (run_dir / "stages" / FINISHED).write_text(finished, encoding="utf-8")
