"""Which entries of a run folder's stages/ and distill*/checkpoints/ a run wrote (`OWN`, and a file a
newer dit-compress adds there: `WRITTEN_BY`), told from a user's own files, which a run without --resume
would replace: `check_own_run_folder` refuses those. Imports no torch (runner_folders, which calls it)."""

from __future__ import annotations

import re
from pathlib import Path

from compress import json_read
from compress.errors import UserError
from compress.runner_resume import FINISHED, RUN_RECORD


# what a run writes, and a fresh start or --restart replaces: stages/<i>-<pass>/ (and the temp
# folders `atomic_folder` writes it in, and sets the one it replaces aside in), stages/finished.json and
# stages/run.json (and .run.tmp-PID.json, which importance.write_atomically writes it as: left by a kill),
# distill*/checkpoints/step-N (and tmp-step-N)
RECORD_TMP = r"\." + re.escape(Path(RUN_RECORD).stem) + r"\.tmp-\d+" + re.escape(Path(RUN_RECORD).suffix)
OWN = {"stages": re.compile(r"\.?\d+-\w+(\.(tmp|old)-\w+)?|" + re.escape(FINISHED) + "|" + re.escape(RUN_RECORD)
                            + "|" + RECORD_TMP),
       "checkpoints": re.compile(r"(tmp-)?step-\d+")}
NEWER = re.compile(r"[a-z0-9_]+\.json")  # stages/ files a newer dit-compress may add, as run.json was added
# what a JSON file dit-compress writes in a run folder's stages/ holds, saying who wrote it: a file a newer
# version adds there is told from a user's own by it (`a_newer_runs`); {**WRITTEN_BY, ...} in its writers
WRITTEN_BY = {"written_by": "dit-compress"}


def check_own_run_folder(run_dir: Path) -> None:
    """A UserError naming the first file or folder in the run folder's stages/ or
    distill*/checkpoints/ (which a run without --resume replaces) that dit-compress did not write
    there: a folder the user owns is never emptied silently."""
    found = foreign_in_run_folder(run_dir)
    if found is not None:
        raise UserError(f"run folder {run_dir}: {found} was not written by dit-compress, and a run replaces "
                        f"what is in its stages/ and distill*/checkpoints/; move it, or choose another --run-dir")


def foreign_in_run_folder(run_dir: Path) -> Path | None:
    """The first entry (sorted) of `run_dir`'s stages/ or distill*/checkpoints/ whose name is not one
    a run writes there (OWN), or a file where those folders go; None when there is none."""
    run_dir = Path(run_dir)
    for folder, kind in [(run_dir / "stages", "stages"),
                         *((d, "checkpoints") for d in sorted(run_dir.glob("distill*/checkpoints")))]:
        if not (folder.exists() or folder.is_symlink()):
            continue
        if folder.is_symlink() or not folder.is_dir():
            return folder
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return None  # check_writable or the run says what is wrong
        found = next((entry for entry in entries if not written_by_a_run(entry, kind)
                      and not (kind == "stages" and a_newer_runs(entry, entries))), None)
        if found is not None:
            return found
    return None


def written_by_a_run(entry: Path, kind: str) -> bool:
    """Whether `entry` of a run folder's stages/ or checkpoints/ (`kind`) is named as a run names
    what it writes there (OWN): a folder, or the file stages/finished.json or stages/run.json (or its temp file)."""
    if entry.is_symlink() or not OWN[kind].fullmatch(entry.name):
        return False
    return entry.is_file() if entry.name in (FINISHED, RUN_RECORD) or re.fullmatch(RECORD_TMP, entry.name) \
        else entry.is_dir()


def a_newer_runs(entry: Path, entries: list[Path]) -> bool:
    """Whether `entry` of stages/ is a file a newer dit-compress wrote there: a JSON file (NEWER)
    that says so (`says_written_by_us`) beside what a run surely wrote (`marks_a_run`). dit-compress
    before stages/run.json refused it as a user's file, so a run folder a newer version used could be
    neither rerun nor resumed. A user's notes.json (it says nothing of who wrote it) is refused, even
    beside a run's stages: a rerun would delete it with them."""
    return (not entry.is_symlink() and entry.is_file() and NEWER.fullmatch(entry.name) is not None
            and says_written_by_us(entry) and any(map(marks_a_run, entries)))


def says_written_by_us(path: Path, limit: int = 1 << 20) -> bool:
    """Whether the file `path` is a JSON object holding WRITTEN_BY's key and value (read where it is
    under `limit` bytes: a run's records are small)."""
    try:
        if path.stat().st_size > limit:
            return False
        data = json_read.parse(path.read_bytes())
    except (OSError, ValueError):
        return False
    key, value = next(iter(WRITTEN_BY.items()))
    return isinstance(data, dict) and data.get(key) == value


def marks_a_run(entry: Path) -> bool:
    """An entry of stages/ only a run writes: finished.json, run.json, or a stage folder with its state.json."""
    return written_by_a_run(entry, "stages") and (entry.is_file() or (entry / "state.json").is_file())
