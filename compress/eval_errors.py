"""eval's teacher-relative errors of an output on the run's held-out inputs (`teacher_relative`; streamed
block by block: `teacher_relative_streamed`), the guided error beside them where the inputs are guided,
and the read-only streams eval and importance hold a streamed model in (`read_only_streams`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from compress.arch import get_adapter
from compress.io import cast
from compress.io_source import check_source
from compress.io_source_recipe import checked_sources
from compress.io_teacher_of import check_same_architecture
from compress.progress import status
from compress.report import note, read_report
from compress.report_teacher import recorded_teacher


def read_only_streams(recipe, device):
    """A runner_stream.StreamedModels that writes nothing, in the recipe's compute dtype."""
    from compress.runner import DTYPES
    from compress.runner_stream import StreamedModels

    return StreamedModels(None, DTYPES[recipe.compute_dtype], device)


def _heldout_pipeline(out: Path, source: str) -> str:
    """The teacher source whose pipeline gives eval the output's held-out inputs (input_source):
    `source` (--teacher, else the recorded teacher) where it is one (a folder with model_index.json,
    a Hub id, a toy), so a pipeline moved since is sampled where it is now; else (a bare transformer
    folder or a single file, in which nothing samples) the teacher the run recorded. A local path
    absolute, as the run records it: the keys of its inputs cache hold it."""
    from compress.report_teacher import absolute_source

    path = Path(source).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        source = recorded_teacher(out)[0] or source
    return absolute_source(source)


def teacher_relative_streamed(out: Path, teacher_source: str, teacher_config: str | None, flag: bool) -> dict:
    """teacher_relative with teacher and student streamed block by block (each on meta but for
    its top level) on the recipe's device and in its compute dtype, as the run held them. `flag`:
    --teacher gave `teacher_source` (else the output recorded it: its errors name it, without '--teacher: ')."""
    from compress.inputs import input_source
    from compress.recipe import load_recipe
    from compress.runner_setup import DTYPES, load_checked_teacher, resolve_device

    recipe = load_recipe(out / "recipe.yaml", saved=True)
    device, dtype = resolve_device(recipe), DTYPES[recipe.compute_dtype]
    models = read_only_streams(recipe, device)
    sources = checked_sources(recipe, teacher_source, teacher_config, sampled=False,  # held out in _heldout_pipeline
                              flag=flag)
    _, teacher = load_checked_teacher(recipe, teacher_source, teacher_config, models=models, sources=sources)
    student = models.restore(out).requires_grad_(False).eval()
    check_same_architecture(student, teacher, teacher_source)
    adapter = get_adapter(teacher)
    pipeline = _heldout_pipeline(out, teacher_source)
    src = input_source(adapter.family, pipeline, recipe.calibration, teacher)
    report = read_report(out)
    read_recorded_inputs(src, report)
    _note_older_heldout(pipeline, recipe, report)
    with models.forwards(teacher), status("eval: the teacher's held-out predictions, block by block"):
        held = _teacher_side(src, adapter, teacher, device, dtype, recipe.compute_dtype)
    _note_computed_wider(out, recipe, report)
    with models.forwards(student), status("eval: the student's, block by block"):
        errors = _errors(adapter, student, held, recipe.compute_dtype)
    return {"family": adapter.family, **errors, "streamed": True}


def teacher_relative(model, teacher, source: str, out: Path) -> dict:
    """Real models: teacher-relative error on the run's held-out prompts and seeds (check_measurable
    first), both models in the recipe's compute dtype, as the run measured them (and as
    teacher_relative_streamed does: a bfloat16 run's error was measured again in float32)."""
    from compress.inputs import input_source
    from compress.io_source_config import TeacherSource
    from compress.recipe import load_recipe
    from compress.runner_setup import DTYPES, check_finite

    # as run checks it, naming the file that holds a NaN (streamed: load_checked_teacher)
    check_finite(teacher, source=TeacherSource(source, check_source(source)))
    recipe = load_recipe(out / "recipe.yaml", saved=True)
    adapter = get_adapter(teacher)
    report = read_report(out)
    pipeline = _heldout_pipeline(out, source)
    src = input_source(adapter.family, pipeline, recipe.calibration, teacher)
    read_recorded_inputs(src, report)
    _note_older_heldout(pipeline, recipe, report)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = cast(teacher, device, DTYPES[recipe.compute_dtype])
    with status("eval: the teacher's held-out predictions"):
        held = _teacher_side(src, adapter, teacher, device, teacher.dtype, recipe.compute_dtype)
    model = cast(model, device, teacher.dtype)  # the export's dtype (often bf16) computed like the teacher
    _note_computed_wider(out, recipe, report)
    with status("eval: the model's"):
        errors = _errors(adapter, model, held, recipe.compute_dtype)
    return {"family": adapter.family, **errors}


def read_recorded_inputs(src, report: dict) -> None:
    """The run's sampled inputs (report.json's inputs_cache) read back where they are there and valid,
    never written: eval writes nothing outside the output folder it is given (the run folder may be
    moved, read-only or full). Gone: one note, and the held-out inputs are sampled in memory."""
    from compress.report import note

    if not report.get("inputs_cache") or not hasattr(src, "cache_dir"):
        return
    src.cache_dir, src.read_only = Path(report["inputs_cache"]), True
    if not src.cache_dir.is_dir():
        note(f"eval: the run's sampled inputs ({src.cache_dir}, report.json's inputs_cache) are gone: "
             "the held-out inputs are sampled again, in memory")


