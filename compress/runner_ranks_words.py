"""What differs, in words, between what rank 0 of a launch runs and what a follower would run
(`runner_answers.check_same_run` refuses in one line naming it). Imports no torch."""

from __future__ import annotations


def _recipe_words(theirs: dict, mine: dict) -> str:
    """The first recipe key (dotted, as --set names it) where two resolved recipes differ."""
    from compress.runner_resume_moves import differing, flat

    a, b, keys = flat(theirs), flat(mine), differing(theirs, mine)
    if not keys:  # an empty mapping or list on one side only
        return "the recipe differs"
    more = f", and {len(keys) - 1} more key{'s' if len(keys) > 2 else ''}" if len(keys) > 1 else ""
    return f"{keys[0]} is {short(a.get(keys[0], '<none>'))} on rank 0, {short(b.get(keys[0], '<none>'))} here{more}"


def _teacher_words(theirs: dict, mine: dict) -> str:
    """What differs between two `runner_teacher_id.teacher_identity`s (their configs compared as --resume
    compares them, `same_as_rank_0`)."""
    from compress.runner_teacher_id import same_config, same_config_of

    if theirs.get("source") != mine.get("source"):
        return f"the teacher is {theirs.get('source')} on rank 0, {mine.get('source')} here"
    if not same_config_of(theirs, mine):
        if same_config(theirs.get("config"), mine.get("config")):  # the same file, holding other values
            return f"the teacher's config {mine.get('config') or 'file'} holds other values here than on rank 0"
        return f"--teacher-config is {theirs.get('config')} on rank 0, {mine.get('config')} here"
    return f"the teacher {mine.get('source')} holds other weights or config here than on rank 0"


def same_as_rank_0(key: str, theirs, mine) -> bool:
    """Whether rank 0's value of `key` in what the processes of a launch must share (Runner.about,
    `runner_answers.check_same_run`) is a follower's: --teacher-config, and the teacher identity that
    holds it, as --resume compares them (runner_teacher_id.same_config / same_teacher: by what the config
    holds where both are read (here: rank 0's file where this host has it), so that a copy elsewhere is
    one config; else a folder and the config.json it holds, a link and its target, name one config);
    any other key as written."""
    from compress.runner_config_sum import config_checksum, config_target
    from compress.runner_teacher_id import same_config, same_teacher

    if key == "--teacher-config":
        files = [config_target(c) if isinstance(c, str) and c else None for c in (theirs, mine)]
        return same_config(theirs, mine, tuple(config_checksum(f) if f else None for f in files))
    if key == "teacher" and isinstance(theirs, dict) and isinstance(mine, dict):
        return same_teacher(theirs, mine)
    return theirs == mine


def _inputs_words(theirs: dict, mine: dict) -> str:
    """What differs between two pipeline sources' `inputs_identity`s (None: a source that samples
    no pipeline). A follower compares them once prepared, after the recipe (Runner._follow): prompts
    read otherwise, of one recipe, are its prompt file's lines (calib_prompts.prompts_in_words' keys,
    but for calibration.prompts and num_prompts, which the recipe compared holds)."""
    if (theirs is None) != (mine is None):
        where = "here, not on rank 0" if theirs is None else "on rank 0, not here"
        return f"the calibration samples a pipeline {where} (the teacher folder holds other files)"
    if theirs.get("prompts") != mine.get("prompts"):  # a digest, of calib_prompts.chosen_prompts
        # the recipe (calibration.prompts, prompt_file, num_prompts) was found the same before (the step
        # "recipe"): what differs is what its prompt file holds here
        return ("the calibration prompts read here differ from rank 0's: the recipe is the same, so the lines "
                "its calibration.prompt_file holds here differ (a relative prompt_file is read beside each "
                "process's recipe)")
    a, b = theirs.get("pipeline") or {}, mine.get("pipeline") or {}
    differ = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    return (f"the calibration pipeline's {', '.join(differ[:3]) or 'files'} "
            f"{'differs' if len(differ) == 1 else 'differ'} here from rank 0's")


def short(value) -> str:
    said = repr(value)
    return said if len(said) <= 40 else said[:37] + "..."


WORDS = {"recipe": _recipe_words, "teacher": _teacher_words, "inputs": _inputs_words,
         "fingerprint": lambda theirs, mine: "the calibration inputs' fingerprint differs"}
