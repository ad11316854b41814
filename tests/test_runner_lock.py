"""Two runs never share a run folder or an output folder: the second is refused in one line naming
the first; a released or killed holder lets the next run in; no flock, no lock (and a warning)."""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compress import runner_lock
from compress.errors import UserError
from compress.runner_lock import LOCK, hold_output, hold_run, hold_run_folder

ROOT = Path(__file__).resolve().parents[1]
HOLD = """\
import sys
from compress.runner_lock import hold_output, hold_run_folder
with (hold_run_folder if sys.argv[1] == "run" else hold_output)(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it, or kills this process
"""


@pytest.fixture
def holder():
    """hold(kind, path) -> a subprocess holding the run folder ("run") or output ("out") lock of `path`."""
    started = []

    def hold(kind, path):
        p = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(path)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(p)
        assert p.stdout.readline().strip() == "held"
        return p
    yield hold
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_held_run_folder_refuses_a_second_run_naming_its_holder(tmp_path, holder):
    run_dir = tmp_path / "runs" / "x"
    p = holder("run", run_dir)
    with pytest.raises(UserError) as e:
        with hold_run_folder(run_dir):
            pytest.fail("entered a held run folder")
    said = str(e.value)
    assert said.startswith(f"{run_dir} is in use by another dit-compress run (pid {p.pid} on "
                           f"{socket.gethostname()}, started ") and " UTC): " in said
    assert said.endswith("wait for it, or give this run another --run-dir") and "\n" not in said


def test_two_opens_in_one_process_exclude_each_other(tmp_path):
    """flock locks belong to an open file: a second open, even in the holding process, is refused."""
    with hold_run_folder(tmp_path / "r"):
        with pytest.raises(UserError, match=f"in use by another dit-compress run \\(pid {os.getpid()} "):
            with hold_run_folder(tmp_path / "r"):
                pass
        with pytest.raises(UserError, match="give this run another --run-dir"):  # still held
            with hold_run_folder(tmp_path / "r"):
                pass


def test_the_lock_file_says_who_holds_it(tmp_path):
    import json

    with hold_run_folder(tmp_path):
        record = json.loads((tmp_path / LOCK).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["started"].endswith(" UTC") and record["command"]


def test_a_released_lock_lets_the_next_run_in_and_leaves_nothing_it_made(tmp_path, holder):
    run_dir = tmp_path / "runs" / "x"
    with hold_run_folder(run_dir):
        assert (run_dir / LOCK).is_file()
    assert not (tmp_path / "runs").exists()  # made for the lock alone: removed with it
    p = holder("run", run_dir)
    p.stdin.close()  # the holder ends its `with`
    assert p.wait(timeout=30) == 0
    (run_dir / "stages").mkdir(parents=True)  # what a run wrote stays
    with hold_run_folder(run_dir):
        pass
    assert sorted(os.listdir(run_dir)) == ["stages"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    p = holder("run", tmp_path)
    with pytest.raises(UserError, match="in use"):
        with hold_run_folder(tmp_path):
            pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert (tmp_path / LOCK).is_file()  # its file stays; its lock went with the process
    with hold_run_folder(tmp_path):
        pass


def test_a_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    def flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runner_lock.fcntl, "flock", flock)
    entered = []
    with hold_run_folder(tmp_path / "r"):
        entered.append(1)
    err = capsys.readouterr().err
    assert entered and err.count("warning:") == 1
    assert f"run folder {tmp_path / 'r'}: its file system cannot lock" in " ".join(err.split())
    assert "going on without a lock" in " ".join(err.split())
    assert not (tmp_path / "r").exists()


def test_a_lock_file_that_cannot_be_opened_warns_and_a_folder_that_cannot_be_made_is_left_to_check_folders(
        tmp_path, monkeypatch, capsys):
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    (tmp_path / LOCK).write_text("another user's\n")
    monkeypatch.setattr(runner_lock, "_open", denied)
    with hold_run_folder(tmp_path):
        pass
    err = " ".join(capsys.readouterr().err.split())
    assert f"run folder {tmp_path}: cannot open {LOCK} (Permission denied): going on without a lock" in err
    (tmp_path / "a_file").write_text("x")
    with hold_run_folder(tmp_path / "a_file" / "run"):  # check_folders says "a_file is a file"
        pass
    assert not capsys.readouterr().err


def test_no_fcntl_no_lock(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner_lock, "fcntl", None)  # Windows
    with hold_run_folder(tmp_path), hold_run_folder(tmp_path):
        pass
    assert not capsys.readouterr().err


def test_a_held_output_refuses_another_run_writing_it(tmp_path, holder):
    out = tmp_path / "out" / "x"
    p = holder("out", out)
    assert not out.exists() and (tmp_path / "out" / f".x{LOCK}").is_file()  # beside it, not in it
    with pytest.raises(UserError) as e:
        with hold_output(out):
            pass
    said = str(e.value)
    assert said.startswith(f"output folder {out} is to be written by another dit-compress run (pid {p.pid} on ")
    assert said.endswith("give this run another --out") and "\n" not in said


def test_a_run_holds_both_folders_but_not_on_other_ranks_or_for_nested_folders(tmp_path, monkeypatch):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    with hold_run(run_dir, out):
        with pytest.raises(UserError, match="--run-dir"):
            with hold_run_folder(run_dir):
                pass
        with pytest.raises(UserError, match="--out"):
            with hold_output(out):
                pass
    with hold_run(out / "run", out):  # check_folders refuses it, with its own message
        assert not out.exists()
    monkeypatch.setenv("RANK", "1")  # rank 0 of the launch holds them
    with hold_run(run_dir, out), hold_run(run_dir, out):
        pass


def test_refuse_held_says_what_hold_run_would_and_takes_nothing_makes_nothing(tmp_path, holder, monkeypatch):
    """refuse_held (the CLI's look before torch's start-up): another process's lock refused in hold_run's
    words; a lock file nobody holds (a killed run's) left as it is, folders not there not made; nothing
    looked at where hold_run takes no lock (another rank of a launch, nested folders)."""
    from compress.runner_lock import refuse_held

    run_dir, out = tmp_path / "runs" / "x", tmp_path / "out" / "x"
    refuse_held(run_dir, out)
    assert not any(tmp_path.iterdir())  # nothing made
    for kind, folder in (("run", run_dir), ("out", out)):
        p = holder(kind, folder)
        with pytest.raises(UserError) as looked:
            refuse_held(run_dir, out)
        with pytest.raises(UserError) as held:
            with hold_run(run_dir, out):
                pytest.fail("entered a held folder")
        assert str(looked.value) == str(held.value) and f"(pid {p.pid} on " in str(looked.value)
        p.kill()
        p.wait()
    stale = run_dir / LOCK
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"pid": 1}\n')  # a killed run's, held by none
    refuse_held(run_dir, out)
    assert stale.read_text() == '{"pid": 1}\n'
    holder("run", run_dir)
    refuse_held(run_dir / "in", run_dir)  # nested: check_folders refuses them
    monkeypatch.setenv("RANK", "1")  # rank 0 of the launch holds them
    refuse_held(run_dir, out)


