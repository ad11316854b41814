"""Runs of several processes (torchrun / accelerate launch): rank 0 runs every pass and owns the run
folder; the other ranks (followers) join only the data-parallel passes (`Pass.data_parallel`:
distill). Before each such pass rank 0 hands off (`hand_off`): it names the pass and the saved stage
folder that holds its student (None: a fresh copy of the teacher), and a follower waits for that
hand-off (`wait_for_hand_off`), loads the student from it and runs the pass beside rank 0. After its
last pass rank 0 hands off None: the followers are done.

Before, every rank ran every pass in the same run folder: calibration caches and output Fishers
were written by both at once (a crash on a rename, or one rank reading the other's half-made
sums: another student than a single process makes).

A follower knows rank 0 of its own launch by the run folder's lock record (runner_lock): the same
launch (MASTER_ADDR:MASTER_PORT and run id), alive (its pid, where on this host; taken around the
follower's own start). The hand-off carries rank 0's token, so an earlier launch's hand-off file is
never taken for this one's. Imports no torch."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from compress.errors import UserError
from compress.runner_lock import LOCK, STARTED, TOKEN, launch_key

HANDOFF = ".dit-compress.handoff"  # in the run folder, beside the lock
FIND_MAIN_S = 600.0  # how long a follower waits for rank 0 to take the run folder's lock
SAME_START_S = 600.0  # a launch's ranks start within this of each other (an older lock record is stale)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_follower() -> bool:
    """A rank other than 0 of a distributed launch (RANK set; what WORLD_SIZE says aside)."""
    return rank() != 0


def several_processes() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def hand_off(run_dir: Path, pass_index: int | None, stage: Path | None) -> None:
    """Rank 0: the followers may run pass `pass_index` from the student saved in `stage` (None: a
    fresh copy of the teacher); `pass_index` None: no pass is left for them. Written atomically."""
    record = {"token": TOKEN, "pass": pass_index, "stage": None if stage is None else str(Path(stage).resolve())}
    path = Path(run_dir) / HANDOFF
    tmp = path.with_name(f"{HANDOFF}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)


def wait_for_hand_off(run_dir: Path, after: int, poll: float = 0.5, find_main_s: float = FIND_MAIN_S) -> dict:
    """A follower: rank 0's next hand-off ({"pass": index or None, "stage": folder or None}) for a
    pass after `after`. A UserError when this process is not part of a launch, when rank 0 of its
    launch does not take the run folder within `find_main_s`, or stops before the hand-off."""
    run_dir = Path(run_dir)
    key = launch_key()
    if key is None:
        raise UserError(f"RANK is {rank()} but MASTER_ADDR / MASTER_PORT are not set: start several processes "
                        "with torchrun (or accelerate launch), whose rank 0 runs the passes")
    start, token = time.monotonic(), None
    while True:
        got = _read_json(run_dir / HANDOFF)
        if token is not None and got and got.get("token") == token and (got["pass"] is None or got["pass"] > after):
            return got
        main = main_of_launch(_read_json(run_dir / LOCK), key)
        if token is None and main is not None:
            token = main["token"]
            continue  # its hand-off may be there already
        if token is not None and (main is None or main["token"] != token):
            raise UserError(f"rank 0 of this launch stopped before handing pass {after + 2 if after >= 0 else 1}"
                            f"'s student over (it no longer holds {run_dir}): see its message")
        if token is None and time.monotonic() - start > find_main_s:
            raise UserError(f"rank 0 of this launch ({key}) has not taken the run folder {run_dir} in "
                            f"{find_main_s / 60:.0f} min (it may have stopped, or the run folder's file system "
                            "cannot lock); see its message")
        time.sleep(poll)


def main_of_launch(record: dict | None, key: str) -> dict | None:
    """The lock holder `record` when it is rank 0 of the launch `key`, alive, with a token; else None."""
    if not isinstance(record, dict) or record.get("launch") != key or not record.get("token"):
        return None
    since = record.get("since")
    if not isinstance(since, (int, float)) or abs(since - STARTED) > SAME_START_S:
        return None  # an earlier launch's at the same address, killed before it removed its lock file
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return None
    return record


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None
