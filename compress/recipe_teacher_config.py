"""A recipe's `teacher_config:` (the diffusers config of a single-file teacher) against --teacher-config,
which replaces it: the one a run reads (`teacher_config_of`) and how a warning names it (`config_named`),
and a refusal that compares it with an earlier run's (`config_by`). Imports no torch."""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import UserError
from compress.recipe_where import recipe_where


def teacher_config_of(recipe, config: str | None, teacher: str | None = None) -> str | None:
    """The teacher config a run of `recipe` reads: --teacher-config (`config`) where given, else the
    recipe's `teacher_config:` (None where it has none). A relative one is taken from the current folder,
    as `teacher:` is; one that is not there is a UserError at its file:line, naming the path looked for
    (and the one beside the recipe, where that is there), before anything loads; but not for a teacher
    (`teacher`: --teacher, else the recipe's) that reads no config: io_source_config.checked warns it is not read."""
    given = getattr(recipe, "teacher_config", None)
    if config is not None or given is None:
        return config
    path = Path(given).expanduser()
    if path.exists() or reads_no_config(teacher or recipe.teacher):
        return given
    rule = ""
    if not path.is_absolute():
        beside = os.path.abspath(Path(recipe.path).parent / path)
        rule = (" (a relative teacher_config is taken from the current folder, as teacher: is"
                + (f", not the recipe's; there is {beside}: give that path)" if Path(beside).exists() else ")"))
    raise UserError(f"{recipe_where(recipe, 'teacher_config', given)}: teacher_config {given} not found: "
                    f"{os.path.abspath(path)}{rule}")


def reads_no_config(source, recorded: bool = False) -> bool:
    """Whether the teacher `source` reads no teacher config: a toy teacher, or a folder (its own
    config.json; io_source.check_source's kinds 'toy' and 'folder'). As given, a relative one is from
    the current folder; as `recorded` by a run (runner_teacher_id.named_teacher's), a folder only where
    absolute (a Hub id recorded is not read as a folder of the current one). Not a string: False."""
    if not isinstance(source, str):
        return False
    if source.startswith("toy:"):
        return True
    return (not recorded or Path(source).is_absolute()) and Path(source).expanduser().is_dir()


FLAG_NAMED = ("", "--teacher-config")  # `config_named`'s for the flag's (or none given): no place


def config_named(recipe, config: str | None) -> tuple[str, str]:
    """(where, by what) a warning or error names the teacher config `config` a run of `recipe` reads:
    FLAG_NAMED, or where the recipe's `teacher_config:` gave it, ('PATH:LINE', 'teacher_config')."""
    if config is None or config != getattr(recipe, "teacher_config", None):
        return FLAG_NAMED
    return recipe_where(recipe, "teacher_config", config), "teacher_config"


FLAG = ("--teacher-config", "")  # `config_by`'s for the flag's (or none given)


def config_by(recipe, flag: str | None) -> tuple[str, str]:
    """How a refusal comparing the teacher config with an earlier run's names the one a run of `recipe` reads
    (teacher_config_of's, with --teacher-config `flag`): ('teacher_config', ' (PATH:LINE)') where the recipe's
    key gave it, FLAG where the flag did (or neither)."""
    given = getattr(recipe, "teacher_config", None) if recipe is not None else None
    if flag is not None or given is None:
        return FLAG
    return "teacher_config", f" ({recipe_where(recipe, 'teacher_config', given)})"
