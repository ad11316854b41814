"""A local diffusers pipeline folder (or the Hugging Face cache's snapshot of a Hub id read offline,
checked as one by pipeline_snapshot; the cache's reads that need no Hub request, online too, are
pipeline_cache's) checked against its model_index.json before it loads: the class it names is a
diffusers pipeline whose parts it lists, and each part it lists has its folder. Where a listed tokenizer's folder is missing diffusers and
transformers build it from nothing and say nothing (a tokenizer without a vocabulary: prompts
become a few ids, or a Flux CLIP tokenizer fails on its max_length), and another part's load stops
on the file it reads, after a run's teacher has loaded; so the calibration pipeline, plan and
load_pipeline's base ask for it instead."""

from __future__ import annotations

import os
import re
from pathlib import Path

from compress.errors import UserError
from compress.io import read_json
from compress.pipeline_folder_paths import check_pipeline_there


def folder_index(folder: str, what: str = "") -> dict | None:
    """The model_index.json of the local pipeline folder `folder`; None where there is none (a Hub
    id, a transformer folder: checked elsewhere); a UserError where it is no JSON object, its words
    after `what` ('cannot load base pipeline X: ')."""
    path = Path(folder).expanduser() / "model_index.json"
    if not path.is_file():
        return None
    index = read_json(path)
    if not isinstance(index, dict):
        raise UserError(f"{what}{path} is not a JSON object")
    return index


def pipeline_class(index: dict):
    """The diffusers pipeline class model_index.json names (`_class_name`); None where diffusers has none."""
    import diffusers

    name = index.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    return cls if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline) else None


def unknown_class(index: dict) -> str:
    """What is wrong with a model_index.json whose `_class_name` names no diffusers pipeline class."""
    import diffusers

    name = index.get("_class_name")
    if name is None:
        return "its model_index.json names no pipeline class (_class_name)"
    return f"its model_index.json names {name!r}, which is no pipeline class of diffusers {diffusers.__version__}"


def listed_parts(index: dict) -> dict[str, tuple[str, str]]:
    """{part: (library, class)} of every part model_index.json lists with a class ([null, null]: none)."""
    return {k: tuple(v) for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
            and len(v) == 2 and all(isinstance(x, str) for x in v)}


def parts_problem(folder: str, index: dict, cls, passed: tuple[str, ...] = ("transformer",),
                  fetch=None, instead: str = "") -> str | None:
    """What is wrong with the parts of pipeline folder `folder` (model_index.json `index`, naming
    pipeline class `cls`), in words; None where nothing is. `passed`: parts given to from_pretrained,
    which the folder need not hold: (1) a part `cls` needs that the index does not list: the index of
    another pipeline class (diffusers refuses it only as it loads), or of a partial pipeline (a
    hand-written one listing its transformer alone: partial_problem, `instead` after its advice);
    (2) a part the index lists whose folder is missing or empty (diffusers builds it without its
    files). `fetch`: the lacking parts -> how to get them, in words (default: copy them from the
    pipeline the folder came from)."""
    listed = listed_parts(index)
    expected, _ = cls._get_signature_keys(cls)
    unlisted = sorted(set(expected) - set(index) - set(passed) - set(getattr(cls, "_optional_components", [])))
    if unlisted and not _another_class(index, cls, listed, expected, folder):
        return partial_problem(cls, listed, unlisted, fetch, instead)
    if unlisted:
        return (f"its model_index.json names {cls.__name__}, which needs {', '.join(unlisted)}, and lists "
                f"{', '.join(sorted(listed)) or 'no parts'} (a pipeline of another class, or a _class_name edited?)")
    return lacking_problem(folder, listed, passed, fetch)


def _another_class(index: dict, cls, listed: dict, expected: list[str], folder: str) -> bool:
    """Whether the model_index.json `index` is another pipeline class's than the `cls` it names: it
    lists a part `cls` does not take (its `expected`), or a transformer of another family than `cls`'s
    (pipeline_family: a PixArt index whose _class_name was edited to FluxPipeline)."""
    from compress.arch import ADAPTERS
    from compress.pipeline_family import index_transformer, pipeline_family

    family, found = pipeline_family(cls.__name__), index_transformer(index, folder)
    return bool(set(listed) - set(expected)) or (
        family is not None and found is not None and found[0] != ADAPTERS[family].class_name)


