"""Runs of several processes (torchrun / accelerate launch): rank 0 runs every pass and owns the run
folder; the other ranks (followers) join only the data-parallel passes (`Pass.data_parallel`:
distill). Rank 0 says it runs (`announce`, once it holds the run folder), then before each such
pass hands off (`hand_off`): it names the pass and the saved stage folder that holds its student
(None: a fresh copy of the teacher); a follower waits for that hand-off (`wait_for_hand_off`), loads
the student from it and runs the pass beside rank 0. After its last pass rank 0 hands off None: the
followers are done. The followers' answers to rank 0 (ready, refused, stopped) are runner_answers'.

Before, every rank ran every pass in the same run folder: calibration caches and output Fishers
were written by both at once (a crash on a rename, or one rank reading the other's half-made
sums: another student than a single process makes).

The hand-off file says whose it is: a follower takes only its own launch's (MASTER_ADDR:MASTER_PORT,
run id and restart count), from its own launcher on this host (the same parent process) or, on
another host, from a rank 0 that started about when it did and that it has seen alive (its file
changed while it watched: a static rendezvous gives a relaunch the same key, and the file an earlier
launch left, stopped, finished or killed, never changes); an earlier launch's file is never taken
for this one's. No lock is needed to read it (a file system that cannot
lock still runs several processes). Imports no torch."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from compress import json_read
from compress.errors import UserError
from compress.interrupts import stop_status
from compress.runner_pids import _process_start, alive, orphaned


class MainStopped(UserError):
    """Rank 0 of the launch stopped (its own message says why: an error, or a Ctrl-C): a follower
    ends without an error line of its own (cli leaves requested stops to rank 0), with the exit status
    rank 0 recorded for itself in its hand-off file (`status`: 128 + the signal that stopped it, 143 for
    a SIGTERM; its error's status), so every process of the launch says what happened, where a
    follower that took no signal itself said a Ctrl-C's 130. 1 where the file does not say (an error)."""

    exit_code = 1
    label = ""

    def __init__(self, message: str, status=None):
        super().__init__(message)
        if isinstance(status, int) and not isinstance(status, bool) and 0 < status < 256:
            self.exit_code = status


MAIN_STOPPED = "rank 0 of this launch stopped: see its message"


class PeerLost(UserError):
    """Another process of the launch ended without a word (killed, or its host went down) while this
    one needed it: one line naming it, never a collective's traceback."""

    exit_code = 1


# what a collective (gloo, NCCL) says when another process of its group ended under it
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crash",
              "NCCL communicator was aborted")


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another process of the launch ended."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _PEER_LOST)


TOKEN = uuid.uuid4().hex  # this process's: its hand-offs carry it
STARTED = _process_start()
HANDOFF = ".dit-compress.handoff"  # in the run folder, beside the lock
FIND_MAIN_S = 600.0  # how long a follower waits for rank 0 to announce itself
SAME_START_S = 600.0  # a launch's ranks start within this of each other (an older hand-off is stale)
HEARTBEAT_S = 5.0  # rank 0 touches its hand-off file this often while it runs
# a follower gives up on a rank 0 whose hand-off file it has seen unchanged this long (generous: a shared
# file system may show another host's changes a minute late, and a call that holds the GIL delays a beat)
STALE_S = 600.0


def launch_key() -> str | None:
    """The distributed launch this process is part of (torchrun and accelerate launch set these): its
    rendezvous address, port, run id and restart count (a restarted launch's workers are another
    launch); None for a plain run."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return None
    env = os.environ.get
    return f"{addr}:{port}/{env('TORCHELASTIC_RUN_ID', '')}/{env('TORCHELASTIC_RESTART_COUNT', '')}"


# what accelerate launch sets in every process it starts
ACCELERATE_ENV = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU")


def one_process_note(env=None) -> str | None:
    """A note where `accelerate launch` started this run as its one process though asked for several:
    its simple launcher (which it uses without a GPU, or with --cpu, whatever --num_processes says)
    sets MASTER_ADDR and MASTER_PORT for more than one process but starts one, without RANK or
    WORLD_SIZE (nor says so); None otherwise. `env`: os.environ."""
    env = os.environ if env is None else env
    if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")) or "RANK" in env or "WORLD_SIZE" in env \
            or not any(k in env for k in ACCELERATE_ENV) or any(k in env for k in SIZE_ENV[1:]):  # an MPI launcher's
        return None
    return ("note: accelerate launch started this run as one process (MASTER_ADDR and MASTER_PORT are set, RANK "
            "and WORLD_SIZE are not: its simple launcher, which it uses without a GPU or with --cpu whatever "
            "--num_processes says); for several processes on CPUs, start them with `accelerate launch --multi_gpu "
            "--num_processes N` or `torchrun --nproc_per_node N`")


# where a launcher gives this process's rank and the number of processes: torchrun and accelerate
# launch set RANK / WORLD_SIZE; an MPI launcher (mpirun, accelerate launch --mpirun) sets only its
# own, which accelerate reads in this order (accelerate.utils.environment)
RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _from_env(keys: tuple[str, ...], default: int, env=None) -> int:
    """The first of `keys` set (non-empty) in `env` (os.environ), as an int; `default` if none is."""
    env = os.environ if env is None else env
    return next((int(env[k]) for k in keys if env.get(k)), default)


def rank(env=None) -> int:
    """This process's rank in its launch (0 for a plain run)."""
    return _from_env(RANK_ENV, 0, env)


