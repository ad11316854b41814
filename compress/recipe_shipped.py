"""The shipped recipes by name: `dit-compress run toy-pixart` runs the recipes/toy-pixart.yaml that came
with the package, for an install from a wheel, which has no checkout's recipes/ (pyproject installs that
folder as compress/recipes/, its prompts/ too), and in a checkout alike. A RECIPE that is a bare name (no
folder, no .yaml / .yml, no `toy:`) and no file or folder here is looked up there; a path is read as it
is. A recipe that is not there is told the shipped one of its name (`recipes/toy-pixart.yaml` typed
where no recipes/ is: `dit-compress run toy-pixart`), or the shipped names. No torch is imported."""

from __future__ import annotations

import os
from pathlib import Path

import compress
from compress.errors import closest

SUFFIXES = (".yaml", ".yml")


def shipped_folder() -> Path | None:
    """Where the shipped recipes are: compress/recipes/ of an installed wheel, else recipes/ of the
    checkout this compress is imported from (an editable install, PYTHONPATH); None where neither is."""
    package = Path(compress.__file__).resolve().parent
    checkout = package.parent
    if (package / "recipes").is_dir():
        return package / "recipes"
    if (checkout / "pyproject.toml").is_file() and (checkout / "recipes").is_dir():
        return checkout / "recipes"
    return None


def shipped_names() -> list[str]:
    """The shipped recipes' names (their files' stems), sorted: ['flux-dev-deep', ..., 'toy-pixart']."""
    folder = shipped_folder()
    return sorted(p.stem for p in folder.iterdir() if p.suffix == ".yaml" and p.is_file()) if folder else []


def bare_name(given: str) -> bool:
    """Whether `given` could name a shipped recipe: no folder in it, no recipe suffix, no `toy:` source."""
    return bool(given.strip()) and not any(c in given for c in ("/", os.sep, ":")) and not given.endswith(SUFFIXES)


def resolve_recipe(given: str) -> str:
    """The path a command reads for its RECIPE `given`: the shipped recipe where `given` is its bare
    name and no file or folder here is called so; `given` as it is otherwise."""
    if not bare_name(given) or Path(given).expanduser().exists():
        return given
    folder = shipped_folder()
    shipped = folder / f"{given}.yaml" if folder else None
    return str(shipped) if shipped is not None and shipped.is_file() else given


def shipped_note(given: str, resolved: str) -> str | None:
    """"toy-pixart: the shipped recipe /.../recipes/toy-pixart.yaml ..." where `resolve_recipe` took
    `given` for a shipped recipe; None where it read `given` as it is."""
    if resolved == given:
        return None
    return f"{given}: the shipped recipe {resolved} (copy it to change it)"


def shipped_hint(given, command: str) -> str:
    """What a recipe `given` that is not there is told of the shipped ones: for a bare name, the shipped
    name close to it, else the shipped names; for a path whose file name is a shipped recipe's (the
    README's `recipes/toy-pixart.yaml` where no recipes/ is), that recipe by name. '' where none fits."""
    names = shipped_names()
    given = str(given)
    if not names:
        return ""
    if bare_name(given):
        meant = closest(given, names)
        if meant is not None:
            return f"; did you mean the shipped recipe '{meant}'? (dit-compress {command} {meant})"
        return f"; the shipped recipes: {', '.join(names)}"
    path = Path(given)
    if path.suffix in SUFFIXES and path.stem in names:
        return f"; the shipped recipe of that name: dit-compress {command} {path.stem}"
    return ""


RECIPE_ARGS = {"run": "recipe", "plan": "recipe", "importance": "source"}  # each command's RECIPE, by dest


def take_shipped(args) -> None:
    """The command's RECIPE (importance's SOURCE) given as a shipped recipe's bare name: that recipe's
    path from here on (its default out/NAME and runs/NAME are the name's), said in a note by rank 0."""
    dest = RECIPE_ARGS.get(args.command)
    if dest is None:
        return
    given = getattr(args, dest)
    setattr(args, dest, resolve_recipe(given))
    said = shipped_note(given, getattr(args, dest))
    from compress.runner_ranks import is_follower

    if said is not None and not is_follower():
        from compress.report import note

        note(said)
