"""`load_pipeline(out)`: a compressed output (io_output.load_transformer) in a diffusers pipeline,
whose other parts come from a base: the teacher the output records (through outputs compressed
from outputs), a toy, a folder (a saved pipeline's own, a saved toy pipeline's scheduler) or a Hub
id, checked to fit the transformer."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
from compress.io import read_config
from compress.io_output import load_transformer, one_dtype, output_folder
from compress.io_teacher_of import check_same_config
from compress.io_tensors import one_line
from compress.lowrank import LowRankLinear

def load_pipeline(out, base: str | None = None, dtype: torch.dtype | None = None,
                  torch_dtype: torch.dtype | None = None, variant: str | None = None):
    """A diffusers pipeline with the compressed transformer and the base pipeline's other parts.
    `base`: `toy:pixart` / `toy:flux`, a pipeline folder or a Hugging Face id; by default the teacher
    the output records, where that is one of these (a toy or a pipeline whose transformer is not of
    the output's family and widths: a UserError), or the one the output it names records, and so on
    (an output compressed from an output: recorded_base); a pipeline folder (a pipeline's save_pretrained,
    a toy pipeline's too: `_saved_toy_pipeline`) is its own base. `dtype` (or its name): of the
    whole pipeline (default: the dtype the transformer was exported in, so all parts agree), or
    diffusers' `torch_dtype` as in load_transformer; `variant`: the output's weight variant to load
    (the base pipeline's parts are read as they are: of the variant a folder's hold alone, fp16 ones
    of save_pretrained(variant="fp16") too: pipeline_folder.parts_variant; a Hub id's read from the
    cache alike: pipeline_folder.cached_variant)."""
    dtype = one_dtype(dtype, torch_dtype, "load_pipeline")
    transformer = load_transformer(out, dtype=dtype, variant=variant)
    folder = output_folder(out)
    if not base and folder != Path(out).expanduser() and (folder.parent / "model_index.json").is_file():
        base = str(folder.parent)  # a pipeline folder: the parts saved with it (not a transformer/ alone)
    base = str(base or recorded_base(transformer, folder))  # base: a str or a Path
    if base.startswith("toy:"):
        from compress.toy import load_toy_pipeline

        _check_toy_base(transformer, base)
        return _refusing_lora_loads(_all_of(load_toy_pipeline(base[4:], transformer=transformer)))
    from compress.pipeline_folder_paths import check_pipeline_path

    check_pipeline_path(base, "base pipeline")  # a path not there: not read as a Hub id
    index = _model_index(base)
    family = _toy_family(index, base) if index is not None else None
    if family is not None:
        return _refusing_lora_loads(_all_of(_saved_toy_pipeline(transformer, base, family, index)))
    if index is None:
        _check_is_a_pipeline(transformer, base)
    _check_base_index(transformer, base, index)
    _check_parts(base, index)
    from diffusers import DiffusionPipeline

    from compress.arch import get_adapter
    from compress.calib_pipeline import need_transformers
    from compress.io import pipeline_dtype
    from compress.io_hub_pipeline import hub_answer_words, hub_or_cache
    from compress.io_hub_requests import timed_out
    from compress.pipeline_folder import cached_variant, parts_variant

    need_transformers(get_adapter(transformer).family, f"the base pipeline '{base}'")
    parts = {"variant": v} if index is not None and (v := parts_variant(base, index)) else {}  # fp16 parts

    def load(**cached):  # cached: a Hub id read from the cache (offline, unreachable, stopped answering)
        _check_base(transformer, base, **cached)
        return DiffusionPipeline.from_pretrained(os.path.expanduser(base), transformer=transformer,
                                                 **pipeline_dtype(dtype or transformer.dtype),
                                                 **(parts or cached_variant(base)), **cached)
    try:
        pipe = hub_or_cache(base, "base pipeline", load)  # the cache's copy said where it lacks it
    except AttributeError as e:  # diffusers' getattr of the pipeline class model_index.json names
        name = re.fullmatch(r"module diffusers has no attribute (\S+)", str(e))
        if name is None:
            raise
        raise _unknown_pipeline_class(base, name[1]) from None
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, and a Hub request's timeout (httpx's: no OSError)
        why = timed_out(e)
        if why is None and not isinstance(e, (OSError, ValueError)):
            raise
        hub = hub_answer_words(e, base, lambda what: _no_pipeline(transformer, base, what),
                               "base= a pipeline folder or toy:NAME")
        raise UserError(f"cannot load base pipeline '{base}': {hub or why or one_line(e)}") from None
    return _refusing_lora_loads(pipe)


def _all_of(pipe):
    """A toy pipeline whose parts all have the transformer's dtype, as from_pretrained(torch_dtype=)
    gives every part of a diffusers pipeline one dtype (the toy's text encoder and VAE are built in
    float32; the VAE, without weights, answers .dtype from a buffer)."""
    for part in (pipe.text_encoder, pipe.vae):
        part.to(pipe.transformer.dtype)
    return pipe


def _model_index(base: str) -> dict | None:
    """The model_index.json of a local pipeline folder `base`; None where there is none (a Hub id,
    or no pipeline: from_pretrained says what is wrong)."""
    from compress.pipeline_folder import folder_index

    return folder_index(base, f"cannot load base pipeline '{base}': ")


def _check_parts(base: str, index: dict | None) -> None:
    """A local base pipeline's model_index.json against its class and folders (pipeline_folder.parts_problem:
    a listed part whose folder is missing, diffusers builds from nothing); a class diffusers cannot
    import is said as it loads (_unknown_pipeline_class)."""
    from compress.pipeline_folder import parts_problem, pipeline_class

    cls = pipeline_class(index) if index is not None else None
    if cls is not None and (problem := parts_problem(base, index, cls)):
        raise UserError(f"cannot load base pipeline '{base}': {problem}")


def _toy_family(index: dict, base: str) -> str | None:
    """The toy family whose pipeline's save_pretrained wrote `base` (its model_index.json names
    ToyPixArtPipeline / ToyFluxPipeline, which diffusers cannot import: pipeline_folder.index_toy),
    else None. A class name that is no string (diffusers fails on it with a bare TypeError): a
    UserError naming it."""
    from compress.pipeline_folder import index_toy

    name = index.get("_class_name")
    if not isinstance(name, str):
        raise _unknown_pipeline_class(base, name)
    toy = index_toy(index)  # 'toy:NAME'
    return toy[4:] if toy else None


def _unknown_pipeline_class(base: str, name) -> UserError:
    """The error for a base pipeline whose model_index.json names a class diffusers cannot import
    (diffusers raises a bare AttributeError for it)."""
    import diffusers

    names = "no pipeline class (_class_name)" if name is None else (
        f"the pipeline class {name!r}, which diffusers {diffusers.__version__} cannot import")
    return UserError(f"cannot load base pipeline '{base}': its model_index.json names {names}; pass base= a "
                     "pipeline of a diffusers class (a folder or Hugging Face id) or toy:NAME")


def _saved_toy_pipeline(transformer: nn.Module, base: str, family: str, index: dict):
    """The toy pipeline a toy pipeline's save_pretrained wrote to `base`, around `transformer`:
    the scheduler saved there; the text encoder and VAE are the toy's own (as for base="toy:NAME";
    save_pretrained cannot write them). The transformer must be of the toy's family and widths."""
    from compress.toy.weights import load_toy_pipeline, toy_files

    _check_base_config(transformer, read_config(toy_files(family)[0]), base)
    return load_toy_pipeline(family, transformer=transformer, scheduler=saved_scheduler(base, index))


