"""What a run says when an error stops it, as plain functions of what it knows: what was running
(`doing_words`: the recipe line and pass, or the phase), what the run folder keeps for --resume
(`kept_note`), and the one line of each stop the runner names itself: out of memory, a full disk,
another process of the launch lost. runner_failures tells those errors apart and holds their words
shared with the other commands."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from compress.errors import UserError
from compress.runner_failures import DiskFull, OutOfMemory, disk_full_line, memory_hints, memory_in_words

EXPORT = "the export"  # `Runner.doing` while rank 0 writes the output (a full disk there names --out)
LOADING = "loading the teacher"  # `Runner.doing` while the teacher loads
AGAIN = "; start the launch again with --resume"  # a lost peer's stop where the run folder keeps nothing
RUN_AGAIN = "; run again"  # a run folder's file removed meanwhile (calib_store.Vanished), where nothing is kept


def doing_words(recipe, doing) -> str:
    """The recipe line and pass running now ('r.yaml:12: pass 2/3 (svd)') for a pass index `doing`,
    else the phase (its words; None: 'the run')."""
    if isinstance(doing, int):
        return f"{recipe.path}:{recipe.passes[doing].line}: pass {doing + 1}/{len(recipe.passes)} " \
               f"({recipe.passes[doing].name})"
    return f"{recipe.path}: {doing or 'the run'}"


def kept_note(run_dir: Path, recipe, passes, doing, resume: bool, main: bool, fingerprint: str | None = None,
              calls: Callable[[], list[Path]] | None = None) -> str:
    """'; RUN_DIR keeps its work (...): rerun with --resume' where this run's work is there; '' for
    a process other than rank 0 (`main` False), and before the student is made (`doing` None or
    LOADING) unless the run resumes: what the run folder holds then is not this run's.
    `fingerprint`, `calls()`: what a rerun reads back (runner_resume.resume_note's `fingerprint`, `inputs`)."""
    from compress.runner_resume import resume_note

    fresh = doing in (None, LOADING) and not resume
    if fresh or not main:
        return ""
    return resume_note(run_dir, recipe, passes, fingerprint, calls() if calls else None)


def out_of_memory(e: BaseException, recipe, passes, doing, kept: str, spill_short: str = "") -> OutOfMemory:
    """One line: what ran out of which memory, what to change in the recipe, and what the run
    folder keeps for --resume (`kept`: a `kept_note`). `spill_short`: why calibration's activations
    would not fit the run folder's disk spilled (runner_memory.spill_short), or ''."""
    hints = memory_hints(recipe, passes, doing, spill_short)
    return OutOfMemory(f"{doing_words(recipe, doing)} ran out of {memory_in_words(e)}; try {hints}{kept}")


def disk_full(e: BaseException, recipe, doing, out: Path, run_dir: Path, kept: str) -> DiskFull:
    """One line: where a write failed (the file, else the output folder during the export or the
    run folder) and why, during what, and what the run folder keeps for --resume (`kept`)."""
    folder, flag = (Path(out).absolute(), "--out") if doing == EXPORT else (run_dir, "--run-dir")
    return DiskFull(disk_full_line(e, doing_words(recipe, doing), folder, flag) + kept)


def peer_lost(lost: UserError, recipe, doing, follower: bool, kept: str) -> UserError:
    """One line where a collective failed because another process of the launch ended: who (`lost`:
    runner_answers.ended, a follower that said why, was interrupted or killed, or a follower's
    rank 0) and what the run folder keeps for --resume (`kept`; none kept: start again with
    --resume); `lost` itself where rank 0 stopped (MainStopped: it says why)."""
    from compress.runner_ranks import MainStopped, PeerLost

    if isinstance(lost, MainStopped):  # this rank says nothing (cli)
        return lost
    # a follower's words say what to do; rank 0's run folder says what it keeps
    again = "" if follower else kept or AGAIN
    return PeerLost(f"{doing_words(recipe, doing)}: {lost}{again}")
