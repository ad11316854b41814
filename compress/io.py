"""Teachers in.

`load_teacher(source)` accepts `toy:pixart` / `toy:flux` (the shipped toy teachers), a Hugging Face id,
a diffusers pipeline folder (its `transformer/`), a transformer folder, or a single-file checkpoint
(io_single), each checked first as io_source says what a source is; the teacher a compressed model is
compared with in io_teacher_of. Also the shared reading helpers (configs, JSON; a folder's weight files and
variants in io_variants, tensors in io_tensors, why weights did not load in io_errors, the Hub in io_hub) and
the file names of DESIGN.md's output folder, which `io_export.save_compressed` writes and
`io_output.load_transformer` reads back.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from compress.arch import family_of_class
from compress.errors import UserError
from compress.io_tensors import one_line
from compress.io_variants import older_index_note, stored_dtype, variant_weights, weights_variant

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"  # sharded checkpoints (save_pretrained's layout)
FORMAT = 1


# ---- teachers ---------------------------------------------------------------------------------
def pipeline_dtype(dtype: torch.dtype) -> dict:
    """The dtype keyword of `DiffusionPipeline.from_pretrained`: `dtype` where diffusers takes it
    (0.42 on, which warns that `torch_dtype` is deprecated), `torch_dtype` before."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def model_class(class_name: str):
    family_of_class(class_name)  # raises a UserError naming the supported classes
    import diffusers

    return getattr(diffusers, class_name)


def config_model_class(config: dict, file: Path | None = None, shown: tuple[str, str] | None = None):
    """The diffusers class of a transformer config.json `config` as diffusers loads it
    (pipeline_family.built_class: an older PixArt repo's generic Transformer2DModel is a
    PixArtTransformer2DModel); a UserError naming the supported classes, or, given the config's `file`,
    naming what it holds and what to give (supported_class; `shown`: its)."""
    from compress.pipeline_family import built_class

    return model_class(built_class(config) if file is None else supported_class(config, file, shown))


GIVE_TRANSFORMER = "give the pipeline folder or its transformer/ folder"
GIVE_HUB = "give the Hub id of a PixArt or Flux pipeline or transformer, or a local folder"


def supported_class(config: dict, file: Path | None, shown: tuple[str, str] | None = None) -> str:
    """The PixArt or Flux transformer class the config.json `config` (read from `file`) builds
    (pipeline_family.built_class); a UserError naming the folder (or file) and what it holds otherwise:
    another diffusers model ('T/vae holds an AutoencoderKL (not a PixArt or Flux transformer): give the
    pipeline folder or its transformer/ folder'), a transformers config (its architectures), or a config
    that names no _class_name (the one to add where its keys tell the family). `shown`: (the words naming
    the holder, what to give) in place of its path and GIVE_TRANSFORMER (a Hub id's: io_hub.hub_shown;
    `file` may be None then)."""
    from compress.arch import SUPPORTED, family_of_class
    from compress.pipeline_family import built_class, config_class

    name = built_class(config)
    holder, give = shown or (file.parent if file.name == "config.json" else file, GIVE_TRANSFORMER)
    file = file if shown is None else f"the config.json of {holder}"
    if name in SUPPORTED.split(", "):
        return name
    if config.get("_class_name") is not None:  # another diffusers model's
        what = str(name)
    elif isinstance(config.get("architectures"), list) or "model_type" in config:  # a transformers config
        archs = [str(a) for a in config.get("architectures") or []] or [str(config.get("model_type"))]
        what = f"transformers {', '.join(archs)}"
    else:
        told = config_class(config)
        if told is not None and told in SUPPORTED.split(", "):
            raise UserError(f'{file} names no _class_name: add "_class_name": "{told}" (its keys are a '
                            f"{family_of_class(told)} transformer's)")
        raise UserError(f"{file} names no _class_name and its keys are no PixArt or Flux transformer's: "
                        f"{give}, or add its _class_name ({SUPPORTED})")
    article = "an" if what[:1] in "AEIO" or (what[:1] == "U" and not what[1:2].isupper()) else "a"  # a UNet2DModel
    raise UserError(f"{holder} holds {article} {what} (not a PixArt or Flux transformer): {give}")


