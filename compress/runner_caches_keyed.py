"""What each fingerprint keying a run folder's caches (calib/<fingerprint>/, the teacher samples) was measured
under, as the runs that keyed them recorded in stages/run.json (runner_stages.record_run): the statistics version
(STATS_VERSION) and dit-compress's version, both of which key them with the teacher and calibration; and the words
of runner_caches' note of the caches of another key a plain rerun keeps (`of_another_in_words`), which name a new
dit-compress where that made them unreadable. Moved out of runner_caches. Imports no torch."""

from __future__ import annotations

from pathlib import Path

import compress
from compress import json_read
from compress.runner_caches import bytes_in_words, names_of, size_of
from compress.runner_measured import recorded_statistics, recorded_version
from compress.runner_resume import SAMPLES_ABOUT, STATISTICS_OF, TEACHER_SAMPLES, run_record, statistics_version

# in RUN_RECORD (runner_stages.record_run): {fingerprint: the STATS_VERSION the run that keyed its caches
# measured under}, each run's added to those recorded before (`measured_under`)
MEASURED_UNDER = "statistics_of"
VERSION_OF = "version_of"  # in RUN_RECORD: likewise {fingerprint: its run's dit-compress version} (`versions_under`)


def keyed_under(run_dir: Path) -> dict:
    """What the runs that keyed the caches in `run_dir` recorded of them, {MEASURED_UNDER: `measured_under`,
    VERSION_OF: `versions_under`}: read before a fresh start deletes stages/, carried over by `with_this_run`."""
    return {MEASURED_UNDER: measured_under(run_dir), VERSION_OF: versions_under(run_dir)}


def with_this_run(before: dict, fingerprint: str) -> dict:
    """`keyed_under`'s `before` with this dit-compress's STATS_VERSION and version added under `fingerprint`,
    the run's: the entries of its RUN_RECORD (runner_stages.record_run)."""
    return {MEASURED_UNDER: {**before.get(MEASURED_UNDER, {}), fingerprint: statistics_version()},
            VERSION_OF: {**before.get(VERSION_OF, {}), fingerprint: compress.__version__}}


def measured_under(run_dir: Path) -> dict[str, int]:
    """{fingerprint: the STATS_VERSION its caches in `run_dir` were measured under}, as the runs that keyed
    them recorded (MEASURED_UNDER in the run record; the record's own fingerprint by the version its
    calibration record says, runner_measured.recorded_statistics, where an older record holds no
    MEASURED_UNDER); {} where none is recorded."""
    return _recorded(run_dir, MEASURED_UNDER, int, recorded_statistics(run_dir))


def versions_under(run_dir: Path) -> dict[str, str]:
    """{fingerprint: the dit-compress version (compress.__version__, which keys the caches too) of the run that
    keyed its caches in `run_dir`}, as `measured_under` (VERSION_OF; runner_measured.recorded_version)."""
    return _recorded(run_dir, VERSION_OF, str, recorded_version(run_dir))


def _recorded(run_dir: Path, key: str, kind: type, own) -> dict:
    """The run record's {fingerprint: value of `kind`} under `key`, with its own fingerprint's `own` where
    it holds none for it (None: not known)."""
    record = run_record(run_dir)
    known = record.get(key)
    known = {k: v for k, v in known.items() if isinstance(v, kind)} if isinstance(known, dict) else {}
    fingerprint = record.get("fingerprint")
    if isinstance(fingerprint, str) and own is not None:
        known.setdefault(fingerprint, own)
    return known


def of_another_in_words(another: list[Path], run_dir: Path) -> str:
    """`of_another`'s caches in words, their bytes and names: '1.2 MiB of caches measured with other statistics
    (dit-compress's statistics 2, now 3: calib/a)' for those keyed by a fingerprint whose run recorded another
    STATS_VERSION (`measured_under`: a new dit-compress, not another teacher or calibration, made them
    unreadable), '... of caches of another dit-compress version (0.1.0, now 0.2.0: calib/b)' for those whose run
    recorded the same STATS_VERSION under another dit-compress version (`versions_under`; it keys them too),
    '... of caches of another teacher or calibration (calib/c)' for the others, all joined by 'and'."""
    under = keyed_under(run_dir)
    causes = {p: _unread_by(under, keyed_by(p, run_dir)) for p in another}
    said = []
    for cause in sorted(set(causes.values())):
        these = [p for p in another if causes[p] == cause]
        said.append(f"{bytes_in_words(sum(size_of(p) for p in these))} of caches "
                    f"{_cause_in_words(cause, names_of(these, run_dir))}")
    return " and ".join(said)


def _unread_by(under: dict, fingerprint: str | None) -> tuple:
    """Why a cache keyed by `fingerprint` is of another key than this run's (`under`: `keyed_under`'s), as
    `of_another_in_words` sorts them: (0, its STATS_VERSION) another statistics version, (1, its dit-compress
    version) another version of the same statistics, (2, '') neither recorded so: another teacher or calibration."""
    statistics, version = under[MEASURED_UNDER].get(fingerprint), under[VERSION_OF].get(fingerprint)
    if statistics is not None and statistics != statistics_version():
        return 0, statistics
    if version is not None and version != compress.__version__:
        return 1, version
    return 2, ""


def _cause_in_words(cause: tuple, names: str) -> str:
    """`_unread_by`'s `cause` of the caches `names` in words."""
    if cause[0] == 0:
        return f"measured with other statistics ({STATISTICS_OF} {cause[1]}, now {statistics_version()}: {names})"
    if cause[0] == 1:
        return f"of another dit-compress version ({cause[1]}, now {compress.__version__}: {names})"
    return f"of another teacher or calibration ({names})"


def keyed_by(path: Path, run_dir: Path) -> str | None:
    """The fingerprint that keys the cache `path` of `of_another`'s: calib/<fingerprint>/'s name, a teacher
    samples folder's about.json's; None for sampled inputs and calls (keyed by the teacher and prompts)."""
    if path.parent == Path(run_dir) / "calib":
        return path.name
    if path.parent == Path(run_dir) / TEACHER_SAMPLES:
        try:
            about = json_read.read(path / SAMPLES_ABOUT)
        except (OSError, ValueError):
            return None
        return about.get("fingerprint") if isinstance(about, dict) else None
    return None
