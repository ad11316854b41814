"""What a run folder whose last run was interrupted before it saved a pass holds measured
(runner_kept.measured_so_far: that run's, or an earlier run's, finished, under the same fingerprint), refused to a
plain rerun that names another teacher (`check_measured_for_another_teacher`), before that teacher loads
and with the advice that fits, as over saved passes (runner_folders.other_teacher), and to one whose
fingerprint (teacher and calibration) differs once the teacher has loaded (`check_measured_for_another`);
the teacher a run recorded as it is compared before the teacher loads (`named_of`), and the fingerprint
that keys what it measured, recorded or guessed from its caches (`run_fingerprint`), with the teacher
source (`keyed_source`: a copy elsewhere keys as the run did) and the calibration (`calibration_keys`)
that key it. Moved out of runner_folders, which calls them. Imports no torch."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from compress import json_read
from compress.errors import UserError
from compress.recipe_teacher_config import FLAG
from compress.runner_caches import finished_run
from compress.runner_config_sum import CONFIG_SUM
from compress.runner_kept import measured_so_far
from compress.runner_resume import (SAMPLES_ABOUT, TEACHER_SAMPLES, inputs_change, recorded_fingerprint,
                                    recorded_teacher, result_bearing, run_record, statistics_version)
from compress.runner_teacher_id import (FILES, older_checksum, put_back, same_before_loading, same_teacher,
                                        teacher_change)

KEYED_AS = "keyed_as"  # in RUN_RECORD: the teacher source keying its caches where not its own (`keyed_source`)
CALIBRATED = "calibration"  # in RUN_RECORD: what else keys them (`calibration_keys`; older runs: none)
# what a refusal says the run folder holds (`measured_by_another`): whose run measured it is not known, the
# interrupted run's or an earlier one's (measured_so_far counts both), only the teacher and calibration keying it
MEASURED_WITH = "holds what was measured with"


def named_of(recorded: dict) -> dict:
    """A recorded teacher identity (teacher_identity's) as named_teacher's, which a run knows before its
    teacher loads: its source, --teacher-config, the checksum of what the config holds and the signature
    of its weight files (FILES, which tells a copy of it elsewhere)."""
    return {"config": None, **{k: v for k, v in recorded.items() if k in ("source", "config", CONFIG_SUM, FILES)}}


def keyed_source(run_dir: Path, identity: dict) -> str | None:
    """The teacher source that keys a run's caches (runner_resume.fingerprint, the sampled inputs' cache)
    where the run recorded in `run_dir` read the teacher `identity` (teacher_identity's) at another path
    (`same_teacher`: copied or moved): the source that keyed its caches (KEYED_AS, else its teacher's), so
    that what it measured is read back; None where it did not (this run's own source keys them)."""
    before, keyed = recorded_teacher(run_dir), run_record(run_dir).get(KEYED_AS)
    if before is None or not same_teacher(before, identity):
        return None
    if isinstance(keyed, str):
        return keyed
    return before["source"] if before["source"] != identity["source"] else None


def calibration_keys(recipe, inputs: dict | None) -> dict:
    """What keys a run's caches besides its teacher (runner_resume.fingerprint), recorded in RUN_RECORD
    (CALIBRATED) so that a refusal names what changed: the calibration keys that change a result, the
    inputs a pipeline source read (`inputs`: inputs_identity's) and dit-compress's version."""
    import compress

    return {"calibration": result_bearing(asdict(recipe.calibration), inputs is not None), "inputs": inputs,
            "version": f"{compress.__version__} (statistics {statistics_version()})"}


def recorded_statistics(run_dir: Path) -> int | None:
    """The STATS_VERSION under which the run that last started its passes in `run_dir` measured, as the
    version it recorded says ('0.1.0 (statistics 2)': `calibration_keys`): what its stages were measured
    under where they record none (runner_resume.read_state: those of a dit-compress before they did);
    None where it recorded none."""
    found = _recorded_versions(run_dir)
    return int(found[2]) if found else None


def recorded_version(run_dir: Path) -> str | None:
    """The dit-compress version (compress.__version__) of the run that last started its passes in `run_dir`,
    as `recorded_statistics` ('0.1.0' of '0.1.0 (statistics 2)'); None where it recorded none."""
    found = _recorded_versions(run_dir)
    return found[1] if found else None


def _recorded_versions(run_dir: Path):
    """The match of the run record's version ('0.1.0 (statistics 2)': `calibration_keys`): [1] dit-compress's,
    [2] the statistics'; None where there is none."""
    recorded = run_record(run_dir).get(CALIBRATED)
    version = recorded.get("version") if isinstance(recorded, dict) else None
    return re.search(r"^(.*) \(statistics (\d+)\)$", version) if isinstance(version, str) else None


def calibration_change(before, now: dict) -> tuple[str, bool]:
    """(what differs between the `calibration_keys` a run recorded, `before`, and `now`'s, in words: 'calibration.seed
    was 0, now 3', the prompts or pipeline files read, dit-compress's version; whether a rerun can read back
    what it measured: not where only the version differs). A record of none (an older run): what may differ."""
    if not isinstance(before, dict) or not isinstance(before.get("calibration"), dict):
        return ("its calibration (seed, prompts, ...) or dit-compress's version (this run folder does not record "
                "which)", True)
    was, is_ = before["calibration"], now["calibration"]
    keys = sorted(k for k in was.keys() | is_.keys() if was.get(k) != is_.get(k))
    said = [f"calibration.{k} was {_shown(was.get(k))}, now {_shown(is_.get(k))}" for k in keys[:3]]
    said += [f"and {len(keys) - 3} more calibration keys"] if len(keys) > 3 else []
    if isinstance(before.get("inputs"), dict) and isinstance(now["inputs"], dict):
        said += [c for c in [inputs_change(before["inputs"], now["inputs"], is_.get("pipeline") or "pipeline")] if c]
    version = [] if before.get("version") == now["version"] else [
        f"dit-compress's version was {before.get('version')}, now {now['version']}"]
    return ", ".join(said + version) or "its calibration", bool(said) or not version


def _shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_measured_for_another_teacher(run_dir: Path, teacher: dict, passes, resume: bool = False,
                                       config_by: tuple[str, str] = FLAG) -> None:
    """A plain rerun in `run_dir`, whose last run (unfinished) saved no pass but recorded its teacher and
    fingerprint (runner_stages.record_run): a UserError where that teacher is not the one named now
    (`teacher`: named_teacher's; another source, --teacher-config, or the config edited in place) and the
    folder holds what the recipe's `passes` read under its fingerprint (which this teacher's is not: measured
    by that run or an earlier one, `MEASURED_WITH`). Its
    advice: undo the edit of a config changed in place (runner_teacher_id.edited_config), else rerun with
    that teacher. `resume`: said to --resume over a run that saved nothing else (it reads back only what
    this teacher measured, so refuses it as a plain rerun does). Other changes are told once the teacher
    has loaded (`check_measured_for_another`), as they are not known before: the weights, from the identity
    the run recorded; the calibration, from what it recorded of it (CALIBRATED). `config_by`: how the config
    named now was given (teacher_change's)."""
    fingerprint, before = recorded_fingerprint(run_dir), recorded_teacher(run_dir)
    if fingerprint is None or before is None or finished_run(run_dir):
        return
    named = named_of(before)
    if same_before_loading(named, teacher):  # or only its loaded checksum can tell: compared once loaded
        return
    measured = measured_so_far(run_dir, fingerprint, None, list(passes))
    if measured:
        raise measured_by_another(run_dir, teacher_change(named, teacher, config_by), measured,
                                  _how(named, teacher, resume), resume)


def _how(before: dict, now: dict, resume: bool) -> str:
    """What reads back what the teacher `before` measured: undo the change made in place (`put_back`: a
    config edited, the weights changed), else rerun with that teacher; with --resume where `resume`."""
    undo = put_back(before, now)
    if not resume:
        return undo or "rerun with that teacher"
    return f"{undo} and rerun with --resume" if undo else "rerun with that teacher and --resume"


def measured_by_another(run_dir: Path, change: str, measured: str, how: str, resume: bool = False) -> UserError:
    """'RUN_DIR holds what was measured with another teacher (`change`; `measured`), which this run does
    not read back: `how` to read it back, add --restart to discard it, or choose another --run-dir'
    ('rerun with --restart' to --resume, `resume`). Not 'what an interrupted run ... measured' (MEASURED_WITH):
    the files may be an earlier run's, finished (another recipe's, in the same run folder)."""
    restart = "rerun with --restart" if resume else "add --restart"
    return UserError(f"{run_dir} {MEASURED_WITH} another teacher ({change}; {measured}), "
                     f"which this run does not read back: {how} to read it back, {restart} to discard it, or "
                     "choose another --run-dir")


def check_measured_for_another(run_dir: Path, fingerprint: str, passes, teacher: dict | None = None,
                               resume: bool = False, calibration: dict | None = None,
                               config_by: tuple[str, str] = FLAG) -> None:
    """A plain rerun (no --resume, no --restart) in a run folder whose last run was interrupted before
    it saved a pass (runner_folders.check_run_folder refuses the others): a UserError where the folder holds,
    under the fingerprint that run recorded (measured by it or an earlier run), what this one, of another
    teacher or calibration (`fingerprint`), does not read back (`measured_so_far`, for the recipe's `passes`): as saved passes,
    what it measured is not left unread and never removed silently. Where the teacher identity the run recorded is not
    `teacher` (the loaded teacher's, teacher_identity's: its weights changed in place, the names being
    the same once check_measured_for_another_teacher passed them), it says so as --resume does
    (runner_teacher_id.teacher_change); the same teacher, 'another calibration', naming what differs
    (`calibration_change` against this run's `calibration`, calibration_keys'); else (an older record
    of the teacher, no `calibration`) 'another teacher or calibration'. `resume`: said to --resume over a
    run that saved nothing else (runner_prepare); `config_by`: how the config named now was given.
    A folder recording no fingerprint (an older dit-compress's, which marked
    no finished run either) is not refused."""
    before = recorded_fingerprint(run_dir)
    if before is None or before == fingerprint:
        return
    measured = measured_so_far(run_dir, before, None, list(passes))
    if not measured:
        return
    recorded = recorded_teacher(run_dir)
    if teacher is not None and recorded is not None and not older_checksum(recorded, teacher):
        if not same_teacher(recorded, teacher):
            raise measured_by_another(run_dir, teacher_change(recorded, teacher, config_by), measured,
                                      _how(recorded, teacher, resume), resume)
        if calibration is not None:
            raise measured_by_calibration(run_dir, calibration_change(run_record(run_dir).get(CALIBRATED), calibration),
                                          measured, resume)
    how, restart = ("rerun with that teacher and calibration and --resume", "rerun with --restart") if resume else \
        ("rerun with that teacher and calibration", "add --restart")
    raise UserError(f"{run_dir} {MEASURED_WITH} another teacher or calibration "
                    f"({measured}), which this run does not read back: {how} to read it back, {restart} to "
                    "discard it, or choose another --run-dir")


def measured_by_calibration(run_dir: Path, change: tuple[str, bool], measured: str, resume: bool) -> UserError:
    """'RUN_DIR holds what was measured with this teacher and another calibration (`change`:
    calibration_change's words; `measured`), which this run does not read back: rerun with that calibration
    to read it back (where `change` says it can), add --restart ...' (to --resume: `resume`)."""
    restart = "rerun with --restart" if resume else "add --restart"
    how = f"rerun with that calibration{' and --resume' if resume else ''} to read it back, "
    return UserError(f"{run_dir} {MEASURED_WITH} this teacher and another calibration "
                     f"({change[0]}; {measured}), which this run does not read back: {how if change[1] else ''}"
                     f"{restart} to discard it, or choose another --run-dir")


def run_fingerprint(run_dir: Path) -> str | None:
    """The teacher and calibration fingerprint (runner_resume.fingerprint) of the run that last started
    its passes in `run_dir`, keying the caches it wrote: the one it recorded (runner_stages.record_run),
    else, in a run folder of an older dit-compress that recorded none, `latest_fingerprint`'s guess.
    For a refusal before the teacher loads, when this run's fingerprint is not known yet."""
    recorded = recorded_fingerprint(run_dir)
    return recorded if recorded is not None else latest_fingerprint(run_dir)


def latest_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of what was measured last in `run_dir`: of the newest file in its svd caches
    (calib/<fingerprint>/) and teacher-sample caches (their about.json's), which the interrupted run
    wrote; None where there is none. A guess (a cache another teacher's run wrote may be newer), for
    run folders that record no fingerprint (`run_fingerprint`)."""
    run_dir, newest = Path(run_dir), {}
    for cache in (run_dir / "calib").glob("*"):
        newest[cache.name] = max(map(_written_ns, cache.rglob("*.pt")), default=0)
    for about in (run_dir / TEACHER_SAMPLES).glob(f"*/{SAMPLES_ABOUT}"):
        try:
            fp = json_read.read(about).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fp, str):
            written = max(map(_written_ns, [about, *about.parent.glob("shard-*.safetensors")]))
            newest[fp] = max(newest.get(fp, 0), written)
    return max(newest, key=newest.get, default=None)


def _written_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # removed meanwhile
        return 0
