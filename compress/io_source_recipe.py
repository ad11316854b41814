"""A recipe's teacher source checked before anything loads (io_source's checks, errors at the recipe's
file:line where it gave the value): the teacher there and of the recipe's model family, the local
pipeline it samples in a pipeline folder, the prompt file there (io_source_calib)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import UserError
from compress.io_source_config import TeacherSource, checked
from compress.recipe_teacher_config import config_named
from compress.recipe_where import recipe_where, teacher_given, teacher_where

if TYPE_CHECKING:
    from compress.inputs import Sampling


def checked_sources(recipe, teacher: str | None = None, config: str | None = None,
                    hub: bool = True, sampled: bool = True, flag: bool = True) -> TeacherSource:
    """The teacher source a recipe's run uses (`teacher`: --teacher; `config`: --teacher-config),
    checked before any weights load: it is there and is a teacher of the recipe's model family
    (from its config; with `hub`, a Hub id's is fetched, never its weights); and the prompt file
    the recipe names is there; with `sampled` (plan, run, importance: they sample in the pipeline
    the recipe names), a local pipeline a pipeline source samples in is a pipeline folder
    (check_sampled_pipeline). Errors name the recipe's file:line where it gave the value. The
    calibration source is checked once (inputs.source_sampling), kept as the source's `sampling` for make_plan.
    `flag`: whether `teacher` is --teacher's (False: the teacher an output recorded, which eval of a streamed
    output names in the recipe's place: errors name it, neither '--teacher: ' nor the recipe's line)."""
    from compress.inputs import source_sampling
    from compress.io_source_calib import check_prompt_file, warn_unused_calibration

    source, given = teacher or recipe.teacher, teacher if flag else None  # given: --teacher's
    where = teacher_where(recipe, given) if flag or not teacher else ""
    src = checked(source, config, where, hub, None if teacher else Path(recipe.path).parent,
                  bool(getattr(recipe, "stream", False)), config_named(recipe, config))
    found = src.family()
    if found and found[0] != recipe.model:
        raise UserError(other_family_words(recipe, source, given, found[0]))
    check_weights(src)  # a teacher of junk weights said before the calibration it would need
    src.sampling = source_sampling(recipe.calibration, source)  # a pipeline folder's model_index.json read once
    if sampled:
        check_sampled_pipeline(recipe, source, src.sampling, teacher_given(recipe, given))
    check_prompt_file(recipe, src.sampling.kind)
    warn_unused_calibration(recipe, src.sampling.kind)
    return src


def other_family_words(recipe, source: str, given: str | None, family: str) -> str:
    """The refusal of a teacher `source` (`given`: by --teacher, or whether the command line gave it:
    teacher_given) that is a `family` transformer, not one of the recipe's model: at the recipe's `model:`
    line (plan._family_words says a single file's, whose family its config told)."""
    from compress.arch import get_adapter

    return (f"{recipe_where(recipe, 'model', recipe.model)}: model is '{recipe.model}' but the teacher "
            f"{source}{teacher_given(recipe, given)} is a {get_adapter(family).class_name} ({family}); set model: "
            f"{family} or give a {recipe.model} teacher")


def check_weights(src: TeacherSource) -> None:
    """The teacher's weight files fill the model its config describes, names and shapes, from their
    headers (io_headers.check_teacher_weights, against a meta model: a fraction of a second), where
    they are there to read and a config is at hand (a single file without one is told so later);
    an error said where the teacher was given (src.where: the recipe's file:line, or '--teacher: '). What
    it read it keeps on src.weights_read (WeightsRead): the meta model, which make_plan takes as the
    teacher, and each file's header dtype names (filled by check_teacher_weights), which the export's
    dtype warning reads (TeacherSource.dtype_names): neither is built or read again."""
    from compress.io_headers import check_teacher_weights, reads_headers
    from compress.io_source import prefixed

    if not (src.has_config() and reads_headers(src)):
        return
    from compress.plan import meta_model

    model = meta_model(src)
    prefixed(src.where, check_teacher_weights, src, model)
    src.weights_read.model = model  # make_plan's teacher: not built nor its headers read again


def check_sampled_pipeline(recipe, source: str, sampled: Sampling, given: str = "") -> None:
    """Where the recipe's calibration samples in a pipeline (source pipeline, or auto for a teacher
    that is no toy's), a local one (calibration.pipeline, else the teacher `source`) is a pipeline
    folder: plan refuses a transformer folder or a single file in the line run's pipeline source
    does (pipeline_folder_paths.check_pipeline_source), before any weights load. `sampled`: the recipe's
    calibration source checked (inputs.Sampling); `given`: teacher_given's words for the teacher."""
    from compress.inputs import pipeline_at
    from compress.pipeline_folder_paths import check_pipeline_source

    calib = recipe.calibration
    pipeline = calib.pipeline or source
    if sampled.kind == "pipeline" and not sampled.toy:  # a saved toy's too
        check_pipeline_source(pipeline, calib.pipeline is None, recipe.model, pipeline_at(calib, pipeline),
                              calib.source == "auto", given)
