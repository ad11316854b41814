"""What rank 0 writes at the end of a run, as plain functions of its Runner: the output's files
(report.json with the teacher it recorded, recipe.yaml, the model card, block_map.json) and the run
folder's stages/FINISHED mark."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import compress
from compress.io_export import ranks_of
from compress.recipe import dump_recipe
from compress.report import param_count
from compress.report_card import model_card
from compress.report_teacher import CONFIG_CHECKSUM
from compress.runner_config_sum import CONFIG_SUM
from compress.runner_folders import WRITTEN_BY
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
    """report.json: the passes' records, the teacher, parameter counts, the chain's first teacher and
    the sampled inputs' cache where there are."""
    from compress.report_teacher import chain_base_record

    report = dict(runner.ctx.report, **recorded, teacher_params=teacher_params,
                  student_params=param_count(student), version=compress.__version__)
    base = chain_base_record(runner.source)  # a teacher that is an output: the chain's first teacher
    if base is not None:
        report["base"] = base
    if runner.inputs_cache is not None:
        report["inputs_cache"] = str(runner.inputs_cache)  # eval reads the held-out inputs back
    return report


def output_files(runner, student, report: dict) -> dict[str, str]:
    """The output's files beside its weights, by name: what the output holds."""
    files = {"recipe.yaml": recipe_as_run(runner.recipe, runner.prompts, report),
             "report.json": json.dumps(report, indent=2, default=str) + "\n",
             "README.md": model_card(runner.recipe, report, ranks_of(student))}
    if runner.ctx.block_map is not None:
        files["block_map.json"] = json.dumps(runner.ctx.block_map, indent=2) + "\n"
    return files


def recipe_as_run(recipe, prompts: list[str] | None, recorded: dict) -> str:
    """recipe.yaml: `recipe` as run, its teacher the one the run read (`recorded`: recorded_teacher's,
    local paths absolute: --teacher where given, and a recipe's own relative path would otherwise be read
    against the output folder), so that running it again compresses the same model. A --teacher-config,
    which no recipe key holds, is named in a comment above it, to give again."""
    as_run = copy.copy(recipe)  # its marks (`_given`) and key places kept
    as_run.teacher = recorded["teacher"]
    text = dump_recipe(as_run, prompts)
    notes = teacher_notes(recipe.teacher, recorded)
    if not notes:
        return text
    first, rest = text.split("\n", 1)  # MARKS_HEADER stays the first line
    return "\n".join([first, *notes, rest])


def teacher_notes(given: str, recorded: dict) -> list[str]:
    """YAML comments on the teacher of a dumped recipe: the recipe's own where the run read another
    (--teacher), and the --teacher-config it read, which a rerun must be given."""
    notes = []
    if given != recorded["teacher"]:
        notes.append(f"# teacher: the one the run read (the recipe's was {given})")
    if recorded.get("teacher_config"):
        notes.append(f"# the run read the teacher's config from --teacher-config {recorded['teacher_config']}: "
                     "no recipe key holds it, so give it again to rerun this recipe")
    return notes


def mark_finished(run_dir: Path, out: Path) -> None:
    """stages/FINISHED: a run folder from now on started over without --resume."""
    if is_main_process():
        (run_dir / "stages").mkdir(parents=True, exist_ok=True)
        (run_dir / "stages" / FINISHED).write_text(json.dumps({**WRITTEN_BY, "out": str(out.resolve())}) + "\n")