def partial_problem(cls, listed: dict, unlisted: list[str], fetch=None, instead: str = "") -> str:
    """parts_problem's words for a partial pipeline folder: its model_index.json (hand-written, or
    a pipeline's trimmed) lists `listed` alone, of the parts pipeline class `cls` takes, and not the
    `unlisted` it needs to sample; `fetch`: lacking_problem's, then `instead` (another way out)."""
    it = "it" if len(unlisted) == 1 else "them"
    how = fetch(unlisted) if fetch is not None else (f"copy {it} from the pipeline the folder came from, with "
                                                     "their model_index.json entries")
    return (f"its model_index.json lists {', '.join(sorted(listed)) or 'no parts'} alone, and a {cls.__name__} "
            f"also needs {', '.join(unlisted)} to sample (a partial pipeline folder): {how}{instead}")


def lacking_problem(folder: str, listed: dict[str, tuple[str, str]], passed: tuple[str, ...] = ("transformer",),
                    fetch=None) -> str | None:
    """What parts_problem's (2) says: the parts of `listed` (listed_parts of the folder's model_index.json)
    but `passed` without a folder of files in pipeline folder `folder`, in words; None where none lacks one.
    Also of a saved toy pipeline's (its scheduler/: io_pipeline.saved_scheduler, check_calibration_pipeline)."""
    root = Path(folder).expanduser()
    lacking = [k for k in sorted(listed) if k not in passed and not _has_files(root / k)]
    if not lacking:
        return None
    parts = ", ".join(f"{k} ({' '.join(listed[k])})" for k in lacking)
    it = "it" if len(lacking) == 1 else "them"
    how = fetch(lacking) if fetch is not None else f"copy {it} from the pipeline the folder came from"
    return (f"its model_index.json lists {parts}, but the folder has no {'/, '.join(lacking)}/ with files in it "
            f"({lacking_aside(lacking, listed)}); {how}")


def lacking_aside(lacking: list[str], listed: dict[str, tuple[str, str]]) -> str:
    """What diffusers would do with the `lacking` parts (listed_parts' `listed`), in words: a tokenizer
    it builds from nothing (without its vocabulary); a scheduler's or model's load stops on the file
    it reads ('no file named scheduler_config.json'), after a calibration run's teacher has loaded."""
    built = [k for k in lacking if listed[k][1].endswith(("Tokenizer", "TokenizerFast"))]
    stopped = [k for k in lacking if k not in built]
    words = []
    if built:
        names = "it" if not stopped else ", ".join(built)
        words.append(f"diffusers would build {names} from nothing: "
                     + ("a tokenizer without its vocabulary" if len(built) == 1 else "tokenizers without their vocabularies"))
    if stopped:
        names = ("it" if len(stopped) == 1 else "them") if not built else ", ".join(stopped)
        words.append(f"{'and ' if built else 'diffusers would '}stop loading {names} on a file it reads")
    return "; ".join(words) if len(words) == 1 else f"{words[0]}, {words[1]}"


def index_problem(folder: str, index: dict, passed: tuple[str, ...] = ("transformer",), fetch=None,
                  instead: str = "") -> str | None:
    """What is wrong with the pipeline folder `folder` whose model_index.json, read (folder_index), is
    `index` (unknown_class, parts_problem; `passed`, `fetch`, `instead`: parts_problem's), in words; None where
    nothing is."""
    cls = pipeline_class(index)
    if cls is None:  # a class whose packages are missing (diffusers' dummy): need_transformers says so
        return None if _dummy(index) else unknown_class(index)
    return parts_problem(folder, index, cls, passed, fetch, instead)


# a part's weight file, one or a shard: diffusers' diffusion_pytorch_model, transformers' model / pytorch_model,
# plain or a variant's (save_pretrained(variant="fp16"): NAME[-00001-of-00002].fp16[-00001-of-00002].safetensors)
_PART_WEIGHTS = r"(?:diffusion_pytorch_model|model|pytorch_model)(?:-\d+-of-\d+)?(?:\.(\w+))?(?:-\d+-of-\d+)?\.(?:safetensors|bin)"


