"""A run's folders: the output and run folders checked before anything loads (`check_folders`), an
interrupted run's saved work that a fresh start must not discard (`check_run_folder`), and what a
rerun can do after Ctrl-C (`interrupt_note`). Imports no torch: the CLI reads the run folder after
a Ctrl-C that may come before torch is imported."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from compress.errors import UserError, folder_named
from compress.recipe_teacher_config import FLAG
from compress.runner_answers import ANSWER
from compress.runner_caches import CLOCK, REMOVED_LOG
from compress.runner_kept import kept_in_words, measured_so_far, read_back_kept, saved_in_words, work_kept
from compress.runner_lock import LOCK
from compress.runner_measured import check_measured_for_another_teacher, named_of, run_fingerprint
from compress.runner_pending import read_record
from compress.runner_prompts import inputs_changed, saved_state
from compress.runner_ranks import HANDOFF
from compress.runner_config_sum import config_target
from compress.runner_resume import (distill_checkpoints, finished_and_reusable, interrupted_run, of_other_statistics,
                                    read_state, recorded_teacher, stage_dirs, unsaved_changes)
from compress.runner_teacher_id import named_now, resume_advice, same_before_loading, teacher_change
from compress.runner_written import check_own_run_folder
from compress.words import counted


def check_folders(out: Path, run_dir: Path, overwrite: bool, teacher: str | None = None,
                  teacher_config: str | None = None, named: tuple[str, str] = FLAG) -> None:
    """Before anything loads: the output may be written (and replace what is there, see
    `check_replaceable`), the output and the run folder are clear of the `teacher` source's folder,
    and the output of the config `teacher_config` (--teacher-config) names (`check_clear_of_teacher`),
    and the run folder made, holding nothing in what a run replaces that it did not write
    (`check_own_run_folder`); a UserError saying why not otherwise. `named`: how `teacher_config` was
    given (recipe_teacher_config.config_by: --teacher-config, or the recipe's key at its line)."""
    from compress.io_atomic import check_replaceable

    check_replaceable(out, overwrite)
    check_clear_of_teacher(out, teacher, teacher_config, run_dir, named)
    a, b = out.resolve(), run_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UserError(f"--out {out} and --run-dir {run_dir} must be separate folders, neither inside "
                        "the other")
    check_writable(out.parent, f"output folder {out}")
    check_writable(run_dir, f"run folder {run_dir}")
    check_own_run_folder(run_dir)


def check_clear_of_teacher(out: Path, teacher: str | None, teacher_config: str | None = None,
                           run_dir: Path | None = None, named: tuple[str, str] = FLAG) -> None:
    """--out is not, does not hold and does not lie inside a local teacher's folder (a teacher or
    pipeline folder), nor holds a single-file teacher: writing the output would replace or mix
    with the teacher. Nor is it the folder of, or holds, the config file --teacher-config names
    (`teacher_config`; or the recipe's teacher_config, as `named` says), which the output would replace.
    The run folder (`run_dir`) is not the
    teacher's folder nor inside it, and holds no teacher in what a run writes in it (RUN_WRITTEN):
    the caches and stages would mix with the teacher's files, and --restart removes its stages/. A relative path is taken from here, as the run loads
    it; toy: and Hub ids (nothing here) are not local."""
    if teacher and not teacher.startswith("toy:"):
        _check_clear("--out", out, teacher, "an output folder")
        if run_dir is not None:
            _check_clear("--run-dir", run_dir, teacher, "a run folder", RUN_WRITTEN)
    config = config_target(teacher_config) if teacher_config else None  # as --resume compares it
    if config is not None:
        a, c = out.resolve(), config
        if a in c.parents:
            where = "is the folder of" if a == c.parent else "holds"
            raise UserError(f"--out {out} {where} the {named[0]} {teacher_config}{named[1]}; name an output "
                            "folder that does not hold it")


# the top-level entries of a run folder a run writes in (or removes): a teacher elsewhere in a run
# folder does not mix with them. Its files: the removal log, the run folder's lock, rank 0's hand-off
# and each follower's answer (-N; each written as .tmp-PID beside it, then renamed over it), and
# runner_caches.clock_ns's .clock-PID (CLOCK; removed at once)
_TMP = r"(\.tmp-\d+)?"
RUN_WRITTEN = re.compile("|".join([
    r"stages|distill.*|calib|stream|inputs|fisher|activations|sensitivity|importance\.(json|png)",
    re.escape(REMOVED_LOG), re.escape(LOCK), re.escape(HANDOFF) + _TMP, re.escape(ANSWER) + r"-\d+" + _TMP,
    re.escape(CLOCK) + r"\d+"]))


def _check_clear(flag: str, folder: Path, teacher: str, name: str, written: re.Pattern | None = None) -> None:
    """A UserError where `folder` (what `flag` names) is, holds or lies inside the local teacher
    folder `teacher`, or holds the single-file teacher `teacher`; `name`: what to name instead.
    `written`: the top-level entries of `folder` a run writes in, where given; a teacher elsewhere
    in it is clear of them (a run folder holding a models/ folder)."""
    path = Path(teacher).expanduser()
    if not path.exists():
        return
    a, t = folder.resolve(), path.resolve()
    if written is not None and a in t.parents and not written.fullmatch(t.relative_to(a).parts[0]):
        return
    if path.is_dir() and (a == t or a in t.parents or t in a.parents):
        where = "is" if a == t else "holds" if a in t.parents else "lies inside"
        raise UserError(f"{flag} {folder} {where} the teacher's folder {teacher}; name {name} outside it")
    if not path.is_dir() and a in t.parents:
        raise UserError(f"{flag} {folder} holds the teacher {teacher}; name {name} that does not hold it")


def check_writable(folder: Path, what: str) -> None:
    """`folder` can be made (if missing) and written: a temp folder is made in it and removed, and so
    are the folders made for it. The error names the folder that cannot be written: `folder`, or the
    nearest one above it that is there where it cannot be made (a read-only mount's)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".dit-compress-check-", dir=folder))
    except OSError as e:
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        there = next((p for p in (folder, *folder.parents) if p.is_dir()), folder)
        why = f"{file} is a file, not a folder" if file else f"cannot write in {folder_named(there)}: {e.strerror or e}"
        raise UserError(f"{what}: {why}") from None
    finally:
        for p in missing:
            try:
                p.rmdir()
            except OSError:
                pass


def unwritable(folder: Path, what: str) -> str | None:
    """`check_writable`'s words where `folder` (or the nearest folder above it that is there) cannot be
    written, found without writing anything (plan's warning: a read-only file system, no permission);
    None where it looks writable."""
    there = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if there is None:
        return None
    if not there.is_dir():  # a file where a folder is: check_writable's words
        return f"{what}: {there} is a file, not a folder"
    if os.access(there, os.W_OK | os.X_OK):
        return None
    read_only = hasattr(os, "statvfs") and os.statvfs(there).f_flag & getattr(os, "ST_RDONLY", 1)
    why = "Read-only file system" if read_only else "Permission denied"
    return f"{what}: cannot write in {folder_named(there)}: {why}"


def check_run_folder(run_dir: Path, now: dict, passes, teacher: dict | None = None, recipe=None,
                     named: tuple[str, str] = FLAG) -> None:
    """A run folder holding an interrupted run's saved work (completed stages, a distill checkpoint)
    is a UserError saying what is there, for a run without --resume or --restart: a fresh start
    would discard it; where its latest stage was of another teacher (`other_teacher`, for this run's
    `teacher`: its source and --teacher-config), it says so, as --resume would refuse it, and so
    where it was calibrated on other prompts or in other pipeline parts than `recipe` (the Recipe of
    `now`) reads (`inputs_changed`); no pass saved, what a run of another teacher measured is refused
    (`check_measured_for_another_teacher`). A finished run's folder (its output written) is started over.
    `named`: how the teacher config was given (recipe_teacher_config.config_by)."""
    info = interrupted_run(run_dir, now, passes)
    if info is None:
        return None if teacher is None else check_measured_for_another_teacher(run_dir, teacher, passes,
                                                                               config_by=named)
    info = unsaved_changes(run_dir, info, now, passes)  # the pass it stopped in (after those saved), changed since
    source = (teacher or {}).get("source")
    if info["changed"]:
        kept = kept_by_resume(info, run_dir, recipe, source)
        raise UserError(f"{another_recipe(run_dir, info, passes)}: {kept}add --restart to discard it and start over, "
                        "or choose another --run-dir")
    of = " of this recipe" if info["changed"] == [] else ""
    change = other_teacher(run_dir, teacher, named) if teacher is not None else None
    if change:
        raise UserError(another_teacher(run_dir, info, passes, change))
    change = inputs_changed(saved_state(run_dir, info["done"] - 1), recipe, source) if info["done"] else None
    if info["total"] is not None and info["done"] >= info["total"]:  # an export cut short, or an older
        # dit-compress's finished run (it wrote no FINISHED marker)
        done = ("whose one pass is done" if info["total"] == 1 else
                f"whose {counted(info['total'], 'pass', 'passes')} are all done")
        written = (f"{run_dir} holds a run{of} {done} but whose output was not marked written (its export was "
                   "cut short, or an older dit-compress wrote it)")
        them = "it" if info["total"] == 1 else "them"
        if change:
            raise UserError(f"{written}, and {change} since it ran: add --restart to start over, or undo the "
                            f"change and add --resume to write the output from {them}")
        raise UserError(f"{written}: add --resume to write the output from {them}, or --restart to start over")
    # what its unfinished pass measured, as its stop said (under the fingerprint it recorded: the teacher,
    # not loaded yet, gives none)
    saved = kept_in_words(run_dir, info, run_fingerprint(run_dir), None, passes)
    if change:
        raise UserError(f"{run_dir} holds an interrupted run{of} ({saved}), and {change} since it ran: add "
                        "--restart to start over, or undo the change and add --resume to continue")
    raise UserError(f"{run_dir} holds an interrupted run{of} ({saved}): add --resume to continue, "
                    "or --restart to start over")


def other_teacher(run_dir: Path, teacher: dict, given: tuple[str, str] = FLAG) -> tuple[str, str] | None:
    """('was A, now B', what to do) (runner_teacher_id.teacher_change and resume_advice, as --resume says
    them) where the latest stage saved
    in `run_dir` (with none, the run that last started its passes: recorded_teacher) recorded another
    teacher source or config than `teacher` (named_teacher's: the --teacher-config and what the config
    file holds, as teacher_identity records them); None where they are the same or it recorded none,
    and where only the loaded teacher's checksum can tell (runner_teacher_id.same_before_loading: --resume
    compares it once loaded). The weights are compared by their files' signature: the teacher is not
    loaded yet. `given`: how its config was given (teacher_change's `config_by`)."""
    stages = stage_dirs(run_dir)
    before = (read_state(stages[-1][1]) or {}).get("teacher") if stages else recorded_teacher(run_dir)
    if not isinstance(before, dict) or "source" not in before:
        return None
    named = named_of(before)
    if same_before_loading(named, teacher):  # or only its loaded checksum can tell: --resume compares it then
        return None  # (a config compared by what it holds, or by the file it names)
    return teacher_change(named, teacher, given), resume_advice(named, teacher, resume=False)


def another_teacher(run_dir: Path, info: dict, passes, change: tuple[str, str]) -> str:
    """'RUN_DIR holds an interrupted run of this recipe for another teacher (CHANGE; 4 of 5 passes done):
    ADVICE' for an `interrupted_run` whose latest stage recorded another teacher (`other_teacher`'s `change`),
    as a plain rerun refuses it and Ctrl-C's note says it."""
    of = " of this recipe" if info["changed"] == [] else ""
    saved = kept_in_words(run_dir, info, run_fingerprint(run_dir), None, passes)
    return f"{run_dir} holds an interrupted run{of} for another teacher ({change[0]}; {saved}): {change[1]}"


def another_recipe(run_dir: Path, info: dict, passes=()) -> str:
    """'RUN_DIR holds an interrupted run of another recipe (it differs in ...; 1 of 3 passes done,
    block statistics (up to 9 files) to read back)' ('... measured with other statistics (dit-compress's
    statistics 2, now 3; ...)': runner_resume.statistics_change) for an `interrupted_run` whose recipe differs
    (info["changed"]): its saved passes and distill checkpoint, and what it measured, under the
    fingerprint the run recorded: where this recipe's --resume keeps some of its passes, what this
    recipe's `passes` after those read back (`measured_so_far`; passes not known: its svd caches');
    where it keeps none (another calibration or first pass), what the run's own --resume reads back,
    as its stop counted it (`kept_in_words`: not the statistics of its saved passes). --restart
    discards its passes, not what it measured."""
    keeps, fingerprint = info.get("keeps") or 0, run_fingerprint(run_dir)
    if keeps:
        to_run = list(passes)[keeps:] if passes else None
        measured = measured_so_far(run_dir, fingerprint, None, to_run, keeps)
        kept = saved_in_words(info) + read_back_kept(measured)
    else:
        kept = kept_in_words(run_dir, info, fingerprint, None, passes)
    if of_other_statistics(info["changed"]):
        return f"{run_dir} holds an interrupted run measured with other statistics ({info['changed'][0]}; {kept})"
    return (f"{run_dir} holds an interrupted run of another recipe (it differs in "
            f"{', '.join(info['changed'][:3])}; {kept})")


def nothing_saved(run_dir: Path, saved: list) -> bool:
    """Whether --resume has nothing to continue from in `run_dir`: no saved pass among `saved` (the stages
    runner_stages.resumable read), no distill checkpoint, no streamed stage being written (runner_pending)."""
    return not saved and not distill_checkpoints(run_dir) and read_record(run_dir) is None


def say_if_nothing_to_resume(run_dir: Path, saved: list, passes=(), existed: bool = True) -> str | None:
    """--resume where `run_dir` holds nothing to continue from (no saved pass among `saved`, the stages
    runner_stages.resumable read; no distill checkpoint; no streamed stage being written, runner_pending):
    one line says that the run starts from the first pass (it did so silently), and why: there is no
    such folder, or nothing was saved; or no pass was saved there, naming what an earlier run measured
    there that the recipe's `passes` read back (`measured_so_far`, under the fingerprint it recorded:
    sampled inputs, block statistics, output Fishers, teacher samples; a pass says what it reads back):
    that line returned, not said, for runner_prepare to say once the loaded teacher and calibration are
    found to be that run's (else refused: the note would contradict the refusal).
    `existed`: whether the folder was there before the run (its locks make it)."""
    if not nothing_saved(run_dir, saved):
        return None
    from compress.report import note

    if not existed or not Path(run_dir).is_dir():
        note(f"--resume: there is no folder {run_dir} (a mistyped --run-dir?): starting from the first pass")
        return None
    inputs = sorted(Path(run_dir).glob("inputs/*/*.pt"))  # each a finished sampling call's records
    measured = measured_so_far(run_dir, run_fingerprint(run_dir), inputs, list(passes) or None)
    if measured:
        return (f"--resume: no pass was saved in {run_dir} (no distill checkpoint): starting from the first pass, "
                f"reading back what an earlier run measured there ({measured}) where this teacher and "
                "calibration measured it")
    note(f"--resume: nothing was saved in {run_dir} to resume from (no pass saved, no distill checkpoint): "
         "starting from the first pass")
    return None


def kept_by_resume(info: dict, run_dir: Path | None = None, recipe=None, source: str | None = None) -> str:
    """'--resume keeps its first 2 passes and runs the rest; ' for an `interrupted_run` of another
    recipe whose earlier stages this recipe can continue from, else '' (and where the stage it would
    keep, in `run_dir`, was calibrated on other inputs than `recipe` reads, in the pipeline of
    the teacher `source`: `inputs_changed`)."""
    keeps = info.get("keeps") or 0
    if not keeps or (run_dir is not None and inputs_changed(saved_state(run_dir, keeps - 1), recipe, source)):
        return ""
    return f"--resume keeps its first {counted(keeps, 'pass', 'passes')} (with the same teacher) and runs the rest; "


def interrupt_note(run_dir: Path, discarding: bool = False, now: dict | None = None, passes=(),
                   fingerprint: str | None = None, inputs: list[Path] | None = None, recipe=None,
                   source: str | None = None, teacher_config: str | None = None,
                   named: tuple[str, str] = FLAG) -> str:
    """What follows 'interrupted' after Ctrl-C in a run: '; RUN_DIR keeps its work (...): rerun with
    --resume to continue' where `run_dir` holds an unfinished run's saved work, else that nothing
    was saved and a rerun starts over. `discarding`: what is there is an earlier run's that this
    one (--restart) was about to discard. `now`, `passes`: this run's resolved recipe and passes,
    compared as `check_run_folder` does (no `now`: not compared); saved work of another recipe is not
    offered to --resume, which would refuse it, nor a stage calibrated on other prompts or pipeline
    parts than `recipe` (the Recipe of `now`) and the teacher `source` read (`inputs_changed`), nor one
    of another teacher than `source` and its `teacher_config` (`other_teacher`, by the config's contents:
    the refusal's advice is given; `named`: how that config was given, recipe_teacher_config.config_by). What
    this run measured before the Ctrl-C and a rerun
    reads back whether or not it resumes (runner_kept.measured_so_far: sampled calibration inputs among
    `inputs`, the cache files of this run's sampling calls; block statistics and output Fishers an svd pass kept under its
    teacher and calibration `fingerprint`, and the teacher samples a distill pass of `passes` still to run reads back;
    None: not known yet, so none measured) is said to be kept, beside
    the passes saved where there are any, in the words of an error's stop (`work_kept`)."""
    info = None if discarding else interrupted_run(run_dir, now, passes)
    keeps = 0 if discarding or now is None else finished_and_reusable(run_dir, now, passes)
    if keeps:  # a finished run's stages, not yet discarded by this run's start
        change = inputs_changed(saved_state(run_dir, keeps - 1), recipe, source)
        if change:
            return (f"; {run_dir} still holds the finished run's stages, but {change} since it ran: a rerun "
                    "starts over (undo the change and add --resume to keep them)")
        kept = ("its one pass" if keeps == len(passes) == 1 else f"all its {keeps} passes" if keeps == len(passes)
                else f"its first {counted(keeps, 'pass', 'passes')}")  # as the rerun's note counts them (note_reusable)
        return f"; {run_dir} still holds the finished run's stages: rerun with --resume to keep {kept} (with the same " \
               "teacher)"
    if info is not None and info["changed"]:
        return (f"; {another_recipe(run_dir, info, passes)}: {kept_by_resume(info, run_dir, recipe, source)}a rerun "
                "needs --restart to discard it, or another --run-dir")
    teacher = other_teacher(run_dir, named_now(source, teacher_config), named) if info and source else None
    if teacher:
        return f"; {another_teacher(run_dir, info, passes, teacher)}"
    change = info and info["done"] and inputs_changed(saved_state(run_dir, info["done"] - 1), recipe, source)
    go_on = (f"{change} since it ran, so rerun with --restart to start over, or undo the change and add --resume"
             if change else "rerun with --resume to continue")
    # a saved run's measurements counted as the refusal counts them: under the fingerprint it recorded, where
    # this run's is not known yet (before prepare)
    known = run_fingerprint(run_dir) if fingerprint is None and info is not None else fingerprint
    note = work_kept(run_dir, info, go_on, known, inputs, passes)
    return note or "; nothing was saved yet: a rerun starts over"
