"""Runs of several processes (torchrun / accelerate launch): rank 0 runs every pass and owns the run
folder; the other ranks (followers) join only the data-parallel passes (`Pass.data_parallel`:
distill). Rank 0 says it runs (`announce`, once it holds the run folder), then before each such
pass hands off (`hand_off`): it names the pass and the saved stage folder that holds its student
(None: a fresh copy of the teacher); a follower waits for that hand-off (`wait_for_hand_off`), loads
the student from it and runs the pass beside rank 0. After its last pass rank 0 hands off None: the
followers are done.

Before, every rank ran every pass in the same run folder: calibration caches and output Fishers
were written by both at once (a crash on a rename, or one rank reading the other's half-made
sums: another student than a single process makes).

The hand-off file says whose it is: a follower takes only its own launch's (MASTER_ADDR:MASTER_PORT,
run id and restart count), from its own launcher on this host (the same parent process) or, on
another host, from a rank 0 that started about when it did; an earlier launch's file left by a
killed run is never taken for this one's. No lock is needed to read it (a file system that cannot
lock still runs several processes). Imports no torch."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from compress.errors import UserError


class MainStopped(UserError):
    """Rank 0 of the launch stopped (its own message says why: an error, or a Ctrl-C): a follower
    ends without an error line of its own (cli leaves requested stops to rank 0)."""

    exit_code = 130
    label = ""


def _process_start() -> float:
    """When this process started (Linux: from /proc, so the ranks of a launch, started together,
    agree whatever their imports took); elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


TOKEN = uuid.uuid4().hex  # this process's: its hand-offs carry it
STARTED = _process_start()
HANDOFF = ".dit-compress.handoff"  # in the run folder, beside the lock
FIND_MAIN_S = 600.0  # how long a follower waits for rank 0 to announce itself
SAME_START_S = 600.0  # a launch's ranks start within this of each other (an older hand-off is stale)


def launch_key() -> str | None:
    """The distributed launch this process is part of (torchrun and accelerate launch set these): its
    rendezvous address, port, run id and restart count (a restarted launch's workers are another
    launch); None for a plain run."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return None
    env = os.environ.get
    return f"{addr}:{port}/{env('TORCHELASTIC_RUN_ID', '')}/{env('TORCHELASTIC_RESTART_COUNT', '')}"


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_follower() -> bool:
    """A rank other than 0 of a distributed launch (RANK set; what WORLD_SIZE says aside)."""
    return rank() != 0


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (torchrun / accelerate launch set RANK), or a plain run."""
    return not is_follower()


def several_processes() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def announce(run_dir: Path) -> None:
    """Rank 0, once it holds the run folder: the followers know it runs (a hand-off of no pass yet).
    A run folder it cannot write is left to `check_folders`, next, to say so."""
    try:
        hand_off(run_dir, -1, None)
    except OSError:
        pass


def hand_off(run_dir: Path, pass_index: int | None, stage: Path | None) -> None:
    """Rank 0: the followers may run pass `pass_index` from the student saved in `stage` (None: a
    fresh copy of the teacher); `pass_index` None: no pass is left for them. Written atomically,
    with who wrote it (`main_of_launch` reads that)."""
    record = {"launch": launch_key(), "host": socket.gethostname(), "pid": os.getpid(), "ppid": os.getppid(),
              "since": STARTED, "token": TOKEN,
              "pass": pass_index, "stage": None if stage is None else str(Path(stage).resolve())}
    path = Path(run_dir) / HANDOFF
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{HANDOFF}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)


def wait_for_hand_off(run_dir: Path, after: int, poll: float = 0.5, find_main_s: float = FIND_MAIN_S) -> dict:
    """A follower: rank 0's next hand-off ({"pass": index or None, "stage": folder or None}) for a
    pass after `after`. A UserError when this process is not part of a launch, when rank 0 of its
    launch has not announced itself in the run folder within `find_main_s`, or (on this host) has
    stopped before the hand-off."""
    run_dir = Path(run_dir)
    key = launch_key()
    if key is None:
        raise UserError(f"RANK is {rank()} but MASTER_ADDR / MASTER_PORT are not set: start several processes "
                        "with torchrun (or accelerate launch), whose rank 0 runs the passes")
    start = time.monotonic()
    while True:
        got = main_of_launch(_read_json(run_dir / HANDOFF), key)
        if got is not None:
            if got["pass"] is None or got["pass"] > after:
                return got
            if got.get("host") == socket.gethostname() and not _alive(got.get("pid")):
                raise MainStopped("rank 0 of this launch stopped before handing over the student of its next "
                                  "distill pass: see its message")
        elif time.monotonic() - start > find_main_s:
            raise UserError(f"rank 0 of this launch ({key}) has not started in the run folder {run_dir} in "
                            f"{find_main_s / 60:.0f} min (it may have stopped: see its message)")
        time.sleep(poll)


def main_of_launch(record: dict | None, key: str) -> dict | None:
    """The hand-off `record` when rank 0 of the launch `key` wrote it, else None: on this host from
    this process's own launcher (its parent; or, under another launcher, a live rank 0 that started
    about when this process did); on another host, one that started about when this process did."""
    if not isinstance(record, dict) or record.get("launch") != key or not record.get("token") \
            or "pass" not in record:
        return None
    since = record.get("since")
    near = isinstance(since, (int, float)) and abs(since - STARTED) <= SAME_START_S
    if record.get("host") != socket.gethostname():
        return record if near else None
    if record.get("ppid") == os.getppid() or (near and _alive(record.get("pid"))):
        return record
    return None  # an earlier launch's, killed before it handed off its last pass
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
