"""A run's stage checkpoints, as plain functions of its Runner: the student saved after each pass
(run folder `stages/<i>-<pass>/`, with state.json: the recipe, teacher, inputs, report and block map)
and read back: with --resume from the latest stage of this recipe, once the teacher and inputs it was
written for are checked against this run's (stages of another recipe it passes over are discarded),
and by a follower from the stage rank 0 hands over (runner_ranks). What is compared, and in which
words, is runner_resume's. Each stage's held-out error is runner_heldout's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.markup import escape

from compress.calib_prompts import prompts_in_words
from compress.errors import UserError
from compress.interrupts import interrupts_held
from compress.passes.distill_checkpoints import (aside_as, distill_folders, finish_swap, keep_past, remove_checkpoints,
                                                remove_whole, set_aside, whole_checkpoints)
from compress.passes.distill_resume import DISCARDED, newest_meta
from compress.passes.importance import write_atomically
from compress.recipe_teacher_config import FLAG
from compress.report import console, warn
from compress.runner_pending import discard, read_record, restore_student, write_record
from compress.runner_caches import note_stranded_checkpoints
from compress.runner_caches_keyed import keyed_under, with_this_run
from compress.runner_ranks import is_main_process
from compress.runner_read_back import say_read_back_at_end
from compress.runner_measured import CALIBRATED, KEYED_AS
from compress.runner_written import WRITTEN_BY
from compress.runner_resume import (FINISHED, RAN, RUN_RECORD, STATISTICS, distill_checkpoints, inputs_change,
                                    not_kept_in_words, of_other_statistics, passed_over_in_words, read_state,
                                    recipe_changes, recorded_teacher, resumed_in_words, reusable_stage, stage_dirs,
                                    statistics_change, statistics_version)
from compress.runner_teacher_id import older_checksum, resume_advice, same_teacher, teacher_change


def stage_dir(runner, i: int) -> Path:
    return runner.run_dir / "stages" / f"{i}-{runner.recipe.passes[i].name}"


def restore(runner):
    """(first pass to run, student): with --resume from the latest completed stage saved for this
    recipe (as far as its passes go; later stages of another recipe are discarded), else fresh. The
    run's fingerprint is recorded then (`record_run`): what its passes measure is kept under it."""
    before = keyed_under(runner.run_dir)  # (read first: a fresh start deletes stages/, the record in it)
    start, student = _restored(runner)
    if runner.resume and is_main_process():  # (a start without --resume removed every distill checkpoint)
        note_stranded_checkpoints(runner.run_dir, runner.passes)
    record_run(runner, before)
    return start, student


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
    write_atomically(stages / RUN_RECORD, lambda tmp: tmp.write_text(text))