def load_teacher(source, dtype: torch.dtype | str | None = torch.float32, config: str | None = None,
                 family: str | None = None, *, config_key: str = "config=") -> nn.Module:
    """Load a teacher transformer: a source (a path or a name), or an io_source_config.TeacherSource
    checked already. `dtype`: a torch dtype or its name ('bfloat16'); None keeps the weights' own
    dtype, as `load_transformer` does (a folder's or Hub repo's that mixes dtypes: one that holds each
    exactly, stored_dtype). `config` (folder or config.json) is needed for single files whose config
    cannot be fetched; `family` ('pixart'|'flux') overrides detection from keys. `config_key`: how the
    caller gives `config`, as a refusal of it names it (config=; the commands' --teacher-config)."""
    from compress.io_output import as_dtype
    from compress.io_source import check_source, prefixed
    from compress.io_source_config import TeacherSource

    dtype = as_dtype(dtype, "load_teacher")  # before any source is read
    where = ""  # a checked source's errors start where it was given (a pickle's are said as it loads)
    named = ("", config_key)  # where its config was given, and by what (TeacherSource.config_where)
    if isinstance(source, TeacherSource):
        named = source.config_where()
        source, kind, where = source.source, source.kind, source.where
    else:  # empty, unknown toy, not there, not a teacher: said before loading
        source = str(source)
        kind = check_source(source)
    if kind == "toy":
        from compress.toy import load_toy_teacher

        return load_toy_teacher(source[4:], dtype=dtype or torch.float32)  # its weights are float32
    path = Path(source).expanduser()
    if kind == "folder":  # a folder of .bin weights: checked against its config only as it loads
        return prefixed(where, _load_folder, path, dtype)
    if kind == "file":
        return _load_file(path, dtype, config, family, where, named)
    return _load_hub(source, dtype, where)


def cast(model: nn.Module, *args) -> nn.Module:
    """model.to(*args), as diffusers' `from_pretrained(torch_dtype=...)` would have loaded it: the
    non-persistent buffers (PixArt's sin-cos `pos_embed`, built at init and never saved) keep their
    dtype and only move, so every loader (folder, single file, stream, output) computes alike. No
    diffusers warning about float32-kept modules when the class keeps none (PixArt and Flux declare
    an empty list, and diffusers 0.42 warns on any dtype cast then)."""
    kept = [(m, name, buf) for m in model.modules() for name, buf in m._buffers.items()
            if name in m._non_persistent_buffers_set and buf is not None and buf.is_floating_point()]
    if getattr(model, "_keep_in_fp32_modules", None):
        model = model.to(*args)  # a real list: let diffusers say it
    else:
        model = nn.Module.to(model, *args)
    for m, name, buf in kept:
        m._buffers[name] = buf.to(m._buffers[name].device)
    return model


def read_json(path: Path) -> dict:
    from compress import json_read

    try:
        return json_read.read(path)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError, json_read.NestedTooDeep
        raise UserError(f"cannot read {path}: {e}") from None


def transformer_folder(path: Path) -> Path:
    """The folder holding a teacher's config.json (transformer_place); a UserError where `path` has none."""
    found = transformer_place(path)
    if found is not None:
        return found
    if (refused := pipeline_without_transformer(path)) is not None:
        raise refused
    raise UserError(f"{path} has neither model_index.json nor config.json; expected a diffusers "
                    "pipeline folder, a transformer folder or a single-file checkpoint")


def transformer_place(path: Path) -> Path | None:
    """The folder holding the transformer's config.json in the folder `path`, one rule for a teacher
    (transformer_folder) and an output (io_output.output_folder), so a folder given to run --teacher
    and to inspect, eval, bench, lora or load_transformer is read alike: the `transformer/` of a
    pipeline folder (model_index.json) or of a download of that subfolder alone (no config.json of
    its own), else `path` where it has a config.json (beside a model_index.json too: the one there is);
    None where there is neither (each caller refuses in its own words: a teacher may also be a file)."""
    sub = transformer_sub(lambda name: (path / name).is_file())
    return None if sub is None else path / sub


def transformer_sub(holds) -> str | None:
    """transformer_place's rule, given `holds(name)`: whether a repo (a folder, a Hub repo's file
    list: io_hub) holds the file `name`. 'transformer/' where it holds transformer/config.json and
    model_index.json or no config.json of its own; '' where it holds config.json; else None."""
    inner, own = holds("transformer/config.json"), holds("config.json")
    if inner and (not own or holds("model_index.json")):
        return "transformer/"
    return "" if own else None


def pipeline_without_transformer(path: Path) -> UserError | None:
    """The one line refusing a pipeline folder (model_index.json) with no config.json to read
    (transformer_place finds none), as a teacher and as an output; None for any other folder."""
    if transformer_place(path) is None and (path / "model_index.json").is_file():
        return UserError(f"{path} is a pipeline folder without transformer/config.json")
    return None


