"""A run's stage checkpoints, as plain functions of its Runner: the student saved after each pass
(run folder `stages/<i>-<pass>/`, with state.json: the recipe, teacher, inputs, report and block map),
the run's record (stages/RUN_RECORD), the saved stages --resume can continue from (`resumable`), stages
dropped once checked or refused, and the student a follower reads from the stage rank 0 hands over
(runner_ranks). Restoring a run's student from its stages (--resume) is runner_restore's; what is
compared, and in which words, runner_resume's. Each stage's held-out error is runner_heldout's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from compress.errors import UserError
from compress.interrupts import interrupts_held
from compress.passes.importance import write_atomically
from compress.report import warn
from compress.runner_pending import write_record
from compress.runner_caches_keyed import keyed_under, with_this_run
from compress.runner_ranks import is_main_process
from compress.runner_read_back import say_read_back_at_end
from compress.runner_measured import CALIBRATED, KEYED_AS
from compress.runner_written import WRITTEN_BY
from compress.runner_resume import (FINISHED, RAN, RUN_RECORD, STATISTICS, not_kept_in_words, of_other_statistics,
                                    read_state, reusable_stage, stage_dirs, statistics_version)


def stage_dir(runner, i: int) -> Path:
    return runner.run_dir / "stages" / f"{i}-{runner.recipe.passes[i].name}"


def record_run(runner, before: dict | None = None) -> None:
    """The run folder's stages/RUN_RECORD: the fingerprint of the run whose passes start now, which
    keys the caches they write (calib/<fingerprint>/, the teacher samples), so a rerun refused before
    its teacher loads names what this run measured, not a cache of another teacher (runner_folders).
    Written only once restored: a --resume refused (another teacher) leaves the earlier run's. Written
    atomically (a temp file beside it renamed over it: importance.write_atomically), as the followers of a
    launch read it for the key of the caches: never half a record, which would key another. `before`: the
    runner_caches_keyed.keyed_under of the folder before this run (None: read now), to which its own is added."""
    fingerprint = getattr(getattr(runner, "ctx", None), "fingerprint", None)
    if not fingerprint or not is_main_process():
        return
    stages = runner.run_dir / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    teacher = getattr(runner, "identity", None)  # what --resume of a distill checkpoint compares (no stage)
    record = {**WRITTEN_BY, "fingerprint": fingerprint, **({"teacher": teacher} if teacher else {})}
    if getattr(runner, "out", None) is not None:  # the --out a rerun of the unfinished run names (commands)
        record["out"] = str(Path(runner.out).resolve())
    # the statistics and dit-compress versions each fingerprint's caches were measured under: a note names
    # them so (runner_caches_keyed)
    record.update(with_this_run(keyed_under(runner.run_dir) if before is None else before, fingerprint))
    if getattr(runner, "recipe", None) is not None:  # the passes it runs, which a refused rerun compares
        record[RAN] = runner.recipe.raw  # (runner_resume.unsaved_changes)
    if getattr(runner, "keyed_as", None):  # the teacher moved: the source keying its caches (runner_measured)
        record[KEYED_AS] = runner.keyed_as
    if getattr(runner, "calibration_keys", None):  # what a refusal names (runner_measured.calibration_change)
        record[CALIBRATED] = runner.calibration_keys
    text = json.dumps(record, default=str) + "\n"  # (the recipe as a stage's state.json holds it)
    write_atomically(stages / RUN_RECORD, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def resumable(runner) -> tuple[list, int | None, list]:
    """(the saved stages [(pass index, folder, state)] whose state.json reads, the index of the one
    --resume continues from or None, the later ones of another recipe it passes over:
    `reusable_stage`); a UserError when there are stages but none is of this recipe. A stage
    whose state.json cannot be read is warned about and left as it is."""
    saved = []
    for i, d in stage_dirs(runner.run_dir):
        state = read_state(d)
        if state is None:
            warn(f"{d / 'state.json'} cannot be read: --resume does not continue from that pass")
        else:
            saved.append((i, d, state))
    k, skipped = reusable_stage([(i, state) for i, _, state in saved], runner.recipe.raw, runner.passes)
    if k is None and skipped:
        changed = skipped[-1][1]  # the earliest stage's: the first pass that changed
        if of_other_statistics(changed):  # as a stage of another calibration, with no change to undo
            raise UserError(f"--resume: {runner.run_dir} holds passes measured with other statistics ({changed[0]}), "
                            "which this run does not read back: rerun with --restart to discard them, or choose "
                            "another --run-dir")
        earliest = min(i for i, _, state in saved if isinstance(state.get("recipe"), dict))
        streamed = next(state["recipe"].get("stream") for i, _, state in saved if i == earliest)
        raise UserError(f"--resume: the recipe changed since {runner.run_dir} was written "
                        f"({', '.join(changed[:3])}){not_kept_in_words(earliest, changed, streamed)}; "
                        "undo the change to resume, or rerun with --restart to start over")
    return saved, k, skipped


def save_stage(runner, i: int, student, record: bool = True, older: bool = True):
    """Pass i's stage folder and its state.json; streamed, first the record that lets --resume
    finish writing it after an interrupt (runner_pending; `record` False: it is there already), and
    (`older`, else `drop_checked` once its held-out error is) the earlier stages deleted."""
    if not is_main_process():
        runner.finished_stages = False  # (rank 0 discards them below: RunContext.finished_note agrees)
        return
    say_read_back_at_end(runner, i)  # Runner._stage saves pass i's stage once it ran: what it read back
    discard_finished(runner)
    d = stage_dir(runner, i)
    if record and runner.recipe.stream and runner.models.blocks is not None:
        write_record(runner.run_dir, i, _state(runner), student, runner.models.blocks)
    runner.models.save(student, d, overwrite=True)
    save_state(runner, i)
    # streamed: later reads come from this stage, and the spill and older stages go (only once
    # this stage is complete, so an interruption always leaves one to resume from)
    runner.models.adopt(student, d, older=older)


def drop_checked(runner, stage: Path | None) -> None:
    """Once the student of `stage` is checked (runner_heldout: its held-out error finite), a streamed
    run's earlier stages are deleted (StreamedModels.drop_older; they were kept in case it was refused)."""
    if stage is not None and is_main_process():
        runner.models.drop_older(stage)


