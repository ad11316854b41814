"""The class of the transformer a pipeline's model_index.json lists (`index_transformer`), for the
family checks of a calibration pipeline (pipeline_folder.family_problem) and of load_pipeline's base:
diffusers' generic Transformer2DModel (older PixArt repos list it; diffusers makes it a
PixArtTransformer2DModel by its config) is told from what is there: the pipeline's
transformer/config.json (its _class_name, else its keys), else the index's pipeline class
(PixArt*Pipeline, Flux*Pipeline), else no class (nothing checked)."""

from __future__ import annotations

from pathlib import Path

from compress import json_read

GENERIC = "Transformer2DModel"

# a diffusers pipeline class's name's start -> the family of the transformer it samples with
PIPELINE_PREFIXES = {"PixArt": "pixart", "Flux": "flux"}

# config keys only a family's transformer config holds -> that family
CONFIG_KEYS = {"caption_channels": "pixart", "guidance_embeds": "flux", "num_single_layers": "flux"}

# the generic class's norm_type -> the class diffusers builds (its model_loading_utils._CLASS_REMAPPING_DICT)
REMAPPED = {"ada_norm_single": "PixArtTransformer2DModel", "ada_norm_zero": "DiTTransformer2DModel"}


def index_transformer(index: dict, folder: str | Path | None = None) -> tuple[str, str] | None:
    """(class, how) of the transformer the model_index.json `index` of the pipeline folder (or cached
    snapshot) `folder` lists: how is '' where the index names the class, else how the generic
    Transformer2DModel was told ('by its transformer/config.json', 'by its pipeline class X');
    None where it lists no transformer, or a generic one nothing tells."""
    from compress.pipeline_folder import listed_parts

    entry = listed_parts(index).get("transformer")
    if entry is None:
        return None
    if entry[1] != GENERIC:
        return entry[1], ""
    config = _transformer_config(folder)
    cls = config_class(config) if config is not None else None
    if cls is not None:
        return cls, "by its transformer/config.json"
    family = pipeline_family(index.get("_class_name"))
    return None if family is None else (_family_class(family), f"by its pipeline class {index['_class_name']}")


def config_class(config: dict) -> str | None:
    """The transformer class a transformer config.json `config` is of: its _class_name, or for the
    generic Transformer2DModel the family its keys tell (CONFIG_KEYS; PixArt's norm_type
    ada_norm_single); None where nothing tells."""
    name = config.get("_class_name")
    if isinstance(name, str) and name and name != GENERIC:
        return name
    families = {family for key, family in CONFIG_KEYS.items() if config.get(key) is not None}
    if config.get("norm_type") == "ada_norm_single":
        families.add("pixart")
    return _family_class(families.pop()) if len(families) == 1 else None


def built_class(config: dict) -> str:
    """The name of the transformer class diffusers builds from the config.json `config` of a teacher or
    an output: its _class_name; the generic Transformer2DModel with norm_type ada_norm_single (older
    PixArt repos) a PixArtTransformer2DModel, as diffusers' from_pretrained remaps it (REMAPPED); a
    UserError naming what is supported for a generic config of another norm_type (a DiT's ada_norm_zero)."""
    from compress.arch import SUPPORTED
    from compress.errors import UserError

    name = config.get("_class_name")
    if name != GENERIC:
        return "<missing _class_name>" if name is None else str(name)
    norm = config.get("norm_type")
    built = REMAPPED.get(norm, GENERIC) if isinstance(norm, str) else GENERIC
    if built == _family_class("pixart"):
        return built
    raise UserError(f"unsupported model class '{GENERIC}' with norm_type {norm!r} (diffusers builds a {built} of it); "
                    f"supported: {SUPPORTED}, "
                    f"and {GENERIC} with norm_type 'ada_norm_single' (older PixArt repos', read as a PixArtTransformer2DModel)")


def pipeline_family(name) -> str | None:
    """The family of the diffusers pipeline class named `name` (PIPELINE_PREFIXES), else None."""
    if not isinstance(name, str):
        return None
    return next((family for prefix, family in PIPELINE_PREFIXES.items() if name.startswith(prefix)), None)


def listed_words(listed: tuple[str, str]) -> str:
    """index_transformer's (class, how) in words: 'FluxTransformer2DModel', or 'Transformer2DModel (a
    PixArtTransformer2DModel by its pipeline class PixArtSigmaPipeline)'."""
    cls, how = listed
    return f"{GENERIC} (a {cls} {how})" if how else cls


def _family_class(family: str) -> str:
    from compress.arch import ADAPTERS

    return ADAPTERS[family].class_name


def _transformer_config(folder: str | Path | None) -> dict | None:
    """The transformer/config.json of pipeline folder `folder` as a dict; None where there is none or
    it cannot be read (its load says so)."""
    if folder is None:
        return None
    path = Path(folder).expanduser() / "transformer" / "config.json"
    try:
        config = json_read.read(path)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
