"""A folder given where a recipe file goes (`dit-compress plan real_flux`): said in one line, with
what the folder is and what to do with it (inspect an output; make a model folder a recipe's teacher),
in place of the OS's 'Is a directory'."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.runner_ranks import read_json as _json

SHIPPED = {"flux": "recipes/flux-dev-lite.yaml", "pixart": "recipes/pixart-sigma-50.yaml"}


def refuse_folder(path, command: str = "plan") -> None:
    """A UserError if `path` is a folder: a recipe is a YAML file. `command`: the dit-compress command
    that was typed (plan, run, importance), which the hint repeats with a recipe."""
    folder = Path(path)
    if not folder.is_dir():
        return
    head = f"{path}: a folder, where a recipe YAML file was expected"
    from compress.output_names import is_output

    if (folder / "report.json").is_file() or is_output(folder):
        recipe = folder / "recipe.yaml"
        again = f", or pass the recipe that made it, {recipe}" if recipe.is_file() else ""
        raise UserError(f"{head}; it is a dit-compress output: look at it with dit-compress inspect {path} "
                        f"(or eval {path}){again}")
    model = _model(folder)
    if model is None:
        raise UserError(f"{head} (see recipes/)")
    what, family = model
    shipped = SHIPPED.get(family, "RECIPE.yaml")
    raise UserError(f"{head}; it is a diffusers {what}: to compress it, make it a recipe's teacher: "
                    f"dit-compress {command} {shipped} --teacher {path} (or teacher: {path} in the recipe)")


def _model(folder: Path) -> tuple[str, str | None] | None:
    """('pipeline' or 'transformer', its family or None) of a diffusers folder; None for another folder."""
    from compress.pipeline_family import config_class, pipeline_family

    index = _json(folder / "model_index.json")
    if index is not None:
        return "pipeline", pipeline_family(index.get("_class_name"))
    config = _json(folder / "config.json")
    if config is None:
        return None
    name = config_class(config) or ""
    return "transformer", next((f for f in SHIPPED if f in name.lower()), None)
