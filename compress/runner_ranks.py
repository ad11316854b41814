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

from compress.errors import UserError
from compress.runner_ranks_words import WORDS, short as _short


class MainStopped(UserError):
    """Rank 0 of the launch stopped (its own message says why: an error, or a Ctrl-C): a follower
    ends without an error line of its own (cli leaves requested stops to rank 0)."""

    exit_code = 130
    label = ""


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
    tmp.write_text(json.dumps(record, default=str) + "\n")
    tmp.replace(path)


@contextmanager
def leading(run_dir: Path, about: dict):
    """Rank 0 of a launch, while it runs: announces itself, touches its hand-off file every
    HEARTBEAT_S (a follower on another host gives up on one it sees unchanged STALE_S: rank 0 was
    killed, or its host went down), and when it ends on an exception (an error, a Ctrl-C) marks the
    file stopped, so the followers end at once instead of waiting for a hand-off that never comes."""
    announce(run_dir, about)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(Path(run_dir) / HANDOFF, done), daemon=True)
    beat.start()
    try:
        yield
    except BaseException:
        _mark_stopped(Path(run_dir) / HANDOFF)
        raise
    finally:
        done.set()
        beat.join()


def _heartbeat(path: Path, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:  # gone or unwritable for a moment (a hand-off replacing it): the next beat
            pass


def _mark_stopped(path: Path) -> None:
    """This process's hand-off file, marked stopped (a file of another process is left alone)."""
    record = _read_json(path)
    if record is None or record.get("token") != TOKEN:
        return
    try:
        _write(path, dict(record, stopped=True))
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
    another host); MainStopped when rank 0 marked it stopped or (on this host) has stopped; PeerLost
    when the rank 0 it follows, on this host, ended without a word (killed) or its file is another's."""
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
        before, record, after = _stat(path), _read_json(path), _stat(path)
        if before != after:  # replaced while read: look again
            continue
        token = record.get("token") if record else None
        if first.setdefault(token, after) != after:
            live.add(token)
        got = main_of_launch(record, key, live=token in live)
        if main is not None and record is not None and record.get("launch") == key:
            _check_followed(record, main, key)
        if got is not None and main in (None, token):
            main = token
            if got.get("stopped"):  # it ended on an error or a Ctrl-C (`leading`)
                raise MainStopped("rank 0 of this launch stopped: see its message")
            if ready(got):
                return got
            if got.get("host") == socket.gethostname() and not _alive(got.get("pid")):
                raise MainStopped("rank 0 of this launch stopped before handing over the student of its next "
                                  "distill pass: see its message")
            seen = seen if after == seen[0] else (after, time.monotonic())  # on this host's clock
            if time.monotonic() - seen[1] > STALE_S:
                raise UserError(f"rank 0 of this launch ({key}) has not touched {run_dir / HANDOFF} in "
                                f"{STALE_S / 60:.0f} min: it stopped (see its message on its host) or "
                                "cannot write the run folder")
        elif time.monotonic() - start > find_main_s:
            did = "stopped answering" if main else "has not started"  # `main`: it had answered
            raise UserError(f"rank 0 of this launch ({key}) {did} in the run folder {run_dir} in "
                            f"{find_main_s / 60:.0f} min (it may have stopped: see its message)")
        time.sleep(poll)


def _check_followed(record: dict, main: str, key: str) -> None:
    """A follower, reading a hand-off of its launch's key: MainStopped when the rank 0 it follows
    (token `main`) marked it stopped; PeerLost when that rank 0 ended without a word (killed: its pid
    gone on this host, where `main_of_launch` takes no record of another launcher's dead process), or
    when the file is now another process's (a relaunch on the same static port: not its rank 0)."""
    if record.get("token") != main:
        raise PeerLost(f"rank 0 of this launch ({key}) ended: another process (pid {record.get('pid')}) now "
                       "writes its hand-off file, a relaunch with the same rendezvous; stop this process and "
                       "start every node of the launch again")
    if record.get("stopped"):  # (taken or not: a stopped rank 0 of another launcher is gone a moment later)
        raise MainStopped("rank 0 of this launch stopped: see its message")
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")) and record.get("pass", -1) is not None:
        raise PeerLost(f"rank 0 of this launch (pid {record.get('pid')}) ended without a word (killed?): start the "
                       "launch again with --resume to continue from what its run folder keeps")


