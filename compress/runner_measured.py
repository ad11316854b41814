"""What a run interrupted before it saved a pass measured (runner_kept.measured_so_far), refused to a
plain rerun that names another teacher (`check_measured_for_another_teacher`), before that teacher loads
and with the advice that fits, as over saved passes (runner_folders.other_teacher); and the teacher a run
recorded as it is compared before the teacher loads (`named_of`). Imports no torch."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.runner_caches import finished_run
from compress.runner_config_sum import CONFIG_SUM
from compress.runner_kept import measured_so_far
from compress.runner_resume import recorded_fingerprint, recorded_teacher
from compress.runner_teacher_id import edited_config, same_teacher, teacher_change


def named_of(recorded: dict) -> dict:
    """A recorded teacher identity (teacher_identity's) as named_teacher's, which a run knows before its
    teacher loads: its source, --teacher-config and the checksum of what the config holds."""
    return {"config": None, **{k: v for k, v in recorded.items() if k in ("source", "config", CONFIG_SUM)}}


def check_measured_for_another_teacher(run_dir: Path, teacher: dict, passes) -> None:
    """A plain rerun in `run_dir`, whose last run (unfinished) saved no pass but recorded its teacher and
    fingerprint (runner_stages.record_run): a UserError where that teacher is not the one named now
    (`teacher`: named_teacher's; another source, --teacher-config, or the config edited in place) and it
    measured what the recipe's `passes` read (under its fingerprint, which this teacher's is not). Its
    advice: undo the edit of a config changed in place (runner_teacher_id.edited_config), else rerun with
    that teacher. Other changes (the weights, the calibration) are told once the teacher has loaded
    (runner_folders.check_measured_for_another), as the run folder records no calibration of such a run."""
    fingerprint, before = recorded_fingerprint(run_dir), recorded_teacher(run_dir)
    if fingerprint is None or before is None or finished_run(run_dir):
        return
    named = named_of(before)
    if same_teacher(named, teacher):
        return
    measured = measured_so_far(run_dir, fingerprint, None, list(passes))
    if measured:
        edited = edited_config(named, teacher)
        how = f"undo the change to {edited}" if edited else "rerun with that teacher"
        raise UserError(f"{run_dir} holds what an interrupted run of another teacher measured "
                        f"({teacher_change(named, teacher)}; {measured}), which this run does not read back: "
                        f"{how} to read it back, add --restart to discard it, or choose another --run-dir")
