"""Teacher sources before anything loads: what a source names (a toy teacher, a local folder or
file, a Hugging Face id), its model family read from its config alone, and where the user gave it
(a recipe's file:line, or --teacher), so that a mistake is one line saying what and where.

Relative paths: a teacher (`--teacher` or a recipe's `teacher:`) is taken from the current folder;
a recipe's `calibration.prompt_file` from the recipe's folder.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from compress.errors import UserError

# hub ids whose transformer config ships with dit-compress (compress/configs/): planned offline
KNOWN_CONFIGS = {
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "PixArt-Sigma-XL-2-1024-MS.json",
    "black-forest-labs/FLUX.1-dev": "FLUX.1-dev.json",
}
SOURCES = "toy:pixart, toy:flux, a Hugging Face id (OWNER/NAME), or a local folder or checkpoint file"


# ---- where a value came from ------------------------------------------------------------------
def recipe_where(recipe, dotted: str, value) -> str:
    """'PATH:LINE' of the recipe key `dotted` (`calibration.prompt_file`) holding `value`, for an
    error about that value; 'PATH (--set KEY)' where the command line set it instead."""
    import yaml

    try:
        node = yaml.compose(Path(recipe.path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return recipe.path
    for key in dotted.split("."):
        items = node.value if isinstance(node, yaml.MappingNode) else []
        node = next((v for k, v in items if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    if isinstance(node, yaml.ScalarNode) and _same(node.value, value) or isinstance(node, yaml.CollectionNode):
        return f"{recipe.path}:{node.start_mark.line + 1}"  # a list or mapping: the file's (not compared)
    return f"{recipe.path} (--set {dotted})"


def _same(text: str, value) -> bool:
    """The recipe's scalar `text` holds `value` (7 and 1e1 hold the floats 7.0 and 10.0)."""
    import yaml

    from compress.recipe import RecipeLoader

    try:
        return text == str(value) or yaml.load(text, Loader=RecipeLoader) == value
    except yaml.YAMLError:
        return False


def teacher_where(recipe, teacher_arg: str | None) -> str:
    """The prefix of an error about the teacher: 'PATH:LINE: ' of the recipe's `teacher:`, or ''
    when --teacher gave it."""
    return "" if teacher_arg else recipe_where(recipe, "teacher", recipe.teacher) + ": "


def check_teacher_options(teacher: str | None, config: str | None) -> None:
    """--teacher, when given, names something; --teacher-config, when given, exists (a UserError
    otherwise, before anything loads: an empty --teacher is not the recipe's teacher)."""
    if teacher is not None and not teacher.strip():
        raise UserError("--teacher is empty: give a hub id, folder, file or toy:NAME, or leave --teacher out "
                        "to use the recipe's (or the recorded) teacher")
    if config is not None and not Path(config).expanduser().exists():
        raise UserError(f"--teacher-config {config!r}: no such file or folder (the diffusers config of a "
                        "single-file teacher: a folder, a pipeline folder or a config.json)")


# ---- what a source is -------------------------------------------------------------------------
def check_source(source: str, where: str = "", recipe_dir: Path | None = None) -> str:
    """The kind of a teacher source, 'toy', 'folder', 'file' or 'hub', before anything is read; a
    UserError (after `where`, see teacher_where) for an empty one, an unknown toy teacher, a
    missing path, or a folder or file that is not a teacher. `recipe_dir`: the folder of the
    recipe that named it, where a path missing here may be (the message says so)."""
    from compress.io import SINGLE_FILE_SUFFIXES, looks_local, transformer_folder

    if not source.strip():
        raise UserError(f"{where}the teacher is empty; give {SOURCES}")
    if source.startswith("toy:"):
        from compress.toy.weights import check_toy_name

        _prefixed(where, check_toy_name, source[4:])
        return "toy"
    path = Path(source).expanduser()
    if path.is_dir():
        _prefixed(where, transformer_folder, path)
        return "folder"
    if path.is_file():
        _prefixed(where, check_suffix, path)
        return "file"
    if path.suffix in SINGLE_FILE_SUFFIXES or looks_local(source):
        raise UserError(f"{where}{not_found(source, recipe_dir)}")
    return "hub"