def _stat(path: Path) -> tuple | None:
    """What changes when a file is touched or replaced (None: not there)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


def check_same_run(run_dir: Path, about: dict, step: str, poll: float = 0.5, main: str | None = None) -> str:
    """A follower, before it computes: waits for a record of rank 0 that carries every key of
    `about` and refuses, in one line naming the first difference, when rank 0's differs. Either way
    it answers rank 0 (`answer`: ready for `step`, or stopped and why): rank 0 waits for that before
    a data-parallel pass, since it could not tell a refusing follower from a slow one there. The
    token of that rank 0 (the one to follow: `main`, once known)."""
    # a rank 0 of an older dit-compress writes no `version`: said at once, not after STALE_S
    got = wait_for_main(run_dir, lambda record: all(k in record for k in about) or "version" not in record, poll,
                        main=main)
    if "version" not in got:
        refusal = (f"rank {rank()} runs dit-compress {about.get('version', '')} and rank 0 an older one: every "
                   "process of a launch must run the same version").replace("  ", " ")
        answer(run_dir, got["token"], stopped=refusal)
        raise UserError(refusal)
    for k, mine in about.items():
        theirs, mine = got[k], json.loads(json.dumps(mine, default=str))  # as rank 0's went through the file
        if theirs != mine:
            said = WORDS[k](theirs, mine) if k in WORDS else f"{k} is {_short(theirs)} on rank 0, {_short(mine)} here"
            refusal = (f"rank {rank()} does not run what rank 0 runs ({said}): every process of a launch must "
                       "run the same recipe with the same --set, --teacher, --teacher-config and --resume, and "
                       "see the same teacher and calibration files")
            answer(run_dir, got["token"], stopped=refusal)
            raise UserError(refusal)
    answer(run_dir, got["token"], ready=step)
    return got["token"]


ANSWER = ".dit-compress.rank"  # + "-N": in the run folder, follower N's answer to rank 0
PREPARED = "prepared"  # the step of a follower ready to run the data-parallel passes
FIND_FOLLOWERS_S = 1800.0  # how long rank 0 waits for the followers' answers (a process group's own wait)


def answer(run_dir: Path, main: str, **how) -> None:
    """A follower to rank 0 (whose token is `main`: never an earlier launch's rank 0): `ready` (the
    step it reached) or `stopped` (why, in one line). A run folder it cannot write leaves rank 0 to
    wait FIND_FOLLOWERS_S, and say so."""
    record = {"main": main, "token": TOKEN, "rank": rank(), "host": socket.gethostname(), "pid": os.getpid(), **how}
    path = Path(run_dir) / f"{ANSWER}-{rank()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
    except OSError:
        pass


@contextmanager
def following(run_dir: Path):
    """A follower while it runs: when it ends on an exception after answering rank 0, its answer
    says it stopped and why, so rank 0 stops instead of waiting for it; on a requested stop (a Ctrl-C,
    a stop signal: the whole launch gets it; rank 0's stop) that it was interrupted, which is no
    failure of this rank to report; nothing where a collective lost another process (`ended` names it)."""
    try:
        yield
    except BaseException as e:
        record = _read_json(Path(run_dir) / f"{ANSWER}-{rank()}")
        # (a collective that lost another process: that one's end, not this one's)
        if record is not None and record.get("token") == TOKEN and not record.get("stopped") and not peer_lost(e):
            if _requested(e):
                answer(run_dir, record["main"], interrupted=True)
            else:
                answer(run_dir, record["main"], stopped=next((line for line in str(e).splitlines() if line.strip()),
                                                             type(e).__name__))
        raise


def _requested(e: BaseException) -> bool:
    """A stop asked for (a Ctrl-C, a stop signal, max_steps_this_run, rank 0's stop: UserErrors
    without a label), not an error."""
    return isinstance(e, KeyboardInterrupt) or (isinstance(e, UserError) and e.label == "")


def wait_for_followers(run_dir: Path, poll: float = 0.5, limit_s: float | None = None) -> None:
    """Rank 0, before it hands off a data-parallel pass: every follower answered that it is ready
    (`PREPARED`); a one-line UserError when one stopped (`check_followers`) or when some have not
    answered within `limit_s` (default FIND_FOLLOWERS_S: a node whose --run-dir is another folder)."""
    limit_s = FIND_FOLLOWERS_S if limit_s is None else limit_s
    start = time.monotonic()
    while True:
        got = check_followers(run_dir)
        gone = [r for r, a in sorted(got.items()) if a.get("interrupted")]
        if gone:
            raise UserError(f"rank {gone[0]} of this launch was interrupted (a Ctrl-C or a stop signal) before a "
                            "data-parallel pass: start the launch again with --resume")
        waiting = [r for r in _followers() if got.get(r, {}).get("ready") != PREPARED]
        if not waiting:
            return
        if time.monotonic() - start > limit_s:
            raise UserError(f"rank {', '.join(map(str, waiting))} of this launch did not answer in {run_dir} in "
                            f"{limit_s / 60:.0f} min: every node must see the same --run-dir (see their messages)")
        time.sleep(poll)


def check_followers(run_dir: Path) -> dict:
    """Rank 0, without waiting: the followers' answers to it so far {rank: answer}; a one-line
    UserError when one stopped (a refusal says why), so rank 0 stops before it computes more."""
    got = {r: _read_json(Path(run_dir) / f"{ANSWER}-{r}") for r in _followers()}
    got = {r: a for r, a in got.items() if a is not None and a.get("main") == TOKEN}  # to this process
    for r, a in sorted(got.items()):
        if a.get("stopped"):
            raise UserError(f"rank {r} of this launch stopped: {a['stopped']}")
    return got


def ended(run_dir: Path) -> str:
    """Who of the launch ended, in words, where a collective failed (`peer_lost`): rank 0 names a
    follower whose process is gone on this host (one that said why it stopped: `check_followers`'
    UserError); a follower, rank 0 gone on this host; else 'a follower' / 'another process'."""
    here = socket.gethostname()
    if is_follower():
        main = _read_json(Path(run_dir) / HANDOFF) or {}
        gone = main.get("launch") == launch_key() and main.get("host") == here and not _alive(main.get("pid"))
        return f"rank 0 of this launch (pid {main.get('pid')}) ended" if gone else "another process of this launch ended"
    answers = check_followers(run_dir)  # one that said why: a UserError naming it
    dead = [r for r, a in sorted(answers.items()) if a.get("host") == here and not _alive(a.get("pid"))]
    return f"rank {dead[0]} of this launch ended" if dead else "a follower of this launch ended"


def _followers() -> range:
    return range(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


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