def saved_scheduler(base: str, index: dict, what: str = "base pipeline"):
    """The scheduler a pipeline's save_pretrained wrote to `base`/scheduler/, of the diffusers class
    its model_index.json names; a UserError where it names none or the folder cannot be read ('cannot
    load `what` …': calib_pipeline_load.saved_toy's 'calibration pipeline'), and first where any part
    the index lists but the transformer lacks its folder, not the scheduler alone
    (pipeline_folder.lacking_problem: a transformer's folder with a saved toy pipeline's
    model_index.json beside its config.json)."""
    import diffusers

    from compress.pipeline_folder import lacking_problem, listed_parts

    if problem := lacking_problem(base, listed_parts(index)):  # a transformer's folder with a toy's index
        raise UserError(f"cannot load {what} '{base}': {problem}")  # as plan says it (check_calibration_pipeline)
    entry = index.get("scheduler")
    name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers" else None
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UserError(f"cannot load {what} '{base}': its model_index.json names the scheduler "
                        f"{entry!r}, not a diffusers scheduler class")
    try:
        return cls.from_pretrained(os.path.expanduser(base), subfolder="scheduler")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load {what} '{base}': its scheduler: {one_line(e)}") from None


def _refusing_lora_loads(pipe):
    """`pipe` with its load_lora_weights (where it has one) saying what to do when it fails on a
    transformer holding factorized layers: diffusers fails there with a bare KeyError (Flux) or peft's
    ValueError (PixArt), naming neither the cause nor compress.merge_lora. Other failures stay as they are."""
    load = getattr(pipe, "load_lora_weights", None)
    if load is None:
        return pipe

    def load_lora_weights(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except (KeyError, ValueError) as e:
            if not any(isinstance(m, LowRankLinear) for m in pipe.transformer.modules()):
                raise
            raise ValueError(f"load_lora_weights failed ({type(e).__name__}: {one_line(e)}): the pipeline's "
                             "transformer is a dit-compress output with factorized layers, which diffusers' "
                             "LoRA loading cannot adapt; merge the LoRA into it instead, with "
                             "compress.merge_lora(pipe.transformer, LORA) or `dit-compress lora OUT LORA NEW`") from e

    pipe.load_lora_weights = load_lora_weights
    return pipe


def recorded_base(transformer: nn.Module, out: Path) -> str:
    """The teacher the output `out` records, as a base pipeline: a toy, a Hub id or a local pipeline
    folder (model_index.json), or where it is an output itself the one that output records, and so
    on (report_teacher.teacher_chain); a UserError asking for `base` otherwise, naming the chain
    and the pipeline the recipe.yaml of `out` (or of an output of its chain) calibrated in, where
    one did (calibration.pipeline: report_teacher.recorded_pipeline)."""
    from compress.report_teacher import broken_chain, chain_base, teacher_chain

    teacher = (getattr(transformer, "compression_meta", None) or {}).get("teacher")
    chain = teacher_chain(str(teacher)) if teacher else []
    if not teacher:
        raise UserError(f"{out} records no teacher to take the pipeline's other parts from; {_ask(out, chain)}")
    base = chain_base(chain)
    if base is None:
        raise UserError(f"{broken_chain(out, chain)}; {_ask(out, chain)}")
    return base


def _ask(out: Path, chain: list[str]) -> str:
    """'pass base= (…)', naming the pipeline the recipe.yaml of the output `out` or of an output of
    its teacher's `chain` calibrated in (calibration.pipeline), where one did."""
    from compress.report_teacher import recorded_pipeline

    found = recorded_pipeline([str(out), *chain])
    if found is None:
        return "pass base= (a pipeline folder, a Hugging Face id or toy:NAME)"
    pipeline, output = found
    return (f"pass base='{pipeline}', the pipeline the recipe.yaml of {output} calibrated in (or another "
            "pipeline folder, Hugging Face id or toy:NAME)")


def _check_base(transformer: nn.Module, base: str, **cached) -> None:
    """The base pipeline's transformer must be the architecture `transformer` was compressed from:
    diffusers only logs a wrong class, and a wrong width fails inside the first denoising step.
    `cached`: local_files_only, for a Hub id read from the cache. A Hub id's config is first asked
    with io_hub_requests.head_request's one bounded request, without huggingface_hub's retries: where
    the Hub answered hub_head and then stopped answering, hf_hub_download's retried HEAD held the load
    ~23 s (backoff sleeps) before from_pretrained said it in one line; now nothing is checked there."""
    from compress.io_source import looks_local
    from compress.io_hub_requests import head_request

    if not cached and not looks_local(base) and head_request(base, "transformer/config.json")[0] is not None:
        return  # the Hub not reached: from_pretrained says so (io_hub_pipeline.unreached, or the cache read)
    try:
        config = type(transformer).load_config(os.path.expanduser(base), subfolder="transformer", **cached)
    except (OSError, ValueError):
        return  # no transformer config to compare: from_pretrained says what is wrong
    _check_base_config(transformer, config, base)


def _check_is_a_pipeline(transformer: nn.Module, base: str) -> None:
    """A `base` that is no pipeline (pipeline_folder_paths.not_a_pipeline: a single file, a local folder without
    model_index.json such as a transformer's, a Hub id whose Hugging Face cache snapshot is a transformer's
    repo, read without a Hub request) is refused naming what it is: a base is a whole pipeline. diffusers
    ended in "Error no file named model_index.json found in directory …", "… is neither a valid local path
    nor a valid repo id", offline "We couldn't connect to 'https://huggingface.co' …model_index.json",
    online a Hub request for it."""
    from compress.pipeline_folder_paths import not_a_pipeline

    from compress.output_names import is_output

    if (what := not_a_pipeline(base)) is not None:
        path = Path(base).expanduser()
        output = " (a dit-compress output: a compressed transformer)" if is_output(path) else ""
        raise UserError(f"cannot load base pipeline '{base}': {_no_pipeline(transformer, base, what + output)}")


def _no_pipeline(transformer: nn.Module, base: str, what: str) -> str:
    """'a base is a whole pipeline …, and B is `what`; pass base= …' (after 'cannot load base pipeline B: '),
    naming the base an output B records (report_teacher.output_base, as calibration.pipeline's refusal does)."""
    from compress.arch import get_adapter
    from compress.pipeline_folder_paths import EXAMPLE_PIPELINES
    from compress.report_teacher import output_base

    example = EXAMPLE_PIPELINES.get(get_adapter(transformer).family, EXAMPLE_PIPELINES["pixart"])
    others = f"a Hugging Face id such as {example}, a pipeline folder, or toy:NAME"
    head = f"a base is a whole pipeline (model_index.json and its parts), and {base} is {what}; pass base="
    if (found := output_base(base)) is None:
        return f"{head} the pipeline of its teacher's family ({others})"
    recorded, whose = found
    also = "" if recorded.startswith("toy:") else f" (or another pipeline of its teacher's family: {others})"
    return f"{head}'{recorded}', {whose}{also}"


def _check_base_index(transformer: nn.Module, base: str, index: dict | None) -> None:
    """The transformer the base pipeline's model_index.json lists (a folder's `index`, else a Hub id's
    as the Hugging Face cache holds it: pipeline_cache.cached_index, no request; uncached: nothing
    checked) is of `transformer`'s class, before its parts are checked or load: _check_base reads
    the transformer's config, which a base downloaded without transformer/ (load_pipeline passes
    it) lacks: a Flux pipeline loaded around a PixArt transformer (diffusers only logs the class),
    and a cached one lacking a part was said as a download to make. The generic Transformer2DModel
    (older PixArt repos) is told by its transformer/config.json, else by the pipeline class
    (pipeline_family.index_transformer)."""
    from compress.pipeline_cache import cached_index
    from compress.pipeline_family import index_transformer, listed_words

    snapshot = None
    if index is None and (found := cached_index(base)) is not None:
        snapshot, index = found
    listed = index_transformer(index, snapshot or base) if index is not None else None
    if listed is not None and listed[0] != type(transformer).__name__:
        cached = f" (its model_index.json in the Hugging Face cache's snapshot {snapshot} of it)" if snapshot else ""
        raise UserError(f"base pipeline {base} holds a {listed_words(listed)}{cached}; the compressed transformer is a "
                        f"{type(transformer).__name__}: pass a base of its family")


def _check_toy_base(transformer: nn.Module, base: str) -> None:
    """_check_base for a toy base (`toy:flux`): a shipped toy's name, and the toy teacher of the
    compressed transformer's family and widths (a PixArt student in the toy Flux pipeline failed
    only at sampling)."""
    from compress.toy.weights import check_toy_name, toy_files

    try:
        check_toy_name(base[4:])
    except UserError as e:
        raise UserError(f"base pipeline: {e}") from None
    _check_base_config(transformer, read_config(toy_files(base[4:])[0]), base)


def _check_base_config(transformer: nn.Module, config: dict, base: str) -> None:
    """The transformer config of base pipeline `base` is of `transformer`'s class (the generic
    Transformer2DModel of older PixArt repos told by its keys: pipeline_family.config_class) and widths."""
    from compress.pipeline_family import GENERIC, config_class, listed_words

    name, told = config.get("_class_name"), config_class(config)
    if name and (told or name) != type(transformer).__name__:
        held = listed_words((told, "by its transformer/config.json")) if told and name == GENERIC else name
        raise UserError(f"base pipeline {base} holds a {held}; the compressed transformer is a "
                        f"{type(transformer).__name__}: pass a base of its family")
    check_same_config(transformer, config, f"the transformer of base pipeline {base}",
                      "pass the pipeline of its teacher as base")