def drop_refused(runner, i: int) -> None:
    """Pass i's stage, whose student's held-out prediction holds NaN/Inf (runner_heldout.check_stage),
    deleted (its state.json first: never listed half deleted), so that --resume runs the pass again from
    the stage before it (kept until this check: `drop_checked`) rather than measure the same NaN again."""
    from compress.runner_stream import delete_stage

    if is_main_process():
        delete_stage(stage_dir(runner, i))


def discard_finished(runner) -> None:
    """The finished run's stages that a rerun without --resume started over (runner_restore._restored left them):
    deleted as its first stage of its own is saved, or a distill first pass's first checkpoint (RunContext.
    before_saving: --resume would take the old stages over it), FINISHED first (a Ctrl-C amid them leaves
    no finished run of missing stages), this run's RUN_RECORD kept."""
    if not getattr(runner, "finished_stages", False):
        return
    stages = runner.run_dir / "stages"
    with interrupts_held():  # (moments)
        (stages / FINISHED).unlink(missing_ok=True)
        for entry in stages.iterdir() if stages.is_dir() else ():
            if entry.name != RUN_RECORD:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
    runner.finished_stages = False


def _state(runner) -> dict:
    return {**WRITTEN_BY, "recipe": runner.recipe.raw, "teacher": runner.identity, "inputs": runner.inputs_id,
            STATISTICS: statistics_version(), "report": runner.ctx.report, "block_map": runner.ctx.block_map}


def save_state(runner, i: int) -> None:
    """Pass i's stage's state.json, as the run's report and block map are now (rank 0 alone)."""
    if not is_main_process():
        return
    d = stage_dir(runner, i)
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(_state(runner), default=str), encoding="utf-8")
    tmp.replace(d / "state.json")


def handed_over(runner, stage: str | None):
    """The student rank 0 hands over: its saved stage (with the report and block map the pass
    reads), or a fresh copy of the teacher (None)."""
    if stage is None:
        return runner.models.fresh_student(runner.teacher)
    state = read_state(Path(stage))
    if state is None:
        raise UserError(f"{Path(stage) / 'state.json'}, the student rank 0 handed over, cannot be read")
    runner.ctx.report, runner.ctx.block_map = state["report"], state["block_map"]
    return runner.models.restore(Path(stage))