def _restored(runner):
    """`restore`'s (first pass to run, student)."""
    stages = runner.run_dir / "stages"
    runner.student_stage = None  # the saved stage folder that holds the student (hand_off)
    if not runner.resume:  # a finished run's, or discarded with --restart (check_run_folder)
        # a finished run's stages that --resume would keep go only once this run saves its first one
        # (`discard_finished`): a Ctrl-C before leaves them, as the note (runner_prepare.note_reusable) says
        from compress.runner_prepare import _kept_stage  # (it imports this module: imported here, not above)

        runner.finished_stages = not runner.restart and bool(_kept_stage(runner))  # passes --resume would keep
        if is_main_process():
            if not runner.finished_stages:
                shutil.rmtree(stages, ignore_errors=True)
            for folder in distill_folders(runner.run_dir):  # (with those a --resume set aside)
                remove_checkpoints(folder)
            discard(runner.run_dir)
        runner.started_over = True
        return 0, runner.models.fresh_student(runner.teacher)
    saved, k, skipped = getattr(runner, "resumes_from", None) or resumable(runner)
    pending = _finishable(runner, saved)
    if pending is not None:
        return _cleared(runner, *_finish(runner, *pending))
    if is_main_process():  # the files it names may be spilled over from now on
        discard(runner.run_dir)
    if k is None:
        recorded = recorded_teacher(runner.run_dir)  # a distill checkpoint kept: of this teacher (its
        if recorded is not None and distill_checkpoints(runner.run_dir):  # fingerprint holds no config)
            _check_teacher(runner, {"teacher": recorded})
        _unfinished(runner)
        return 0, runner.models.fresh_student(runner.teacher)
    d = stage_dir(runner, k)
    state = next(state for i, folder, state in saved if folder == d)
    _check_teacher(runner, state)
    _check_inputs(runner, state)
    written = (runner.run_dir / "stages" / FINISHED).is_file()  # its output, before this run
    _unfinished(runner)
    runner.ctx.report, runner.ctx.block_map = state["report"], state["block_map"]
    names = [s.name for s in runner.recipe.passes]
    console.print(resuming_words(k + 1, names, written))
    _say_removals(state["report"], names[:k + 1])
    if skipped:
        _discard_passed_over(runner, k, [folder for i, folder, _ in saved if folder != d and i >= k], skipped)
    runner.student_stage = d
    student = runner.models.restore(d)
    _finish_adopting(runner, k, student, d)
    return _cleared(runner, k + 1, student)


def _cleared(runner, start: int, student):
    """(start, student), once the training checkpoints of the distill passes before `start` (kept) are
    removed, with an older swap's (as DistillPass.stage_saved removes them once the pass's stage is saved):
    a run stopped (or killed) between that save and that removal left them, several times the model, and no
    later step would remove them. One line names what went. Those set aside get stage_saved's rule with the
    fingerprint the checkpoints recorded (keep_past: kept past this stage, marked with it, for a --resume that
    undoes the change to take back; those another stage kept, removed), as the saved stage would have."""
    if not is_main_process():
        return start, student
    names = [s.name for s in runner.recipe.passes]
    distills = [i for i, name in enumerate(names) if name == "distill"]  # the n-th's folder: distill_trainer's
    for n, i in enumerate(distills[:sum(i < start for i in distills)], 1):
        folder = runner.run_dir / ("distill" if n == 1 else f"distill-{n}")
        meta, _ = newest_meta(folder / "checkpoints")  # (the training the stage holds: read before they go)
        removed = remove_checkpoints(folder, aside=False)
        if removed:
            console.print(f"  removed {escape(' and '.join(map(str, removed)))}: the training checkpoints of pass "
                          f"{i + 1}/{len(names)} (distill, kept), whose saved stage holds the trained student",
                          highlight=False)
        if meta is not None and isinstance(meta["fingerprint"], str):
            with interrupts_held():
                keep_past(folder / DISCARDED, meta["fingerprint"])
    return start, student


def resuming_words(done: int, names: list[str], written: bool) -> str:
    """What --resume says it continues from: 'resuming after pass 1/2 (svd)' (runner_resume.resumed_in_words),
    or, once all `done` passes of the recipe's pass `names` were, 'all 2 passes were done (svd, svd):
    writing the output again' ('its only pass (svd) was done: ...'; `written`: a finished run's output
    was; else 'writing the output')."""
    if done < len(names):
        return f"[bold]resuming[/] {resumed_in_words(done, names)}"
    what = f"its only pass ({names[0]}) was done" if done == 1 else f"all {done} passes were done ({', '.join(names)})"
    return f"{what}: writing the output{' again' if written else ''}"


def _finish_adopting(runner, k: int, student, stage: Path) -> None:
    """A streamed run stopped after the stage of pass k was saved, before its spilled blocks were
    deleted (StreamedModels.adopt: a copy of the model, which no later adopt would delete were pass k
    the last): deleted now; runner_heldout.check_kept says where the run stopped. The earlier stages go
    once pass k's is checked (`drop_checked`): one refused (NaN/Inf) leaves them to run pass k again from."""
    spill = runner.run_dir / "stream"
    if not runner.recipe.stream or not is_main_process():
        return
    if spill.is_dir() and any(spill.iterdir()):
        runner.models.adopt(student, stage, older=False)
        runner.stopped_in = (k, "adopt")