def test_the_lock_file_is_not_taken_for_foreign_content(tmp_path):
    from compress.runner_folders import check_folders
    from compress.runner_written import foreign_in_run_folder

    run_dir = tmp_path / "run"
    (run_dir / "stages" / "0-svd").mkdir(parents=True)
    with hold_run(run_dir, tmp_path / "out"):
        assert foreign_in_run_folder(run_dir) is None
        check_folders(tmp_path / "out", run_dir, overwrite=False)


def test_the_lock_imports_no_torch():
    """Cheap to import (the CLI may take it before torch loads), refusal and warning included."""
    code = ("import sys, tempfile, compress.runner_lock as m\n"
            "with m.hold_run_folder(tempfile.mkdtemp()): m._warn('x', 'y')\n"
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


# -- a run --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("held", ["run", "out"])
def test_a_run_on_a_held_folder_is_refused_before_loading(pixart, holder, held):
    tmp_path, make, loads = pixart
    p = holder(held, tmp_path / held)
    with pytest.raises(UserError, match=f"another dit-compress run \\(pid {p.pid} "):
        make(tmp_path / "out", tmp_path / "run").run()
    run = tmp_path / "run"
    left = sorted(f.name for f in run.iterdir()) if run.exists() else []
    assert not loads and left == ([".dit-compress.lock"] if held == "run" else [])  # the holder's lock alone


def test_the_cli_says_the_run_folder_is_in_use_in_one_line(pixart, holder, capsys):
    from compress.cli import main

    tmp_path, make, loads = pixart
    p = holder("run", tmp_path / "run")
    assert main(["run", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dit-compress run: error: {tmp_path / 'run'} is in use by another dit-compress run "
                          f"(pid {p.pid} ") and "\n" not in err
    assert not loads and not (tmp_path / "out").exists()


def test_a_run_clears_what_killed_runs_left_only_in_folders_it_holds(tmp_path, holder):
    """Temp folders of a killed stage save or export (a model copy each) stayed forever; hold_run
    removes them once it holds the locks, and never while another run holds them (it may be writing)."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    stage, export = run_dir / "stages" / ".1-svd.tmp-_wpatwcm", tmp_path / ".out.tmp-05jgdgvp"
    p = holder("out", out)  # (taking the lock, it clears what killed writers left: these come after)
    for d in (stage, export):
        d.mkdir(parents=True)
    with pytest.raises(UserError, match="is to be written by another dit-compress run"):
        with hold_run(run_dir, out):
            pass
    assert stage.is_dir() and export.is_dir()  # the held output's; and the run folder's, refused with it
    p.kill()
    p.wait()
    with hold_run(run_dir, out):
        assert not stage.exists() and not export.exists()


def _killed_writes(folder: Path, name: str) -> list[Path]:
    """Temp folders a killed writer of output `name` left in `folder` (io_atomic._temp_beside's names): one
    half written, one empty; and one of another output, which stays."""
    left = [folder / f".{name}.tmp-abcd1234", folder / f".{name}.tmp-efgh5678", folder / ".other.tmp-ijkl9012"]
    for p in left:
        p.mkdir(parents=True)
    (left[0] / "config.json").write_text("{}")
    (left[0] / ".tmpUV26q6").write_bytes(b"\0" * 1000)  # a shard cut off
    return left


def test_an_output_held_clears_what_killed_writers_of_it_left_but_not_one_a_live_writer_holds(tmp_path, holder):
    """Only `run` removed the temp folders a killed writer left (runner_leftovers): a kill -9 of convert or
    lora left .OUT.tmp-* (328 MB of a shard) that no later command removed. Whoever holds the output's
    lock (run, convert, lora) now clears them, by run's rule; a live writer's, whose lock is held, stay."""
    out = tmp_path / "o" / "x"
    p = holder("out", out)  # a live writer (these left after it took the lock: its own, being written)
    mine, empty, other = _killed_writes(out.parent, "x")
    with pytest.raises(UserError):
        with hold_output(out):
            pass
    assert mine.is_dir() and empty.is_dir()  # its writer lives
    p.kill()
    p.wait()
    with hold_output(out):
        assert not mine.exists() and not empty.exists() and other.is_dir()


def test_convert_and_lora_clear_what_a_killed_one_left(tmp_path):
    pytest.importorskip("peft")
    from compress.cli import main
    from tests.test_io_convert import _flux_file
    from tests.test_lora_limits import _one_layer_lora_output

    (tmp_path / "c").mkdir()
    _flux_file(tmp_path / "c")
    left = _killed_writes(tmp_path / "aux", "big")
    assert main(["convert", str(tmp_path / "c" / "f.safetensors"), str(tmp_path / "aux" / "big")]) == 0
    assert sorted(p.name for p in (tmp_path / "aux").iterdir()) == [left[2].name, "big"]
    out, lora = _one_layer_lora_output(tmp_path, dense=True)
    left = _killed_writes(tmp_path / "ap", "new")
    assert main(["lora", str(out), str(lora), str(tmp_path / "ap" / "new")]) == 0
    assert sorted(p.name for p in (tmp_path / "ap").iterdir()) == [left[2].name, "new"]


class _PausedLook:
    """runner_lock.fcntl with a flock that, in the thread `looking`, holds the lock it took until `go`
    is set (a look of another command caught in the middle); in other threads, `tried` is set where the
    lock was held (runner_lock.HELD)."""

    def __init__(self):
        import fcntl

        self.real, self.looking = fcntl, None
        self.in_look, self.go, self.tried = threading.Event(), threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def flock(self, fd, op):
        try:
            self.real.flock(fd, op)
        except OSError as e:
            if e.errno in runner_lock.HELD:
                self.tried.set()
            raise
        if threading.current_thread() is self.looking and not self.in_look.is_set():
            self.in_look.set()
            self.go.wait(10)

    def look_in_thread(self, run_dir, out):
        """refuse_held(run_dir, out) in a thread, paused once it holds the run folder's lock; (thread, errors)."""
        errors = []

        def look():
            try:
                runner_lock.refuse_held(run_dir, out)
            except Exception as e:  # (the test asserts there was none)
                errors.append(e)
        self.looking = threading.Thread(target=look)
        self.looking.start()
        assert self.in_look.wait(10)
        return self.looking, errors


def _stale_lock(run_dir):
    """A lock file held by none (a killed run's), which a look opens and locks."""
    run_dir.mkdir(parents=True)
    (run_dir / LOCK).write_text('{"pid": 1}\n')


def test_two_looks_at_once_refuse_neither(tmp_path, monkeypatch):
    """refuse_held looked with an exclusive lock: two commands started in the same instant could each
    find the other's look and refuse ('RUN is in use by another dit-compress run (pid ...)')."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    _stale_lock(run_dir)
    paused = _PausedLook()
    monkeypatch.setattr(runner_lock, "fcntl", paused)
    thread, errors = paused.look_in_thread(run_dir, out)
    try:
        runner_lock.refuse_held(run_dir, out)  # while the other look holds its lock
    finally:
        paused.go.set()
        thread.join()
    assert errors == []


def test_a_run_taking_its_lock_during_a_look_waits_for_it(tmp_path, monkeypatch):
    """hold_run's lock tried once: a run taking it while another command's look held it for moments was
    refused as if another run held it."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    _stale_lock(run_dir)
    paused = _PausedLook()
    monkeypatch.setattr(runner_lock, "fcntl", paused)
    monkeypatch.setattr(runner_lock, "TRIES", (0.1,) * 50, raising=False)  # (a loaded machine: time to spare)
    thread, errors = paused.look_in_thread(run_dir, out)
    threading.Thread(target=lambda: paused.tried.wait(10) and paused.go.set()).start()  # the look ends once tried
    try:
        with hold_run_folder(run_dir) as held:
            assert held
    finally:
        paused.go.set()
        thread.join()
    assert paused.tried.is_set() and errors == []
