"""A folder given where a recipe file goes (`dit-compress plan real_flux`): said in one line, with
what the folder is and what to do with it (inspect an output; make a model folder a recipe's teacher),
in place of the OS's 'Is a directory'; a recipe not there, with the one of its folder meant (.yaml
for .yml, a close name; in the folder of a close name where its own is not there: recipes/ for recipe/),
in place of 'No such file or directory'."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.runner_ranks import read_json as _json

SHIPPED = {"flux": "flux-dev-lite", "pixart": "pixart-sigma-50"}  # by name (recipe_shipped): a wheel has no recipes/


def refuse_folder(path, command: str = "plan") -> None:
    """A UserError if `path` is a folder: a recipe is a YAML file; or if it is not there: 'no such recipe
    recipes/toy-pixart.yml; did you mean 'recipes/toy-pixart.yaml'?' (`meant_recipe`; where none of its
    folder is meant, the shipped one: recipe_shipped.shipped_hint), in place of the OS's 'No such file or
    directory'. `command`: the dit-compress command that was typed (plan, run, importance), which the hint
    repeats with a recipe."""
    folder = Path(path)
    if not folder.exists():
        from compress.recipe_shipped import shipped_hint

        raise UserError(f"no such recipe {path}{meant_recipe(folder) or shipped_hint(path, command)}")
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


RECIPE_MB = 10  # a recipe's largest size: a few KB is usual, a larger file is another one given for it


def refuse_not_file(path) -> None:
    """A UserError where the recipe `path` (there, no folder: refuse_folder) is a device or a socket
    (/dev/zero: read until memory ran out) or a file larger than RECIPE_MB (a checkpoint given for a
    recipe), before a byte of it is read. A pipe is read (`plan <(cat r.yaml)`, `plan /dev/stdin`):
    by `read_recipe`, at most RECIPE_MB."""
    kind = special_kind(Path(path))
    if kind and kind != "a pipe":
        raise UserError(f"{path}: {kind}, not a file: a recipe is a YAML file")
    size = Path(path).stat().st_size
    if size > RECIPE_MB * 2**20:
        raise UserError(_too_large(path, f"{size / 2**20:.0f} MB"))


def read_recipe(path) -> bytes:
    """The bytes of the recipe `path` (refuse_not_file's checks passed), at most RECIPE_MB: a pipe that
    sends more (one that never ends) is refused once RECIPE_MB + 1 bytes are read."""
    limit = RECIPE_MB * 2**20
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise UserError(_too_large(path, f"more than {RECIPE_MB} MB"))
    return data


def _too_large(path, size: str) -> str:
    return (f"{path}: {size}, larger than a recipe ({RECIPE_MB} MB at most; a recipe is a YAML file of a few "
            "KB): is it the recipe?")


def special_kind(path: Path) -> str | None:
    """'a character device' (/dev/zero), 'a pipe', 'a socket', 'a block device' for a path there that is
    not a regular file nor a folder; None for a file, a folder, or a path not there."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a pipe",
             stat.S_ISSOCK: "a socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), None)


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


def meant_recipe(path: Path) -> str:
    """"; did you mean 'X'?" for the recipe `path` is not: a YAML file of its folder of the same name but
    its suffix (.yml for .yaml, or none), else of the closest name (errors.closest, did_you_mean's); where
    its folder is not there, of the folder of the closest name beside it (recipe/ for recipes/:
    `meant_folder`), or that folder alone where none of its files is close; '' where none is close."""
    from compress.errors import closest

    parent = path.parent
    folder = parent if parent.is_dir() else meant_folder(parent)
    if folder is None:
        return ""
    recipes = sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    stems = {Path(name).stem: name for name in reversed(recipes)}  # of x.yaml and x.yml, x.yaml
    # by stem: the folder would make all close, and a shared .yaml anchor.yaml close to base.yaml
    meant = stems.get(path.stem) or stems.get(closest(path.stem, stems) or "")
    if meant:
        return f"; did you mean '{folder / meant}'?"
    return "" if folder == parent else f"; no folder {parent}/ here: did you mean '{folder}/'?"


def meant_folder(folder: Path) -> Path | None:
    """The folder beside `folder` (not there) of the closest name (errors.closest): recipes for recipe;
    None where its own folder is not there either, or no folder there is close."""
    from compress.errors import closest

    where = folder.parent
    if folder.name in ("", ".", "..") or not where.is_dir():
        return None
    meant = closest(folder.name, [p.name for p in where.iterdir() if p.is_dir()])
    return where / meant if meant else None