def _finishable(runner, saved: list) -> tuple[int, dict] | None:
    """(pass index, state) of a streamed stage whose writing was interrupted (runner_pending), where
    it is later than every saved stage and of this recipe as far as its pass; else None."""
    got = read_record(runner.run_dir) if runner.recipe.stream and is_main_process() else None
    if got is None:
        return None
    j, state = got
    recipe = state.get("recipe")
    if j <= max((i for i, _, _ in saved), default=-1) or j >= len(runner.passes) or not isinstance(recipe, dict):
        return None
    changed = recipe_changes(recipe, runner.recipe.raw, runner.passes, j + 1) or \
        statistics_change(state, runner.passes, j)
    return None if changed else (j, state)


def _finish(runner, j: int, state: dict):
    """(first pass to run, student) after pass j, whose stage was being written when the run stopped:
    the student read back from its record (runner_pending), its stage written from it (the pass does
    not run again), then as `restore` from a saved stage."""
    _check_teacher(runner, state)
    _check_inputs(runner, state)
    _unfinished(runner)
    runner.ctx.report, runner.ctx.block_map = state["report"], state["block_map"]
    names = [s.name for s in runner.recipe.passes]
    console.print(f"[bold]resuming[/] after pass {j + 1}/{len(names)} ({names[j]}), whose stage was being "
                  f"written when the run stopped: it is written from what the pass left in "
                  f"{escape(str(runner.run_dir / 'stream'))}, without running the pass again", highlight=False)
    _say_removals(state["report"], names[:j + 1])
    student = restore_student(runner.run_dir, runner.models)
    save_stage(runner, j, student, record=False, older=False)  # the record stays until the stage is complete
    runner.student_stage = stage_dir(runner, j)
    runner.stopped_in = (j, "write")  # written now: its held-out check never began (runner_heldout.check_kept)
    return j + 1, student


def _say_removals(report: dict, done: list[str]) -> None:
    """The log line of each removal pass the restored stage holds (remove_blocks_records.removal_line), as
    the run that made it said but named as kept ('remove_blocks (pass 2, kept): removed ...'), so a
    resumed run's log names its removed blocks too and does not read as if the pass ran again.
    `done`: the names of the passes the stage holds, in order (its removal records follow theirs)."""
    from compress.passes.remove_blocks_records import removal_line

    removal = report.get("remove_blocks") or {}
    records = removal.get("passes") or ([removal] if removal else [])  # (one record: an older report)
    numbers = [i + 1 for i, name in enumerate(done) if name == "remove_blocks"]
    for j, record in enumerate(records):
        kept = f" (pass {numbers[j]}, kept)" if len(numbers) == len(records) else " (kept)"
        line = removal_line(record)
        line = f"remove_blocks{kept}{line.removeprefix('remove_blocks')}" if line.startswith("remove_blocks:") else line
        console.print(line, highlight=False, markup=False)


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


def _discard_passed_over(runner, k: int, stages: list[Path], skipped: list) -> None:
    """Stages saved for another recipe after the one resumed (pass k's) are deleted: what follows runs
    again. A distill checkpoint, whose pass now starts from another student, is set aside (in DISCARDED
    beside it, by its fingerprint, as Checkpoints._discard_of_other_keys does: an earlier pass's key
    changed by mistake loses no training), said with how to take it back; what an interrupted setting
    aside left is filed there first (finish_swap). Checkpoints none of which reads whole (a removal a kill
    stopped: remove_whole; only one being written) are removed, not set aside: no --resume could take
    them back. Each stage goes state.json first (delete_stage: a kill midway leaves none that reads as whole)."""
    from compress.runner_stream import delete_stage

    if is_main_process():
        for folder in distill_folders(runner.run_dir):
            finish_swap(folder / "checkpoints", folder / DISCARDED)
    found = list(runner.run_dir.glob("distill*/checkpoints"))
    checkpoints = [c for c in found if whole_checkpoints(c)]
    console.print(f"  {passed_over_in_words(skipped)}{set_aside_in_words(checkpoints, k + 1, runner.recipe.passes)}",
                  highlight=False)
    if is_main_process():
        for folder in stages:
            delete_stage(folder)
        for folder in found:
            if folder in checkpoints:
                set_aside(folder, folder.with_name(DISCARDED))
            else:
                remove_whole(folder)


