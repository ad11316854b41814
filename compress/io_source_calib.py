"""A recipe's calibration keys against its teacher source, before anything loads: the prompt file a
pipeline calibration names is there; a warning per key the source does not read (io_source_recipe.checked_sources)."""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import UserError
from compress.recipe_folder import special_kind
from compress.recipe_where import recipe_where

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


def warn_unused_calibration(recipe, kind: str) -> None:
    """A warning per calibration key that does nothing for a source of `kind` (inputs.source_kind's of
    the recipe's calibration and teacher: unused_calibration), at its line."""
    from compress.report import warn

    calib = recipe.calibration
    for key, why in unused_calibration(calib, kind):
        where = recipe_where(recipe, f"calibration.{key}", getattr(calib, key))
        warn(f"{where}: calibration.{key}: {why}")


def check_prompt_file(recipe, kind: str) -> None:
    """A pipeline calibration's `prompt_file` is a file (taken from the recipe's folder, `~` expanded);
    the message names its line, the path looked for and that rule, and where a file of that name is
    that a user may have meant (`elsewhere`). kind: inputs.source_kind's of the recipe's calibration
    and teacher."""
    name = recipe.calibration.prompt_file
    if not name or kind != "pipeline":
        return
    path = Path(name).expanduser()
    looked = Path(os.path.abspath(Path(recipe.path).parent / path))
    if looked.is_file():
        return
    rule = "" if path.is_absolute() else \
        f" (a relative prompt_file is taken from the recipe's folder{elsewhere(recipe, path, looked)})"
    what = "is a folder, not a file of prompts" if looked.is_dir() else \
        f"is {kind}, not a file of prompts" if (kind := special_kind(looked)) else "not found"  # /dev/zero
    raise UserError(f"{recipe_where(recipe, 'calibration.prompt_file', name)}: calibration.prompt_file {name} "
                    f"{what}: {looked}{rule}")


def elsewhere(recipe, path: Path, looked: Path) -> str:
    """": the link L's, not its target's, where T is: give that path instead' where the recipe was named
    through a link L and its target's folder holds the relative prompt_file `path`; ', not the current
    folder, where C is: ...' where the current folder does (as io_source.not_found's teacher); else ''."""
    target = Path(os.path.realpath(recipe.path)).parent / path
    if target != looked and target.is_file():
        return f": the link {recipe.path}'s, not its target's, where {target} is: give that path instead"
    here = Path(os.path.abspath(path))
    if here != looked and here.is_file():
        return f", not the current folder, where {here} is: give that path instead"
    return ""