def _prefixed(where: str, call, *args):
    """call(*args), a UserError it raises said after `where`."""
    try:
        return call(*args)
    except UserError as e:
        raise UserError(f"{where}{e}") from None


def check_suffix(path: Path, expected: str = "a teacher is a folder or a checkpoint file") -> None:
    """A single-file checkpoint has a suffix the loaders read."""
    from compress.io import SINGLE_FILE_SUFFIXES

    if path.suffix not in SINGLE_FILE_SUFFIXES:
        kind = f"file type '{path.suffix}'" if path.suffix else "no file type"
        raise UserError(f"{path} is not a checkpoint: {kind}; {expected} "
                        f"({', '.join(SINGLE_FILE_SUFFIXES)})")


def not_found(source: str, recipe_dir: Path | None = None) -> str:
    """'teacher not found: SOURCE (...)': the absolute path looked for and, for a recipe's relative
    path, the rule (from the current folder) and the path from the recipe's folder where that is it."""
    path = Path(source).expanduser()
    words = f"teacher not found: {source} (there is no {os.path.abspath(path)}"
    if not path.is_absolute() and recipe_dir is not None:
        words += "; a recipe's relative teacher path is taken from the current folder, not the recipe's"
        there = os.path.abspath(Path(recipe_dir) / path)
        if Path(there).exists():
            words += f", where {there} is: give that path instead"
    if "/" not in source:
        words += "; a Hugging Face id is OWNER/NAME"
    return words + ")"


# ---- configs and families, without weights ------------------------------------------------------
def teacher_config(source: str, config: str | None = None, where: str = "", hub: bool = False) -> dict:
    """The diffusers config of a teacher source, read without its weights: a folder's (or its
    transformer/'s) config.json, a single file's (beside it, or `config`: --teacher-config), a
    toy's, the shipped one of a known Hub id (KNOWN_CONFIGS), or with `hub` the Hub's
    transformer/config.json (a Hub id otherwise needs `config`)."""
    from compress.io import read_config, read_json, transformer_folder
    from compress.io_single import config_dir

    kind = check_source(source, where)
    if kind == "toy":
        from compress.toy.weights import toy_files

        return read_json(toy_files(source[4:])[0])
    path = Path(source).expanduser()
    if kind == "folder":
        return read_config(transformer_folder(path) / "config.json")
    if kind == "file" or config:
        return read_config(_prefixed(where, config_dir, path, config) / "config.json")
    if source in KNOWN_CONFIGS:
        return json.loads(resources.files("compress.configs").joinpath(KNOWN_CONFIGS[source]).read_text())
    if hub:
        return hub_config(source)
    raise UserError(f"{where}cannot find a config for teacher '{source}' offline (plan reads the configs of "
                    f"local teachers and of {', '.join(KNOWN_CONFIGS)}); pass --teacher-config with its "
                    "transformer's config.json")


def hub_config(repo_id: str) -> dict:
    """The transformer config of a Hub pipeline repo (transformer/config.json alone, a few KB)."""
    from huggingface_hub import hf_hub_download

    from compress.io import hub_error, quiet_hub, read_config

    try:
        with quiet_hub():
            path = hf_hub_download(repo_id, "config.json", subfolder="transformer")
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
    return read_config(Path(path))


