"""The calibration pipeline loaded: the teacher inside its own diffusers pipeline, the other parts
beside it (`load_pipeline_for`), the pipeline's scheduler config (`scheduler_config`), both for a Hub
id through io_hub_pipeline.hub_or_cache (quiet, bounded waits, from the cache where the Hub does not
serve it), and the optional packages a real pipeline needs (`need_transformers`)."""

from __future__ import annotations

import os

import torch

from compress.errors import UserError


def load_pipeline_for(teacher: torch.nn.Module, source: str):
    """The teacher inside its pipeline; the other parts (text encoders, VAE) on its device."""
    if source.startswith("toy:"):
        from compress.toy import load_toy_pipeline

        return _beside(load_toy_pipeline(source[4:], transformer=teacher), teacher)
    from compress.pipeline_folder import cached_variant, family_problem, folder_index, index_problem, parts_variant
    from compress.pipeline_folder_paths import check_pipeline_path

    check_pipeline_path(source, "calibration pipeline")  # a path not there: not read as a Hub id
    what = f"cannot load calibration pipeline '{source}': "
    index = folder_index(source, what)  # a local folder's model_index.json, read once; None: a Hub id
    if (toy := saved_toy(source, index, teacher)) is not None:
        return _beside(toy, teacher)
    from diffusers import DiffusionPipeline

    from compress.io import pipeline_dtype
    from compress.io_hub_pipeline import hub_or_cache

    if index is not None and (problem := index_problem(source, index)):  # a listed part missing: diffusers
        raise UserError(f"{what}{problem}")                              # would build it from nothing
    if index is not None and (problem := family_problem(index, "", "", type(teacher).__name__, source)):
        raise UserError(f"{what}{problem}")  # another family's: its sampling would fail inside diffusers
    parts = {"variant": v} if index is not None and (v := parts_variant(source, index)) else {}  # fp16 parts
    try:  # a Hub id: offline, unreachable or stopped answering, from the cache (its fp16 parts too); the error says why
        pipe = hub_or_cache(source, "calibration pipeline", lambda **cached: DiffusionPipeline.from_pretrained(
            os.path.expanduser(source), transformer=teacher, **pipeline_dtype(teacher.dtype),
            **(parts or cached_variant(source)), **cached))  # ~/pipe
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/IO errors come in many types
        why = _hub_answer(e, source, teacher) or _why(e)
        raise UserError(f"cannot load calibration pipeline '{source}': {why}") from None
    return _beside(pipe, teacher)


def saved_toy(source: str, index: dict | None, teacher: torch.nn.Module):
    """The toy pipeline around `teacher` where `source` is a folder a toy pipeline's save_pretrained wrote
    (its model_index.json, read: `index`, names a toy's class: pipeline_folder.index_toy): the toy's text
    encoder and VAE, which it cannot hold, and the scheduler saved there, as load_pipeline takes it for a
    base (io_pipeline.saved_scheduler); else None."""
    from compress.io_pipeline import saved_scheduler
    from compress.pipeline_folder import index_toy
    from compress.toy import load_toy_pipeline

    if (toy := index_toy(index)) is None:
        return None
    scheduler = saved_scheduler(source, index, "calibration pipeline")
    return load_toy_pipeline(toy[4:], transformer=teacher, scheduler=scheduler)


def _hub_answer(e: Exception, source: str, teacher: torch.nn.Module) -> str | None:
    """A Hub id `source` the Hub answered is no pipeline, in words (io_hub_pipeline.hub_answer_words): a repo
    without model_index.json as check_pipeline_source says a cached one; else None."""
    from compress.arch import get_adapter
    from compress.io_hub_pipeline import hub_answer_words
    from compress.pipeline_folder_paths import pipeline_advice

    def no_pipeline(what: str) -> str:
        return (f"calibration.source 'pipeline' samples in a diffusers pipeline, and {source} is {what}; "
                f"{pipeline_advice(source, get_adapter(teacher).family)}")
    return hub_answer_words(e, source, no_pipeline,
                            "a pipeline folder as calibration.pipeline (or calibration.source: synthetic)")


def _why(e: Exception) -> str:
    """A failed pipeline or config load in words: a Hub request that ran out of time as
    io_hub_requests.timed_out says it (the seconds, the variable that lengthens them), else the
    error's first line."""
    from compress.io_hub_requests import timed_out

    return timed_out(e) or (str(e).splitlines()[0] if str(e) else type(e).__name__)


def _beside(pipe, teacher: torch.nn.Module):
    """Moves the pipeline's modules but the transformer (whose blocks may be streamed, on meta) to
    the device of the transformer's resident weights."""
    device = next((p.device for p in teacher.parameters() if p.device.type != "meta"), torch.device("cpu"))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and component is not teacher:
            component.to(device)
    return pipe


def need_transformers(family: str | None = None,
                      what: str = "calibration.source pipeline runs the teacher's own pipeline") -> None:
    """Real pipelines (PixArt-Σ: T5; Flux: CLIP + T5) load their text encoders with transformers,
    an optional dependency: say so before any compute rather than fail inside diffusers. PixArt-Σ's
    pipeline also cleans captions with beautifulsoup4 and ftfy, and without them only logs a warning
    and samples from uncleaned captions, which inference would not see: they are needed too."""
    import importlib.util

    modules = {"transformers": "transformers", "sentencepiece": "sentencepiece"}
    if family == "pixart":
        modules.update(bs4="beautifulsoup4", ftfy="ftfy")
    missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"{what}, which needs {', '.join(missing)}: pip install 'dit-compress[pipelines]'")


def scheduler_config(source: str) -> dict:
    """The scheduler config of the pipeline `source` (a folder, a Hub id). A Hub id's is read as its
    pipeline loads (io_hub_pipeline.hub_or_cache): inside quiet_hub (diffusers' load_config printed
    huggingface_hub's `local_dir_use_symlinks` warning), bounded_hub, and from the cache offline or
    where the Hub cannot be reached or stopped answering (it asked the Hub again and waited)."""
    from diffusers import DDPMScheduler  # any scheduler class reads scheduler_config.json

    from compress.io_hub_pipeline import hub_or_cache

    try:
        return dict(hub_or_cache(source, "calibration pipeline", lambda **cached: DDPMScheduler.load_config(
            os.path.expanduser(source), subfolder="scheduler", **cached)))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/IO errors come in many types
        raise UserError(f"cannot read the scheduler config of '{source}': {_why(e)}") from None
