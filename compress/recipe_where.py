"""Where the user gave a value, for an error about it: a recipe key's file:line, or its `--set`
(as the recipe recorded them while it loaded: Recipe.keys), and the teacher's `--teacher`."""

from __future__ import annotations


def recipe_where(recipe, dotted: str, value=None) -> str:
    """'PATH:LINE' of the recipe key `dotted` (`calibration.prompt_file`), for an error about its
    value; 'PATH (--set KEY)' where the command line set it (Recipe.keys, recorded as it loaded).
    `value`, where given, is the one the error is about: one the recipe does not hold there was
    not given on that line. Just PATH for a key neither gave (a default)."""
    loc = getattr(recipe, "keys", {}).get(dotted)
    if loc is None:
        return recipe.path
    if loc.override or (value is not None and value != _held(recipe, dotted, value)):
        return f"{recipe.path} (--set {dotted})"
    return loc.where()


def _held(recipe, dotted: str, default):
    """The recipe's value at `dotted` (calibration.guidance_scale), or `default` where that is no
    attribute path (a list item)."""
    value = recipe
    for key in dotted.split("."):
        if not hasattr(value, key):
            return default
        value = getattr(value, key)
    return value


def teacher_where(recipe, teacher_arg: str | None) -> str:
    """The prefix of an error about the teacher: 'PATH:LINE: ' of the recipe's `teacher:`, or '--teacher: '
    when --teacher gave it (the place, as a recipe's line is: its errors name the teacher)."""
    return option_where(teacher_arg) or recipe_where(recipe, "teacher", recipe.teacher) + ": "


def option_where(teacher_arg) -> str:
    """'--teacher: ', the prefix of an error about a teacher the command line gave (`teacher_arg`: --teacher,
    or whether it gave it); '' where it gave none (a teacher an output recorded: its errors name it)."""
    return "--teacher: " if teacher_arg else ""


def teacher_given(recipe, teacher_arg) -> str:
    """' (--teacher)' or ' (--set teacher)' after the teacher an error about another key names,
    where the command line gave it (`teacher_arg`: --teacher, or whether it gave it); '' for the
    recipe file's `teacher:`."""
    if teacher_arg:
        return " (--teacher)"
    loc = getattr(recipe, "keys", {}).get("teacher")
    return " (--set teacher)" if loc is not None and loc.override else ""