def _note_older_heldout(pipeline: str, recipe, report: dict) -> None:
    """A note where report.json's errors were measured on an older draw of the held-out inputs than eval's
    (runner_heldout.older_heldout_eval_note); `pipeline`: _heldout_pipeline's, whose kind input_source took."""
    from compress.inputs import source_kind
    from compress.runner_heldout import older_heldout_eval_note

    if said := older_heldout_eval_note(report, source_kind(recipe.calibration, pipeline), recipe.calibration.seed):
        note(said)


def _teacher_side(src, adapter, teacher, device, dtype, compute_dtype: str) -> tuple:
    """(held-out batches on `device` in `dtype`, the teacher's predictions of them, checked as the run
    checks them, _teacher_guided's guide)."""
    from compress.inputs import moved
    from compress.passes.base import predictions
    from compress.runner_setup import check_reference, locate

    batches = [moved(b, device, dtype) for b in src.heldout()]
    reference = predictions(teacher, adapter, batches)
    check_reference(reference, compute_dtype, lambda b: locate(teacher, adapter, batches[b]))
    return batches, reference, _teacher_guided(src, adapter, teacher, reference, device, dtype)


def _errors(adapter, model, held: tuple, compute_dtype: str) -> dict:
    """{pred_rel_error, and _guided_result's figures} of `model` on _teacher_side's `held`, its error
    checked as the run checks it (runner_setup.check_error)."""
    from compress.passes.base import relative_error
    from compress.runner_setup import check_error

    batches, reference, guide = held
    kept = [] if guide is not None else None
    error = relative_error(model, reference, adapter, batches, kept=kept)
    check_error(error, model, adapter, batches, compute_dtype)
    return {"pred_rel_error": error, **_guided_result(adapter, model, kept, guide, batches)}


def _teacher_guided(src, adapter, teacher, reference: list, device, dtype) -> tuple | None:
    """Where the run's held-out inputs are guided as its check guides them (the source's heldout_guidance,
    read after its heldout(): a pipeline sampling both CFG branches), (guided.HeldOutGuidance, the teacher's
    guided predictions of them), as runner_heldout.guided_reference; else None."""
    from compress.runner_heldout import guided_of, source_guidance

    guidance = source_guidance(getattr(src, "heldout_guidance", lambda: None), device, dtype)
    return None if guidance is None else (guidance, guided_of(adapter, teacher, reference, guidance))


def _guided_result(adapter, model, kept: list | None, guide: tuple | None, batches: list) -> dict:
    """eval's figures beside pred_rel_error where the held-out inputs are guided (guide: _teacher_guided's):
    guided_error, the run's check's guided error of the model (its `kept` predictions of `batches`), and the
    guidance scale it is at, a guided_error not finite warned of (warn_if_not_finite); {} where they are not."""
    from compress.runner_heldout import guided_distance

    if guide is None:
        return {}
    result = {"guided_error": guided_distance(adapter, model, kept, guide), "guidance": guide[0].scale}
    rows = sum(b["hidden_states"].shape[0] for b in batches)  # (as report.json's heldout.inputs counts them)
    warn_if_not_finite(result, f"its run's {rows} held-out inputs")
    return result


def warn_if_not_finite(result: dict, held_out: str) -> None:
    """A warning where eval's teacher-relative errors are NaN/Inf (printed nan, null in --json), as the run
    warns of a guided error that is not (runner_heldout.guided_error): the model's guided prediction
    holding NaN/Inf where its prompt's branch does not (its empty prompt's branch), or its prediction
    itself (a toy's: a real model's is refused, runner_setup.check_error). `held_out`: what they are
    measured on ('the 256 held-out triples', toy.evaluate; "its run's 8 held-out inputs")."""
    from compress.report import warn

    bad = [k for k in ("pred_rel_error", "guided_error") if k in result and not math.isfinite(result[k])]
    if bad == ["guided_error"]:
        warn(f"eval: the model's guided prediction (with the empty prompt's branch) holds NaN/Inf on {held_out}: "
             "its guided_error is not finite")
    elif bad:
        warn(f"eval: the model's prediction holds NaN/Inf on {held_out}: its {' and '.join(bad)} "
             f"{'is' if len(bad) == 1 else 'are'} not finite")


def _note_computed_wider(out: Path, recipe, report: dict) -> None:
    """A note where eval computes a float16 output in a wider compute dtype: a float16 overflow would not
    show in its error (activation_range.computed_wider_words). Said, not changed: the error stays the one
    the run measured (report.json export.relative_error), and CPUs compute float16 slowly or not at all."""
    from compress.activation_range import computed_wider_words

    export = report.get("export") if isinstance(report.get("export"), dict) else {}
    text = computed_wider_words(out, recipe.export.dtype, recipe.compute_dtype, export.get("activation_max"))
    if text:
        note(text)