def read_config(path: Path) -> dict:
    """A diffusers config.json: a mapping, or a UserError naming the file."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a diffusers config (a JSON object); it holds a {type(config).__name__}")
    return config


def weight_index(path: Path) -> dict[str, str]:
    """The weight_map of a weight index (NAME.index.json): tensor name -> shard file name, as listed
    (empty or not: each caller says what it needs); a UserError naming the file where it is no JSON
    object, or its weight_map no mapping of names to file names."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a weight index (a JSON object with a weight_map); it holds a {type(data).__name__}")
    listed = data.get("weight_map")
    if listed is None:
        raise UserError(f"{path} has no weight_map")
    if not isinstance(listed, dict):
        raise UserError(f"{path}'s weight_map is a {type(listed).__name__}, not a mapping of tensor names to shard files")
    if bad := next(((k, v) for k, v in listed.items() if not isinstance(v, str)), None):
        raise UserError(f"{path}'s weight_map gives the tensor {bad[0]!r} the shard {json.dumps(bad[1])}, not a file name")
    return listed


def from_config(cls, config: dict, source) -> nn.Module:
    """cls.from_config, with a config value the class rejects reported against its file; an older PixArt
    repo's Transformer2DModel-only keys left out (taken_keys)."""
    try:
        return cls.from_config(taken_keys(cls, config))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{source}: the config does not build a {cls.__name__}: {one_line(e)}") from None


def taken_keys(cls, config: dict) -> dict:
    """`config` without the keys of diffusers' generic Transformer2DModel that `cls`'s __init__ does not
    take: an older PixArt repo's config (double_self_attention, num_vector_embeds ...), which diffusers
    ignores warning that they 'were passed to X, but are not expected'. Other keys kept (a typo still
    warned of)."""
    import inspect

    from diffusers import Transformer2DModel

    generic, params = (inspect.signature(c.__init__).parameters for c in (Transformer2DModel, cls))
    return {k: v for k, v in config.items() if k not in generic or k in params}


def _load_folder(path: Path, dtype) -> nn.Module:
    from compress.io_errors import broken_weights, check_loading_info, check_safetensors_dir, no_weights, not_loaded
    from compress.progress import no_library_bars

    path = transformer_folder(path)
    config = read_config(path / "config.json")
    if "compression" in config:
        from compress.io_output import load_transformer

        return load_transformer(path, dtype=dtype)
    cls = config_model_class(config, path / "config.json")
    check_safetensors_dir(path)
    variant = weights_variant(path)
    files = variant_weights([f.name for f in path.iterdir()], variant)
    if not files:  # diffusers: 'An error occurred while trying to fetch', 'Defaulting to unsafe serialization', then its error
        raise no_weights(path, variant)
    if (broken := broken_weights(path, files)) is not None:  # diffusers: no such file, or an unreadable one
        raise UserError(broken)
    if dtype is None:
        dtype = stored_dtype(path, variant)
    try:
        # the weights that do not fill the model: check_loading_info's one line; a sharded one's bar: none
        with quiet_diffusers(), no_library_bars(), warnings.catch_warnings():
            # diffusers' FutureWarning (its file:line and source line too) on an index of the older name:
            # older_index_note says it in one line
            warnings.filterwarnings("ignore", message="This serialization format is now deprecated",
                                    category=FutureWarning)
            model, info = cls.from_pretrained(path, torch_dtype=dtype, variant=variant, output_loading_info=True,
                                              use_safetensors=not any(f.endswith(".bin") for f in files))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise not_loaded(cls, path, e) from None
    check_loading_info(path, info)
    older_index_note(path, files, variant)
    return model.eval()


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers' log held to its errors: missing or unexpected weights are 2 KB of names and 'You
    should probably TRAIN this model', where check_loading_info says them in one line."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _load_file(path: Path, dtype, config: str | None, family: str | None, where: str,
               named: tuple[str, str]) -> nn.Module:
    """A single-file teacher (io_single.load_single_file), what its load refuses said after `where`, but a
    config of another family than its tensors' (an io_single.OtherConfig: a pickle's family shows only as
    it loads) after where that config was given, its advice naming what gave it (`named`: a recipe's
    ('PATH:LINE: ', 'teacher_config'), else (`where`, '--teacher-config'))."""
    from compress.io_single import OtherConfig, load_single_file

    config_where, key = named
    try:
        # an error keeps its kind: run words an io_single.OtherFamily as its recipe's model line (runner_setup)
        return load_single_file(path, dtype, config, family, key=key)
    except UserError as e:
        place = config_where if isinstance(e, OtherConfig) else where
        e.args = (f"{place}{e}", *e.args[1:])
        raise


def _load_hub(repo_id: str, dtype, where: str = "") -> nn.Module:
    """A Hub teacher: its transformer's folder downloaded (hub_folder), then loaded as a local one, what
    that load refuses said after `where` as a folder's is (.bin weights are checked only as they load)."""
    from compress.io_hub import hub_folder
    from compress.io_source import prefixed

    return prefixed(where, lambda: _load_folder(hub_folder(repo_id), dtype))  # one not fetched: said after `where`
