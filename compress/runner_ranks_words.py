"""What differs, in words, between what rank 0 of a launch runs and what a follower would run
(`runner_answers.check_same_run` refuses in one line naming it). Imports no torch."""

from __future__ import annotations


def _recipe_words(theirs: dict, mine: dict) -> str:
    """The first recipe key (dotted, as --set names it) where two resolved recipes differ."""
    from compress.runner_resume import _flat

    a, b = _flat(theirs), _flat(mine)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<none>") != b.get(k, "<none>"))
    if not keys:  # an empty mapping or list on one side only
        return "the recipe differs"
    more = f", and {len(keys) - 1} more key{'s' if len(keys) > 2 else ''}" if len(keys) > 1 else ""
    return f"{keys[0]} is {short(a.get(keys[0], '<none>'))} on rank 0, {short(b.get(keys[0], '<none>'))} here{more}"


def _teacher_words(theirs: dict, mine: dict) -> str:
    """What differs between two `runner_resume.teacher_identity`s."""
    for k, what in (("source", "the teacher"), ("config", "--teacher-config")):
        if theirs.get(k) != mine.get(k):
            return f"{what} is {theirs.get(k)} on rank 0, {mine.get(k)} here"
    return f"the teacher {mine.get('source')} holds other weights or config here than on rank 0"


def _inputs_words(theirs: dict, mine: dict) -> str:
    """What differs between two pipeline sources' `inputs_identity`s (None: a source that samples
    no pipeline)."""
    if (theirs is None) != (mine is None):
        where = "here, not on rank 0" if theirs is None else "on rank 0, not here"
        return f"the calibration samples a pipeline {where} (the teacher folder holds other files)"
    if theirs.get("prompts") != mine.get("prompts"):  # a digest: which of the keys gave them is not said
        return ("the calibration prompts read here differ from rank 0's (calibration.prompts, or the lines "
                "calibration.prompt_file holds here)")
    a, b = theirs.get("pipeline") or {}, mine.get("pipeline") or {}
    differ = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    return (f"the calibration pipeline's {', '.join(differ[:3]) or 'files'} "
            f"{'differs' if len(differ) == 1 else 'differ'} here from rank 0's")


def short(value) -> str:
    said = repr(value)
    return said if len(said) <= 40 else said[:37] + "..."


WORDS = {"recipe": _recipe_words, "teacher": _teacher_words, "inputs": _inputs_words,
         "fingerprint": lambda theirs, mine: "the calibration inputs' fingerprint differs"}