def source_family(source: str, config: str | None = None, where: str = "",
                  hub: bool = True) -> tuple[str, str] | None:
    """(family, class name) of a teacher source from its config (or, for a .safetensors file, its
    tensor names) without reading weights; None for a pickle or a file whose names do not tell
    (its loader checks it)."""
    from compress.arch import family_of_class, get_adapter

    kind = check_source(source, where)
    if kind == "toy":
        family = source[4:]
    elif kind == "file":
        from compress.io_single import file_family

        family = file_family(Path(source).expanduser())
        if family is None:
            return None
    else:
        cls = teacher_config(source, config, where, hub).get("_class_name", "<missing _class_name>")
        family = _prefixed(where, family_of_class, str(cls))
    return family, get_adapter(family).class_name


# ---- a recipe's sources -----------------------------------------------------------------------
def check_sources(recipe, teacher: str | None = None, config: str | None = None, hub: bool = True) -> str:
    """The teacher source a recipe's run uses (`teacher`: --teacher; `config`: --teacher-config),
    checked before any weights load: it is there and is a teacher of the recipe's model family
    (from its config; with `hub`, a Hub id's is fetched, never its weights); and the prompt file
    the recipe names is there. Errors name the recipe's file:line where it gave the value."""
    source = teacher or recipe.teacher
    where = teacher_where(recipe, teacher)
    check_source(source, where, None if teacher else Path(recipe.path).parent)
    found = source_family(source, config, where, hub)
    if found and found[0] != recipe.model:
        given = " (--teacher)" if teacher else ""
        raise UserError(f"{recipe_where(recipe, 'model', recipe.model)}: model is '{recipe.model}' but the "
                        f"teacher {source}{given} is a {found[1]} ({found[0]}); set model: {found[0]} or give "
                        f"a {recipe.model} teacher")
    check_prompt_file(recipe, source)
    warn_unused_calibration(recipe, source)
    return source


PIPELINE_ONLY = ("prompts", "prompt_file", "pipeline", "sample_steps", "prompts_per_call", "guidance_scale",
                 "height", "width")  # calibration keys a toy or synthetic source does not read


def unused_calibration(calib, kind: str) -> list[tuple[str, str]]:
    """(key, why) of calibration keys set away from their defaults that do nothing for a source of
    `kind` (toy, synthetic, pipeline)."""
    defaults = type(calib)()
    if kind != "pipeline":
        return [(k, f"only a pipeline source reads it; the {kind} source ignores it")
                for k in PIPELINE_ONLY if getattr(calib, k) != getattr(defaults, k)]
    if calib.timesteps > calib.sample_steps:
        return [("timesteps", f"{calib.timesteps} timesteps of a {calib.sample_steps}-step sampler: only "
                              f"{calib.sample_steps} are captured (raise calibration.sample_steps)")]
    return []


def warn_unused_calibration(recipe, source: str) -> None:
    """A warning per calibration key that does nothing here (unused_calibration), at its line."""
    from rich.markup import escape

    from compress.inputs import source_kind
    from compress.report import console

    calib = recipe.calibration
    for key, why in unused_calibration(calib, source_kind(calib, source)):
        where = recipe_where(recipe, f"calibration.{key}", getattr(calib, key))
        console.print(f"[bold yellow]warning:[/] {escape(f'{where}: calibration.{key}: {why}')}")


def check_prompt_file(recipe, source: str) -> None:
    """A pipeline calibration's `prompt_file` is a file (taken from the recipe's folder); the
    message names its line, the path looked for and that rule."""
    from compress.inputs import source_kind

    name = recipe.calibration.prompt_file
    if not name or source_kind(recipe.calibration, source) != "pipeline":
        return
    path = Path(name).expanduser()
    looked = Path(os.path.abspath(Path(recipe.path).parent / path))
    if looked.is_file():
        return
    rule = "" if path.is_absolute() else " (a relative prompt_file is taken from the recipe's folder)"
    what = "is a folder, not a file of prompts" if looked.is_dir() else "not found"
    raise UserError(f"{recipe_where(recipe, 'calibration.prompt_file', name)}: calibration.prompt_file {name} "
                    f"{what}: {looked}{rule}")
