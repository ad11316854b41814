"""A pipeline given by path that is none (a calibration.pipeline, a teacher sampled in as one, load_pipeline's
base): a local path that is not there, by the rule a teacher's is (`missing_pipeline`: at its recipe line,
`check_pipeline_there`; as it loads, `check_pipeline_path`), or a single file, a folder without
model_index.json (a transformer's, an output) or a cached transformer-only repo (`not_a_pipeline`), named with
what to set instead (`check_pipeline_source`, `pipeline_advice`: the base pipeline an output records, else an
example Hub id, `EXAMPLE_PIPELINES`, or the synthetic source)."""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import UserError


def check_pipeline_there(calib, where: str = "") -> None:
    """A calibration.pipeline that is a local path (missing_pipeline: ./, ../, /, ~, a name with no
    owner, a first part that is a folder here, or no Hugging Face id either) is there: else a UserError at `where` ('PATH:LINE: ')
    naming the path looked for and the rule (a relative one is taken from the current folder, as
    the teacher is), and the recipe's folder's where that holds it."""
    pipeline = calib.pipeline
    path = Path(pipeline).expanduser()
    if (missing := missing_pipeline(pipeline)) is None:
        return
    looked = missing[0] + (missing[1] if "not a Hugging Face id" in missing[1] else "")
    rule = ""
    if not path.is_absolute():
        rule = " (a relative calibration.pipeline is taken from the current folder, as teacher: is"
        recipe = calib.__dict__.get("_recipe")
        beside = os.path.abspath(Path(recipe.path).parent / path) if getattr(recipe, "path", None) else None
        rule += f", not the recipe's; there is {beside}: give that path)" if beside and Path(beside).exists() else ")"
    raise UserError(f"{where}calibration.pipeline {pipeline} not found: {looked}{rule}")


def missing_pipeline(source: str) -> tuple[str, str] | None:
    """(looked, why) where the pipeline `source` is a local path that is not there, by the rule a teacher's
    is (io_source.check_source): io_source.looks_local (./, ../, /, ~, a name with no owner, a first part that
    is a folder here), or a name no Hugging Face id either (io_hub.id_problem: a/b/c, acme/pix@v2);
    `looked`: the absolute path, `why`: ' (a Hugging Face id is OWNER/NAME)' or ', and it is not a
    Hugging Face id: …' (or ''). None for one there, toy:NAME or a Hub id (its errors come as it loads)."""
    from compress.io_source import looks_local
    from compress.io_hub import id_problem

    path = Path(source).expanduser()
    if source.startswith("toy:") or path.exists():
        return None
    local = looks_local(source)
    if not local and (problem := id_problem(source)) is None:
        return None
    problem = None if local else problem
    why = f", and it is not a Hugging Face id: {problem}" if problem else ""
    return os.path.abspath(path), why or (" (a Hugging Face id is OWNER/NAME)" if "/" not in source else "")


def check_pipeline_path(source: str, what: str) -> None:
    """A UserError 'cannot load `what` 'S': no such folder: ABS…' where the pipeline `source` is a local
    path not there (missing_pipeline): load_pipeline's base and the calibration pipeline loaded said
    huggingface_hub's "Repo id must use alphanumeric chars …" or diffusers' "… is neither a valid local
    path nor a valid repo id"."""
    if (missing := missing_pipeline(source)) is not None:
        raise UserError(f"cannot load {what} '{source}': no such folder: {missing[0]}{missing[1]}")


EXAMPLE_PIPELINES = {"pixart": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "flux": "black-forest-labs/FLUX.1-dev"}


def check_pipeline_source(source: str, is_teacher: bool, family: str, where: str = "", auto: bool = False,
                          given: str = "") -> None:
    """A local pipeline must be a pipeline folder (model_index.json); a transformer folder, a single
    file or an output is named with what to set instead (the base pipeline an output records, where
    it records one: report_teacher.teacher_chain, else the pipeline its recipe calibrated in; or the
    synthetic source), before any compute. `where`: 'PATH:LINE: ' of the recipe key that gave
    `source`; `auto`: the recipe's source is auto (said, as calib_prompts says it); `given`: ' (--teacher)'
    after a teacher the command line gave (recipe_where.teacher_given)."""
    if (what := not_a_pipeline(source)) is None:
        return  # a pipeline folder, or a hub id (its errors come when it loads)
    whose = "the teacher " if is_teacher else ""
    said = " (source auto is pipeline for a teacher that is not toy:)" if auto else ""
    raise UserError(f"{where}calibration.source 'pipeline'{said} samples in a diffusers pipeline, and {whose}{source}"
                    f"{given if is_teacher else ''} is {what}; {pipeline_advice(source, family)}")


def pipeline_advice(source: str, family: str) -> str:
    """What to set in place of the calibration pipeline `source`, which is no pipeline (check_pipeline_source's,
    calib_pipeline_load's where the Hub answers it holds no model_index.json)."""
    return f"set calibration.pipeline to {_base_words(source, family)}, or calibration.source: synthetic"


def not_a_pipeline(source: str) -> str | None:
    """What `source`, given as a pipeline, is where it is none, in words: a single file, a folder without
    model_index.json (a transformer's, an output), or a Hub id whose Hugging Face cache snapshot is a
    transformer's repo (pipeline_cache.cached_transformer_repo, read without a Hub request); None for a
    pipeline folder, a Hub id otherwise or a path not there (its errors come when it loads)."""
    from compress.pipeline_cache import cached_transformer_repo, transformer_repo_words

    path = Path(source).expanduser()
    if not path.exists():
        snapshot = cached_transformer_repo(source)
        return None if snapshot is None else transformer_repo_words(snapshot)
    if path.is_file():
        return "a single file"
    return None if (path / "model_index.json").is_file() else "a folder without model_index.json"


def _base_words(source: str, family: str) -> str:
    """What to set calibration.pipeline to for the output (or other local teacher) `source`: the toy
    its chain of teachers starts at, or the base pipeline it records (else the pipeline the recipe of
    an output of that chain calibrated in), or a Hugging Face id or pipeline folder."""
    from compress.report_teacher import output_base

    base, what = output_base(source) or (None, "")
    recorded = f"{base}, {what}" if base else ""
    if base and base.startswith("toy:"):
        return recorded
    example = EXAMPLE_PIPELINES.get(family, EXAMPLE_PIPELINES["pixart"])
    return (f"the base pipeline ({recorded + '; or ' if recorded else ''}a Hugging Face id such as {example}, or a "
            "pipeline folder)")