def world_size(env=None) -> int:
    """The number of processes of this launch (1 for a plain run)."""
    return _from_env(SIZE_ENV, 1, env)


def is_follower() -> bool:
    """A rank other than 0 of a distributed launch (RANK set; what WORLD_SIZE says aside)."""
    return rank() != 0


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (torchrun / accelerate launch set RANK), or a plain run."""
    return not is_follower()


def several_processes() -> bool:
    return world_size() > 1


def announce(run_dir: Path, about: dict | None = None) -> None:
    """Rank 0, once it holds the run folder (and again once it is prepared, with more `about`): the
    followers know it runs (a hand-off of no pass yet) and what it runs. A run folder it cannot write
    is left to `check_folders`, next, to say so."""
    try:
        hand_off(run_dir, -1, None, about)
    except OSError:
        pass


def hand_off(run_dir: Path, pass_index: int | None, stage: Path | None, about: dict | None = None) -> None:
    """Rank 0: the followers may run pass `pass_index` from the student saved in `stage` (None: a
    fresh copy of the teacher); `pass_index` None: no pass is left for them. Written atomically,
    with who wrote it (`main_of_launch` reads that) and `about` (`check_same_run` compares it)."""
    record = {"launch": launch_key(), "host": socket.gethostname(), "pid": os.getpid(), "ppid": os.getppid(),
              "since": STARTED, "token": TOKEN,
              "pass": pass_index, "stage": None if stage is None else str(Path(stage).resolve()), **(about or {})}
    _write(Path(run_dir) / HANDOFF, record)


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{HANDOFF}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


@contextmanager
def leading(run_dir: Path, about: dict):
    """Rank 0 of a launch, while it runs: announces itself, touches its hand-off file every
    HEARTBEAT_S (a follower on another host gives up on one it sees unchanged STALE_S: rank 0 was
    killed, or its host went down), and when it ends on an exception (an error, a Ctrl-C) marks the
    file stopped with the status it ends with, so the followers end at once, with that status, instead
    of waiting for a hand-off that never comes. When it ends without one (the run finished, the run
    folder still held), the hand-off file and the followers' answers go once every follower said it is
    done (runner_answers.remove_when_done)."""
    announce(run_dir, about)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(Path(run_dir) / HANDOFF, done), daemon=True)
    beat.start()
    try:
        yield
    except BaseException as e:
        _mark_stopped(Path(run_dir) / HANDOFF, exit_status(e))
        raise
    finally:
        done.set()
        beat.join()
    from compress.runner_answers import remove_when_done  # (which imports this module)

    remove_when_done(run_dir)


def _heartbeat(path: Path, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:  # gone or unwritable for a moment (a hand-off replacing it): the next beat
            pass


def exit_status(e: BaseException) -> int:
    """The status this process ends with on `e` (as cli.main returns it): a stop signal's 128 + its
    number (interrupts.stop_status), an error's own `exit_code`, else 1."""
    if isinstance(e, KeyboardInterrupt):
        return stop_status()
    code = getattr(e, "exit_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


def _mark_stopped(path: Path, status: int) -> None:
    """This process's hand-off file, marked stopped, with the exit status it ends with (a file of
    another process is left alone)."""
    record = read_json(path)
    if record is None or record.get("token") != TOKEN:
        return
    try:
        _write(path, dict(record, stopped=True, status=status))
    except OSError:  # the followers see it stale instead
        pass


def wait_for_hand_off(run_dir: Path, after: int, poll: float = 0.5, find_main_s: float = FIND_MAIN_S,
                      main: str | None = None) -> dict:
    """A follower: rank 0's next hand-off ({"pass": index or None, "stage": folder or None}) for a
    pass after `after` (`wait_for_main`)."""
    return wait_for_main(run_dir, lambda got: got["pass"] is None or got["pass"] > after, poll, find_main_s, main)


def wait_for_main(run_dir: Path, ready, poll: float = 0.5, find_main_s: float = FIND_MAIN_S,
                  main: str | None = None) -> dict:
    """A follower: the first record rank 0 of its launch writes for which ready(record) holds; once
    one was taken (or `main`, the token of the rank 0 it follows, given), only that rank 0's. A
    UserError when this process is not part of a launch, when rank 0 has not announced itself in
    the run folder within `find_main_s`, or when its file stays unchanged STALE_S (rank 0 killed, on
    another host); what `main_gone` raises once it follows one (stopped, killed here, or its file
    another's)."""
    run_dir, path = Path(run_dir), Path(run_dir) / HANDOFF
    key = launch_key()
    if key is None:
        raise UserError(f"RANK is {rank()} but MASTER_ADDR / MASTER_PORT are not set: start several processes "
                        "with torchrun (or accelerate launch), whose rank 0 runs the passes")
    start = time.monotonic()
    # (the hand-off file's stat, when this process saw it change: never the file's time, another host's clock)
    seen = (None, start)
    first, live = {}, set()  # token -> the file's stat when first read; tokens seen to change since
    while True:
        before, record, after = _stat(path), read_json(path), _stat(path)
        if before != after:  # replaced while read: look again
            continue
        token = record.get("token") if record else None
        if first.setdefault(token, after) != after:
            live.add(token)
        got = main_of_launch(record, key, live=token in live)
        main = token if main is None and got is not None else main  # the rank 0 it follows from now on
        if main is not None and record is not None and record.get("launch") == key:
            lost = main_gone(record, main)  # stopped, killed, or another's file now: said one way, here alone
            if lost is not None:
                raise lost
        if got is not None and token == main:
            if ready(got):
                return got
            seen = seen if after == seen[0] else (after, time.monotonic())  # on this host's clock
            if time.monotonic() - seen[1] > STALE_S:
                raise UserError(f"rank 0 of this launch ({key}) has not touched {run_dir / HANDOFF} in "
                                f"{STALE_S / 60:.0f} min: it stopped (see its message on its host) or "
                                "cannot write the run folder")
        elif time.monotonic() - start > find_main_s:
            did = "stopped answering" if main else "has not started"  # `main`: it had answered
            raise UserError(f"rank 0 of this launch ({key}) {did} in the run folder {run_dir} in "
                            f"{find_main_s / 60:.0f} min (it may have stopped: see its message){_left_running(record)}")
        time.sleep(poll)


def _left_running(record: dict | None) -> str:
    """'; workers of an earlier launch still run here (its rank 0: pid N) ...' where the hand-off file
    is theirs (`orphaned`: their launcher was killed), else ''."""
    if not record or record.get("host") != socket.gethostname() or not alive(record.get("pid")) \
            or not orphaned(record):
        return ""
    return (f"; workers of an earlier launch still run here (its rank 0: pid {record['pid']}, whose launcher "
            "ended): stop them before starting the launch again")


def main_gone(record: dict, main: str) -> UserError | None:
    """What a hand-off `record` of its launch's key says of the rank 0 a follower follows (token
    `main`), as the error to raise (`wait_for_main`; `runner_answers.ended` where a collective failed),
    or None while that rank 0 runs (or, on another host, none can tell): MainStopped when it marked it
    stopped (an error or a Ctrl-C: its own message says which); PeerLost when the file is now another
    process's (a relaunch on the same static port: not its rank 0) or when it ended without a word
    (killed: its pid gone on this host before it handed off its last pass)."""
    pid = record.get("pid")
    if record.get("token") != main:
        return PeerLost(f"rank 0 of this launch ({launch_key()}) ended: another process (pid {pid}) now writes "
                        "its hand-off file, a relaunch with the same rendezvous; stop this process and start every "
                        "node of the launch again")
    if record.get("stopped"):  # (taken or not: a stopped rank 0 of another launcher is gone a moment later)
        return MainStopped(MAIN_STOPPED, record.get("status"))
    if record.get("host") == socket.gethostname() and not alive(pid) and record.get("pass", -1) is not None:
        return PeerLost(f"rank 0 of this launch (pid {pid}) ended without a word (killed?): start the launch "
                        "again with --resume to continue from what its run folder keeps")
    return None


def _stat(path: Path) -> tuple | None:
    """What changes when a file is touched or replaced (None: not there)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


def main_of_launch(record: dict | None, key: str, live: bool = True) -> dict | None:
    """The hand-off `record` when rank 0 of the launch `key` wrote it, else None: on this host from
    this process's own launcher (its parent; or, under another launcher, a live rank 0 that started
    about when this process did); on another host, one that started about when this process did
    and that this process saw alive (`live`: its file changed while it watched; a relaunch of a
    static rendezvous has the same key, and an earlier launch's file is stopped or still)."""
    if not isinstance(record, dict) or record.get("launch") != key or not record.get("token") \
            or "pass" not in record:
        return None
    since = record.get("since")
    near = isinstance(since, (int, float)) and abs(since - STARTED) <= SAME_START_S
    if record.get("host") != socket.gethostname():
        return record if near and live else None
    if record.get("ppid") == os.getppid() or (near and alive(record.get("pid")) and not orphaned(record)):
        return record
    return None  # an earlier launch's: killed before it handed off its last pass, or its launcher was


def read_json(path: Path) -> dict | None:
    try:
        got = json_read.read(path)
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None