def set_aside_in_words(checkpoints: list[Path], first: int, passes) -> str:
    """'; its distill checkpoints are set aside (RUN/distill/checkpoints moved to
    RUN/distill/checkpoints.discarded/FINGERPRINT); to take them back, undo the change and rerun with --resume
    (they are kept past this run's pass 3/3 (distill), until a later one with other settings ends)' for the
    distill `checkpoints` folders --resume sets aside, passes from index `first` (of `passes`) on running again
    (the first distill pass among them named: the second of its stages saved with other settings removes
    them, distill_checkpoints.stage_saved); '' where there are none. That --resume runs the passes again,
    making the student they were trained from, and its distill pass takes back the set trained from it."""
    if not checkpoints:
        return ""
    moved = ", ".join(f"{c} moved to {aside_as(c, c.with_name(DISCARDED))}" for c in checkpoints)
    at = next((i for i in range(first, len(passes)) if passes[i].name == "distill"), None)
    kept = "" if at is None else (f" (they are kept past this run's pass {at + 1}/{len(passes)} (distill), until a "
                                  "later one with other settings ends)")
    return f"; its distill checkpoints are set aside ({moved}); to take them back, undo the change and rerun with " \
        f"--resume{kept}"


def _unfinished(runner) -> None:
    """A resumed run is unfinished again until its export (a finished run is marked by FINISHED)."""
    if is_main_process():
        (runner.run_dir / "stages" / FINISHED).unlink(missing_ok=True)


def _check_teacher(runner, state: dict) -> None:
    """The stage resumed from was written for this teacher (stages written before the teacher was
    recorded are resumed with a warning)."""
    before = state.get("teacher")
    if before is None:
        warn(f"{runner.run_dir} was written by an older dit-compress that does not record the teacher; "
             "--resume cannot check it is the same")
    elif older_checksum(before, runner.identity):
        warn(f"{runner.run_dir} was written by an older dit-compress, whose checksum of the teacher's weights "
             "read only a few values of each tensor; --resume checks the teacher's source and --teacher-config only")
    elif not same_teacher(before, runner.identity):  # a --teacher-config by the file it names
        raise UserError(f"--resume: the teacher changed since {runner.run_dir} was written "
                        f"({teacher_change(before, runner.identity, getattr(runner, 'config_by', FLAG))}); "
                        f"{resume_advice(before, runner.identity, resume=True)}")


def _check_inputs(runner, state: dict) -> None:
    """The stage resumed from was calibrated on the prompts read now and in a pipeline whose other
    parts are as they are now (`inputs_change`); a stage that records none (toy, synthetic, older
    runs) is not compared."""
    before = state.get("inputs")
    if not isinstance(before, dict) or runner.inputs_id is None:
        return
    changed = inputs_change(before, runner.inputs_id, runner.recipe.calibration.pipeline or runner.source,
                            prompts_in_words(runner.recipe.calibration))
    if changed:
        raise UserError(f"--resume: {changed} since {runner.run_dir} was written; undo the change to resume, "
                        "or rerun with --restart to start over")


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
    """The finished run's stages that a rerun without --resume started over (`_restored` left them):
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
    tmp.write_text(json.dumps(_state(runner), default=str))
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