def parts_variant(folder: str, index: dict, passed: tuple[str, ...] = ("transformer",)) -> str | None:
    """The weight variant (`fp16` ...) to give from_pretrained for the pipeline folder `folder`
    (model_index.json `index`): the one its listed parts (but `passed`, given to from_pretrained) hold
    where one holds only that variant's weights (save_pretrained(variant="fp16"), a download of
    "*.fp16.*"), as io_variants.weights_variant finds a transformer's; diffusers reads the plain weights of a
    part without them. None where each holds plain weights; a UserError where they hold two variants
    only (no one from_pretrained reads them all)."""
    only = set()
    for name in listed_parts(index):
        part = Path(os.path.expanduser(folder)) / name
        if name in passed or not part.is_dir():
            continue
        found = {m[1] for f in part.iterdir() if (m := re.fullmatch(_PART_WEIGHTS, f.name))}
        if found and None not in found:
            only |= found
    if len(only) > 1:
        raise UserError(f"{folder}'s parts hold the weight variants {', '.join(sorted(only))} only, and "
                        "from_pretrained reads one; save them as one variant (or plain)")
    return next(iter(only), None)


def cached_variant(source: str) -> dict:
    """{"variant": V} where the Hugging Face cache's snapshot of the Hub pipeline `source`
    (pipeline_cache.cached_index: refs/main's, the one diffusers reads offline) holds parts of V's
    weights alone (parts_variant: `hf download ID --include '*.fp16.*' …`), whether the load reads the
    cache (io_hub_pipeline.hub_or_cache's local_files_only: diffusers read their plain weights and found
    none) or the Hub: online diffusers fetched the plain weights the download left out (GBs of a text
    encoder) and sampled with other parts than the same run offline. {} otherwise (nothing cached: the
    Hub's files are diffusers' to pick); a local folder's parts_variant is given apart."""
    from compress.pipeline_cache import cached_index

    found = cached_index(source)
    variant = parts_variant(str(found[0]), found[1]) if found is not None else None
    return {"variant": variant} if variant else {}


def _dummy(index: dict) -> bool:
    """Whether diffusers holds the class model_index.json names as a placeholder for want of a
    package (transformers, on a core install)."""
    import diffusers
    from diffusers.utils import DummyObject

    name = index.get("_class_name")
    return isinstance(name, str) and isinstance(getattr(diffusers, name, None), DummyObject)


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def toy_pipeline(pipeline: str) -> str | None:
    """'toy:NAME' where the pipeline `pipeline` is a toy's: toy:NAME itself, or a folder a toy pipeline's
    save_pretrained wrote (its model_index.json names ToyPixArtPipeline or ToyFluxPipeline; its toy text
    encoder and VAE, no diffusers classes, are not saved, so diffusers cannot load it: it is the toy's
    with the scheduler saved there, as load_pipeline takes it for a base); else None."""
    if pipeline.startswith("toy:"):
        return pipeline
    path = Path(pipeline).expanduser() / "model_index.json"
    try:
        index = read_json(path) if path.is_file() else None
    except UserError:  # no JSON: said where the folder is checked (folder_index)
        return None
    return index_toy(index)


def index_toy(index) -> str | None:
    """'toy:NAME' where the model_index.json `index` (as read) names a toy pipeline's class
    (toy.weights.PIPELINE_CLASSES), else None."""
    from compress.toy.weights import toy_pipeline_family

    name = index.get("_class_name") if isinstance(index, dict) else None
    family = toy_pipeline_family(name) if isinstance(name, str) else None
    return f"toy:{family}" if family else None


def _toy_problem(toy: str, family: str | None) -> str | None:
    """A saved toy pipeline of another family than the recipe's model (`family`), in words; else None."""
    if family is None or toy == f"toy:{family}":
        return None
    return f"it is a saved {toy} pipeline (its model_index.json), and the recipe's model is {family}"


# a teacher's partial pipeline folder: its transformer loads, and the inputs can be sampled elsewhere
TEACHER_INSTEAD = ("; or set calibration.pipeline to a whole pipeline of the teacher's family, or calibration.source: "
                   "synthetic (the teacher's transformer/ loads from this folder either way)")


