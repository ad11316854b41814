"""Locks that keep two `dit-compress run`s apart: one run folder (its stages/, distill checkpoints and
calibration caches) and one output folder serve one run at a time. Imports no torch: cheap to import.

A lock is an exclusive, non-blocking `flock` (tried again for moments: `_take`) on a small file,
RUN_DIR/.dit-compress.lock for the run folder and .<name>.dit-compress.lock beside the output (never
inside it: the output replaces its folder as a whole), which also says who holds it (pid, host, start
time, command line) for the message a second run gets. The OS releases a flock when its process
dies, so a killed run leaves no stale lock (its file may stay: the next run takes it over). A
released lock's file is removed, and so are the folders made for it while they hold nothing else, so
a run refused by a later check leaves no folders behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from compress import json_read
from compress.errors import NAME_MAX, UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on without a lock
    fcntl = None

LOCK = ".dit-compress.lock"  # in the run folder, beside stages/ (runner_written.OWN looks only inside those)
HELD = (errno.EWOULDBLOCK, errno.EAGAIN)  # another process holds it
# how long a run's lock is tried again while held (`_take`), in seconds between tries (0.25 s in all): a
# look (`_refuse_if_held`) holds it for moments, shared; a run holds it exclusively, for its whole length
TRIES = (0.01, 0.02, 0.04, 0.08, 0.1)


@contextmanager
def hold_run(run_dir: Path, out: Path):
    """A run's locks: its run folder's (`hold_run_folder`), then its output's (`hold_output`). Taken by
    rank 0 of a distributed launch only (RANK, as `runner_ranks.is_main_process`): its other ranks share
    the folders. Not taken for folders that nest, which `check_folders` refuses with its own message
    (making a lock's folder first would change what it finds). Once held, what killed runs left in
    them (temp folders of stage saves and exports, a copy of the model each) is cleared
    (`runner_leftovers.clear_run_leftovers`; the output's by `hold_output`): no live run writes them now."""
    from compress.runner_leftovers import clear_run_leftovers
    from compress.runner_ranks import is_follower  # no torch either

    if is_follower() or nested(Path(out), Path(run_dir)):
        yield
        return
    with ExitStack() as stack:
        ran = stack.enter_context(hold_run_folder(run_dir))
        stack.enter_context(hold_output(out))
        clear_run_leftovers(run_dir if ran else None, None)  # (the output's: cleared as it was held)
        yield


def nested(a: Path, b: Path) -> bool:
    """Whether folders `a` and `b` are the same or one lies inside the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


@contextmanager
def hold_run_folder(run_dir: Path):
    """Holds `run_dir` (made if missing) for this process, or a one-line UserError naming the run that
    holds it; yields whether it holds a lock (`_hold`)."""
    run_dir = Path(run_dir)
    with _hold(run_dir / LOCK, f"run folder {run_dir}", _run_folder_refusal(run_dir)) as held:
        yield held


@contextmanager
def hold_output(out: Path):
    """Holds the output folder `out` (its lock beside it, in its parent, made if missing) for this
    process, or a one-line UserError naming the run that is to write it; yields whether it holds a lock.
    Once held, the temp folders a killed writer of `out` left beside it (a run's export, convert, lora:
    a copy of the model each) are cleared (`runner_leftovers.clear_run_leftovers`): no live one writes them."""
    from compress.runner_leftovers import clear_run_leftovers

    out = Path(out)
    with _hold(_output_lock(out), f"output folder {out}", _output_refusal(out)) as held:
        if held:
            clear_run_leftovers(None, out)
        yield held


def refuse_held(run_dir: Path, out: Path) -> None:
    """`hold_run`'s refusals before a command loads anything (torch's start-up, seconds): the run folder
    or output another process holds, said as `hold_run` says it, its lock looked at, not taken, and
    nothing made. Where `hold_run` takes no lock (a follower of a launch, nested folders, no fcntl),
    nothing is looked at; a lock taken between this look and `hold_run` is refused there."""
    from compress.runner_ranks import is_follower

    run_dir, out = Path(run_dir), Path(out)
    if fcntl is None or is_follower() or nested(out, run_dir):
        return
    _refuse_if_held(run_dir / LOCK, _run_folder_refusal(run_dir))
    _refuse_if_held(_output_lock(out), _output_refusal(out))


def _refuse_if_held(path: Path, refusal) -> None:
    """A UserError refusal(holder in words) where another process holds the flock of `path`; nothing
    where no file is there (a holder keeps its file while it holds it) or it cannot be read. It looks
    with a shared lock, which the looks of other commands share (two started at once refuse neither)
    and a run's exclusive lock excludes; a run taking its lock while this look holds one tries again
    (`_take`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released as it closes: no holder, no record written
    except OSError as e:
        if e.errno in HELD:
            raise UserError(refusal(holder_in_words(_read(fd)))) from None
    finally:
        os.close(fd)


def _run_folder_refusal(run_dir: Path):
    """What a run is told of `run_dir` held by another (given that holder in words)."""
    return lambda who: (f"{run_dir} is in use by another dit-compress run ({who}): wait for it, or give this run "
                        "another --run-dir")


def _output_refusal(out: Path):
    """What a run is told of the output `out` another is to write (given that holder in words)."""
    return lambda who: (f"output folder {out} is to be written by another dit-compress run ({who}): wait for it, "
                        "or give this run another --out")


def _output_lock(out: Path) -> Path:
    """The lock file of the output folder `out`: beside it, never inside (the export replaces the folder).
    Where .NAME.dit-compress.lock would be longer than a name may be (NAME_MAX bytes: a 245-character
    NAME is legal, its lock's name not), NAME is cut to fit and a hash of the whole NAME added."""
    name = f".{out.name}{LOCK}"
    if len(os.fsencode(name)) <= NAME_MAX:
        return out.parent / name
    digest = hashlib.sha256(os.fsencode(out.name)).hexdigest()[:16]
    room = NAME_MAX - len(f"..-{digest}{LOCK}")
    cut = os.fsencode(out.name)[:room].decode("utf-8", errors="ignore")  # whole characters only
    return out.parent / f".{cut}.-{digest}{LOCK}"


@contextmanager
def _hold(path: Path, what: str, refusal):
    """An exclusive flock on `path` for the block; a UserError refusal(holder in words) when another
    process holds it. No fcntl (Windows): no lock. A file system without flock: a warning, no lock.
    The folder not made or the file not opened: no lock, and `check_folders` (next) says why. Yields
    whether it holds the lock."""
    if fcntl is None:
        yield False
        return
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    try:
        fd = _locked(path, what, refusal)
    except BaseException:
        _remove_empty(missing)
        raise
    if fd is None:
        _remove_empty(missing)
        yield False
        return
    try:
        yield True
    finally:
        _release(fd, path, missing)


def _locked(path: Path, what: str, refusal) -> int | None:
    """An open descriptor of `path` holding its flock, with this process's holder record written;
    None where no lock can be had (see `_hold`). A lock file removed (released) between its open and
    its flock is opened again."""
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open(path)
        except OSError as e:  # a folder that cannot be made or written: check_folders says so next
            if path.is_file():  # another user's lock file, not readable to this one
                _warn(what, f"cannot open {path.name} ({e.strerror or e})")
            return None
        try:
            _take(fd)
        except OSError as e:
            held = _read(fd) if e.errno in HELD else None
            os.close(fd)
            if e.errno in HELD:
                raise UserError(refusal(holder_in_words(held))) from None
            _warn(what, f"its file system cannot lock {path.name} ({e.strerror or e})")
            _remove(path)
            return None
        if _same_file(fd, path):
            _write(fd, holder_record())
            return fd
        os.close(fd)  # its holder released it and removed the file meanwhile
    return None


def _take(fd: int) -> None:
    """An exclusive flock on `fd`, without waiting for a run that holds it: where it is held, tried again
    over TRIES (a quarter second), as another command's look (`_refuse_if_held`) holds it for moments;
    the OSError of the last try where it is still held (or of the first that fails otherwise)."""
    for wait in (*TRIES, None):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in HELD or wait is None:
                raise
        time.sleep(wait)


def _warn(what: str, why: str) -> None:
    """The warning for a lock that cannot be had: the run goes on without it."""
    from compress.report import warn

    warn(f"{what}: {why}: going on without a lock, so nothing keeps another dit-compress run out of it")


def _open(path: Path) -> int:
    """`path` opened (made if missing) to write, or to read only where another user's file it is."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release(fd: int, path: Path, missing: list[Path]) -> None:
    """Removes the lock file (while still held, so no one takes the removed file), releases it, and
    removes the folders made for it (`missing`, deepest first) that hold nothing else."""
    _remove(path)
    os.close(fd)  # releases the flock
    _remove_empty(missing)


def _remove(path: Path) -> None:
    """Removes the file `path`, if it can."""
    try:
        path.unlink()
    except OSError:
        pass


def _remove_empty(folders: list[Path]) -> None:
    """Removes each of `folders` (deepest first) that is empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            pass  # not empty (the run wrote there), or gone


def holder_record() -> dict:
    """Who holds a lock: this process's pid, host, start time (UTC) and command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(sys.argv)}


def holder_in_words(record) -> str:
    """'pid 1234 on host, started 2026-12-01 16:40 UTC' from a `holder_record` (what is known of it)."""
    if not isinstance(record, dict):
        return "holder unknown"
    pid, host, started = record.get("pid"), record.get("host"), record.get("started")
    words = f"pid {pid}" if pid is not None else "pid unknown"
    if host:
        words += f" on {host}"
    return words + (f", started {started}" if started else "")


def _write(fd: int, record: dict) -> None:
    """The holder record, as the lock file's one line (a read-only open of another user's file: none)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass


def _read(fd: int) -> dict | None:
    """The holder record in the lock file open as `fd`; None if it cannot be read. A holder writes it
    just after taking the lock, so an empty file is read again a moment later."""
    for wait in (0, 0.05, 0.2):
        time.sleep(wait)
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return None
        if text.strip():
            try:
                return json_read.parse(text)
            except ValueError:
                return None
    return None
