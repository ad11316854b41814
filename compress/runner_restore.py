"""A run's student restored from its stage checkpoints as its passes start (`restore`): fresh (a run
without --resume discards the earlier stages and distill checkpoints), or with --resume from the latest
stage of this recipe, once the teacher and inputs it was written for are checked against this run's:
a streamed stage whose writing was interrupted finished from its record (runner_pending), stages of
another recipe it passes over discarded (their distill checkpoints set aside), the training checkpoints
of the distill passes the kept stage holds removed, and what it continues from said. Saving the stages,
and which saved stages --resume reads (`resumable`), are runner_stages'."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.markup import escape

from compress.calib_prompts import prompts_in_words
from compress.errors import UserError
from compress.interrupts import interrupts_held
from compress.passes.distill_checkpoint_folders import (aside_as, distill_folders, finish_swap, keep_past,
                                                       remove_checkpoints, remove_whole, set_aside, whole_checkpoints)
from compress.passes.distill_resume import DISCARDED, newest_meta
from compress.recipe_teacher_config import FLAG
from compress.report import console, warn
from compress.runner_pending import discard, read_record, restore_student
from compress.runner_caches import note_stranded_checkpoints
from compress.runner_caches_keyed import keyed_under
from compress.runner_ranks import is_main_process
from compress.runner_resume import (FINISHED, distill_checkpoints, inputs_apart, inputs_change, passed_over_in_words,
                                    recipe_changes, recorded_teacher, resumed_in_words, statistics_change)
from compress.runner_resume_step import distill_folder
from compress.runner_stages import record_run, resumable, save_stage, stage_dir
from compress.runner_teacher_id import older_checksum, resume_advice, same_teacher, teacher_change


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


def _restored(runner):
    """`restore`'s (first pass to run, student)."""
    stages = runner.run_dir / "stages"
    runner.student_stage = None  # the saved stage folder that holds the student (hand_off)
    if not runner.resume:  # a finished run's, or discarded with --restart (check_run_folder)
        # a finished run's stages that --resume would keep go only once this run saves its first one
        # (runner_stages.discard_finished): a Ctrl-C before leaves them, as the note (runner_prepare.note_reusable) says
        from compress.runner_prepare import _kept_stage  # (imported here, not above, as runner_stages did)

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
        folder = runner.run_dir / distill_folder(n)
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
    it is later than every saved stage and of this recipe as far as its pass (compared as a saved stage is:
    runner_resume.reusable_stage, its prompts apart only where it records its `inputs`); else None."""
    got = read_record(runner.run_dir) if runner.recipe.stream and is_main_process() else None
    if got is None:
        return None
    j, state = got
    recipe = state.get("recipe")
    if j <= max((i for i, _, _ in saved), default=-1) or j >= len(runner.passes) or not isinstance(recipe, dict):
        return None
    changed = (recipe_changes(recipe, runner.recipe.raw, runner.passes, j + 1, inputs_apart(state), state.get("report"))
               or statistics_change(state, runner.passes, j))
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
    them, distill_checkpoint_folders.stage_saved); '' where there are none. That --resume runs the passes again,
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
