"""What an output folder is, read without torch (the CLI names a run's folders before torch loads): whether
a folder is an output (`is_output`; a teacher as given, its pipeline's transformer/ too:
`is_output_teacher`), the name a recipe gives its default output and run folders (an
output's own recipe.yaml takes that output's name: `default_name`), what an output that --overwrite is
about to replace was made of (`replaced_note`) and what a rerun after a stop needs where the output is
there (`rerun_needs_overwrite`)."""

from __future__ import annotations

import json
from pathlib import Path

SAVED_RECIPE = "recipe.yaml"  # the recipe an output holds (runner_export.output_files), and its report
REPORT = "report.json"


def output_config(folder: Path) -> dict | None:
    """The config.json of the output `folder` (its `compression` section says dit-compress wrote it);
    None where `folder` is not an output."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "compression" in config else None


def is_output(folder: Path) -> bool:
    """Whether `folder` is an output of dit-compress: its config.json has a compression section."""
    return output_config(folder) is not None


def is_output_teacher(source) -> bool:
    """Whether a teacher as given (`source`: a path, a Hub id, toy:NAME) is a local dit-compress output:
    the folder load_teacher reads in it (io.transformer_folder: the folder, or a pipeline's transformer/)
    `is_output`; a folder it refuses is none. Imports torch (compress.io): for the run's and merge's
    checks, not the CLI's folders."""
    path = Path(str(source)).expanduser()
    if str(source).startswith("toy:") or not path.is_dir():
        return False
    from compress.errors import UserError
    from compress.io import transformer_folder

    try:
        return is_output(transformer_folder(path))
    except UserError:
        return False


def saved_in_output(recipe: str | Path) -> Path | None:
    """The output folder whose own recipe.yaml `recipe` is (beside its report.json, in an output), else None."""
    path = Path(recipe).expanduser()
    folder = path.parent.resolve()
    if path.name != SAVED_RECIPE or not (folder / REPORT).is_file() or not is_output(folder) or not folder.name:
        return None
    return folder


def default_name(recipe: str | Path) -> str:
    """The name of a recipe's default output and run folders (out/NAME, runs/NAME): its file's stem, or
    for an output's own recipe.yaml, that output's folder name (`saved_in_output`): every output's
    recipe.yaml would otherwise run into out/recipe and runs/recipe, replacing one another there."""
    folder = saved_in_output(recipe)
    return folder.name if folder is not None else Path(recipe).stem


def replaced_note(out: Path, teacher: str, family: str) -> str | None:
    """'--overwrite replaces OUT, an output of another teacher and model family (toy:flux, flux; this
    run: toy:pixart, pixart)' where the output folder `out` is an output whose recorded teacher (its
    config's compression section, local paths absolute) or model family differs from this run's
    `teacher` (as given) and `family` (the recipe's model); None otherwise."""
    config = output_config(out)
    if config is None:
        return None
    from compress.arch import family_of_class
    from compress.errors import UserError

    was_teacher, was_family = (config.get("compression") or {}).get("teacher"), config.get("_class_name")
    try:
        was_family = family_of_class(was_family)
    except UserError:  # a class no adapter has: named as it is
        pass
    local = Path(teacher).expanduser()
    now_teacher = str(local.resolve()) if local.exists() else teacher  # as a run records it
    differ = [what for what, was, now in (("teacher", was_teacher, now_teacher), ("model family", was_family, family))
              if was is not None and was != now]
    if not differ:
        return None
    return (f"--overwrite replaces {out}, an output of another {' and '.join(differ)} ({was_teacher}, {was_family}; "
            f"this run: {now_teacher}, {family})")


def rerun_needs_overwrite(out: Path, note: str) -> str:
    """`note` (what a stopped run's folder offers a rerun: Ctrl-C's, or a stop's kept work) followed by
    '; OUT exists: the rerun needs --overwrite too' where the output folder `out` is there (the run's
    --overwrite had not replaced it yet, or it was written since): a rerun with only the --resume the note
    names is refused ('output folder OUT exists; pass --overwrite to replace it'). `note` as it is otherwise."""
    out = Path(out)
    if not note or not (out.is_dir() and not out.is_symlink() and (is_output(out) or not any(out.iterdir()))):
        return note
    return f"{note}; {out} exists: the rerun needs --overwrite too"
