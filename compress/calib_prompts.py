"""Calibration prompts: calibration.prompts and prompt_file read (a prompt file's lines, one prompt
each), and how many of them calibrate and how many are held out (the inputs one prompt gives)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from compress.errors import UserError, read_utf8
from compress.words import counted


def read_prompts(calib, recipe_dir: Path | None = None) -> list[str]:
    """calibration.prompts, then prompt_file's lines, cut to num_prompts where the recipe sets it
    (`chosen_prompts`, with a note when that cuts the list or asks for more than there are; its default,
    10, is the toy source's digit classes, not a cut of the user's prompts), and a note when one prompt
    is left: it is held out too (calib_pipeline's split)."""
    lines = []
    if calib.prompt_file:
        lines = _prompt_lines(prompt_path(calib, recipe_dir), calib.prompt_file,
                              _where(calib, "prompt_file", calib.prompt_file))
    listed = len(calib.prompts) + len(lines)
    if not listed:
        auto = " (source auto is pipeline for a teacher that is not toy:)" if calib.source == "auto" else ""
        raise UserError(f"{_where(calib, 'source', calib.source)}calibration.source 'pipeline'{auto} needs "
                        "calibration.prompts or prompt_file")
    n = num_prompts_cut(calib)
    if n and n != listed:
        from compress.report import console

        at = _where(calib, "num_prompts", n, ("prompts", "prompt_file"))  # 'r.yaml:7: ', with their --sets
        console.print(f"note: {at}calibration.num_prompts is {n}: the first {n} of the {listed} prompts are "
                      "used" if n < listed else
                      f"note: {at}calibration.num_prompts is {n} but there {'is' if listed == 1 else 'are'} only "
                      f"{counted(listed, 'prompt')}", markup=False, highlight=False)
    prompts = chosen_prompts(calib, lines)
    if len(prompts) == 1:
        from compress.report import note

        note(f"{_one_prompt_where(calib, n, listed)}calibration has one prompt: it also gives the held-out inputs "
             "(with other noise), so the held-out error is not measured on an unseen prompt; give two or more "
             "prompts to hold some out")
    return prompts


def _one_prompt_where(calib, n: int | None, listed: int) -> str:
    """'PATH:LINE: ' of the key that left one prompt, as the num_prompts notes name theirs: num_prompts
    where it cut the list to one, else prompts (or prompt_file, where prompts is empty), with the
    --sets of the other prompt keys."""
    keys = ("num_prompts", "prompts", "prompt_file")
    key = "num_prompts" if n and n < listed else "prompts" if calib.prompts else "prompt_file"
    return _where(calib, key, getattr(calib, key), tuple(k for k in keys if k != key))


def chosen_prompts(calib, file_lines: list[str]) -> list[str]:
    """The prompts a pipeline source calibrates on, given `file_lines`, the prompts of its prompt file
    (`lines_of`; none: []): calibration.prompts, then those, the first `num_prompts_cut` where the recipe
    sets it. The one rule `read_prompts` (which reads the file, checked, with its notes) and
    runner_prompts.prompts_digest (quietly, before the teacher loads) share."""
    prompts = [*calib.prompts, *file_lines]
    n = num_prompts_cut(calib)
    return prompts[:n] if n else prompts


def num_prompts_cut(calib) -> int | None:
    """How many of a pipeline source's prompts are used: calibration.num_prompts where the recipe sets
    it; None (all of them) where it is the default, the toy source's count, not a cut."""
    return calib.num_prompts if calib.given("num_prompts") else None


def prompt_path(calib, recipe_dir: Path | None) -> Path:
    """The file calibration.prompt_file names (`~` expanded): relative to the recipe's folder
    `recipe_dir` (None: as given)."""
    path = Path(calib.prompt_file).expanduser()
    return recipe_dir / path if not path.is_absolute() and recipe_dir is not None else path


def prompts_digest(prompts: list[str]) -> str:
    """The digest of the prompts a pipeline source reads, as its inputs_identity records them and
    --resume and a rerun's refusal compare them (runner_prompts)."""
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def prompts_in_words(calib) -> str:
    """The recipe keys a pipeline source's prompts come from, as `read_prompts` reads them: its
    calibration.prompts and / or the lines its calibration.prompt_file holds, the first num_prompts of
    them where the recipe sets it (for an error saying they changed)."""
    keys = (["calibration.prompts"] if calib.prompts else []) + \
        ([f"the lines calibration.prompt_file {calib.prompt_file} holds"] if calib.prompt_file else [])
    said = " and ".join(keys) or "calibration.prompts"
    if calib.given("num_prompts"):
        said += f", the first {calib.num_prompts} (calibration.num_prompts)"
    return said


def lines_of(text: str) -> list[str]:
    """A prompt file's prompts: its non-blank lines, stripped (`_lines`), without a word said."""
    return [ln.strip() for ln in _lines(text) if ln.strip()]


def _where(calib, key: str, value, because: tuple = ()) -> str:
    """'PATH:LINE: ' of the recipe key calibration.`key` (CalibrationConfig.where; `because`: the
    other keys the error is about), or ''."""
    where = getattr(calib, "where", None)
    return where(key, value, because) if callable(where) else ""


def _prompt_lines(path: Path, name: str, where: str = "") -> list[str]:
    """The non-blank lines of a UTF-8 prompt file, stripped; UserError if unreadable, not text or empty
    (`where`: 'PATH:LINE: ' of the recipe's prompt_file), split by `_lines`."""
    label = f"{where}calibration.prompt_file {name}"
    try:
        text = read_utf8(path, label, "give one prompt per line, saved as UTF-8")
    except UserError as e:
        if str(path) != name and str(e).startswith(f"{label}: "):  # not read: the path it looked in
            raise UserError(f"{e} ({path})") from None
        raise
    if "\x00" in text:
        raise UserError(f"{where}calibration.prompt_file {name}: a binary file (NUL bytes), not one prompt "
                        "per line")
    lines = lines_of(text)
    if not lines:
        raise UserError(f"{where}calibration.prompt_file {name} is empty: give one prompt per line")
    _warn_if_hash_line(text, path)
    return lines


def _lines(text: str) -> list[str]:
    """A text file's lines: ended by \n, \r\n or \r (Python's universal newlines), not by the other
    line separators str.splitlines also breaks at (U+2028, U+0085, \x0c ...), which a caption may hold:
    they made one line of a prompt file two prompts."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _warn_if_hash_line(text: str, path: Path) -> None:
    """A warning at the first line starting with '#': it is a prompt (a prompt may start with '#'),
    which a user who meant it as a comment would otherwise never learn. Once per file, not per line.
    The file is named as read (`path`: relative to the recipe's folder, not as the recipe wrote it),
    relative to the working folder where it is below it (output_names.as_typed)."""
    from compress.output_names import as_typed
    from compress.report import warn

    line = next((i for i, ln in enumerate(_lines(text), 1) if ln.strip().startswith("#")), None)
    if line is not None:
        warn(f"{as_typed(Path(path))}:{line} starts with '#': every non-empty line is a prompt (this file format "
             "has no comments)")


def one_branch(family: str, toy: bool) -> bool:
    """Whether the teacher's pipeline runs one transformer branch per step whatever guidance_scale
    says: FluxPipeline does (FLUX.1-dev takes guidance as an input, FLUX.1-schnell none; its true
    CFG needs a negative prompt, which calibration never passes). PixArt-Σ's and the toys' pipelines
    run classifier-free guidance as a doubled batch. `toy`: whether the pipeline is a toy's (toy:NAME,
    or a folder a toy pipeline was saved into: pipeline_folder.toy_pipeline, as the caller found it)."""
    return family == "flux" and not toy


def rows_per_prompt(calib, single: bool) -> int:
    """Calibration inputs one prompt gives: one per kept step and CFG branch (a pipeline that runs
    one branch, `one_branch`, gives one, and so does any pipeline at guidance_scale 1 or less: CFG off)."""
    both = calib.cfg_branches and calib.guidance_scale > 1 and not single
    return min(calib.timesteps, calib.sample_steps) * (2 if both else 1)


# the calibration keys the held-out split reads besides heldout (rows_per_prompt, the prompts)
SPLIT_KEYS = ("timesteps", "sample_steps", "cfg_branches", "guidance_scale", "num_prompts", "prompts",
              "prompt_file")


def calibration_prompts(n: int, calib, single: bool) -> int:
    """How many of the n prompts calibrate; the last ones are held out. calibration.heldout null:
    20% of them; a number: enough to give that many held-out inputs (a prompt gives one per kept
    step and CFG branch; `single`: the pipeline runs one branch). At least one calibrates."""
    if n <= 1:
        return 1
    if calib.heldout is None:
        return max(1, int(n * 0.8))
    rows = rows_per_prompt(calib, single)
    held = math.ceil(calib.heldout / rows)
    if held >= n:  # it would leave one prompt, of n, to calibrate: not what any number asked
        raise UserError(f"{_where(calib, 'heldout', calib.heldout, SPLIT_KEYS)}calibration.heldout {calib.heldout} "
                        f"asks for {held} of the {n} prompts ({rows} inputs each), and at least one must "
                        f"calibrate: hold out at most {(n - 1) * rows} inputs, or give more prompts")
    return n - held