def check_calibration_pipeline(calib, teacher_source: str) -> dict | None:
    """The pipeline a pipeline source samples in (calibration.pipeline, else the teacher), checked by
    plan as by run before any weights load (inputs.source_kind): a local calibration.pipeline there
    (check_pipeline_there); where it holds a model_index.json, that fitting its class and folders
    (index_problem; a saved toy pipeline's, the recipe's model and its listed scheduler/: `index_toy`,
    lacking_problem), and a
    calibration.pipeline the teacher's family (family_problem; a Hub id's model_index.json as the
    cache holds it: pipeline_cache.cached_index). Errors name the recipe's line. (A folder without
    model_index.json is refused by check_pipeline_source, which plan and run call as they check the
    recipe's sources (io_source_recipe.check_sampled_pipeline) and the pipeline source as it is made;
    source_kind's other callers take it as a transformer folder.) Returns the local folder's
    model_index.json as read (folder_index; None where there is none), which the callers read after
    (inputs.Sampling)."""
    from compress.inputs import pipeline_at

    pipeline = calib.pipeline or teacher_source
    if pipeline.startswith("toy:"):
        return None
    where = pipeline_at(calib, teacher_source)
    if calib.pipeline:
        check_pipeline_there(calib, where)
    what = f"{where}cannot load calibration pipeline '{pipeline}': "
    index = local = folder_index(pipeline, what)  # read once
    snapshot = None
    if index is None:  # no local pipeline folder: a Hub id read from the cache offline is checked as one
        from compress.pipeline_cache import cached_index
        from compress.pipeline_snapshot import cached_problem

        if problem := cached_problem(pipeline, what):
            raise UserError(f"{what}{problem}")
        if not calib.pipeline or (found := cached_index(pipeline)) is None:
            return None  # not cached (or no Hub id): nothing to read without asking the Hub; its load says
        snapshot, index = found
    elif (toy := index_toy(index)) is not None:  # a saved toy pipeline: the toy's, its scheduler saved
        if problem := (_toy_problem(toy, getattr(calib.__dict__.get("_recipe"), "model", None))
                       or lacking_problem(pipeline, listed_parts(index))):  # no scheduler/: a transformer's folder
            raise UserError(f"{what}{problem}")
    elif problem := index_problem(pipeline, index, instead="" if calib.pipeline else TEACHER_INSTEAD):
        raise UserError(f"{what}{problem}")
    recipe = calib.__dict__.get("_recipe")
    if calib.pipeline and recipe is not None and (problem := family_problem(
            index, recipe.model, teacher_source, folder=snapshot or pipeline)):
        cached = f"the Hugging Face cache's snapshot {snapshot} of it: " if snapshot is not None else ""
        raise UserError(f"{what}{cached}{problem}")
    return local


def family_problem(index: dict, family: str, teacher: str, cls: str | None = None,
                   folder: str | Path | None = None) -> str | None:
    """'its model_index.json's transformer is a FluxTransformer2DModel, and the teacher T is a
    PixArtTransformer2DModel (pixart); …' where the pipeline whose model_index.json is `index` (in the
    folder or cached snapshot `folder`) is of another family than the teacher `teacher` of `family`
    (or of class `cls`, where it has loaded): its sampling failed inside diffusers (a PixArt teacher
    in a Flux pipeline: 'FrozenDict' object has no attribute 'guidance_embeds'; a Flux teacher in an
    older PixArt repo listing the generic Transformer2DModel: … 'sample_size'). None where they agree,
    or nothing tells the index's transformer's class (pipeline_family.index_transformer)."""
    from compress.arch import ADAPTERS
    from compress.pipeline_family import index_transformer, listed_words

    listed = index_transformer(index, folder)
    cls = cls or (ADAPTERS[family].class_name if family in ADAPTERS else None)
    if listed is None or cls is None or listed[0] == cls:
        return None
    teacher = f" {teacher}" if teacher else ""
    return (f"its model_index.json's transformer is a {listed_words(listed)}, and the teacher{teacher} "
            f"is a {cls}{f' ({family})' if family in ADAPTERS else ''}; set calibration.pipeline to a pipeline of the "
            "teacher's family")
