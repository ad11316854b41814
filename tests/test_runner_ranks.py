"""Runs of several processes: rank 0 runs the passes, the other ranks join the data-parallel ones from
the student it hands over (compress/runner_ranks.py; the followers' answers: test_runner_answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.errors import UserError
from compress.runner_answers import ANSWER
from compress.runner_lock import LOCK
from compress.runner_ranks import (HANDOFF, STARTED, TOKEN, MainStopped, PeerLost, alive, announce, hand_off, leading,
                                   main_of_launch, wait_for_hand_off, wait_for_main)
from tests.ranks_helpers import RECIPE, dead_pid, handed, launch_env, running, zombie

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def launch(monkeypatch):
    return launch_env(monkeypatch)


def test_a_follower_takes_the_hand_offs_of_its_own_launch_without_a_lock(tmp_path, launch):
    """No lock file anywhere (a file system that cannot lock): the hand-off file says whose it is."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handed(run_dir, launch="127.0.0.1:29999/t/1", ppid=-1, pid=dead_pid())  # a restarted launch's earlier try
    timer = threading.Timer(0.3, announce, (run_dir,))
    timer.start()
    with pytest.raises(UserError, match="has not started"):  # its announcement is no hand-off of a pass
        wait_for_hand_off(run_dir, -1, poll=0.05, find_main_s=0.2)
    timer.join()
    threading.Timer(0.3, hand_off, (run_dir, 1, tmp_path / "stage")).start()
    got = wait_for_hand_off(run_dir, -1, poll=0.05, find_main_s=0.1)
    assert (got["pass"], got["stage"], got["token"]) == (1, str((tmp_path / "stage").resolve()), TOKEN)
    assert not (run_dir / LOCK).exists()
    hand_off(run_dir, None, None)
    assert wait_for_hand_off(run_dir, 1, poll=0.05)["pass"] is None


def test_a_follower_whose_rank_0_is_gone_stops_in_one_line(tmp_path, launch, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handed(run_dir, pid=dead_pid(), stopped=True, **{"pass": 1})  # rank 0 on this host stopped after pass 1's
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped: see its message") as stopped:
        wait_for_hand_off(run_dir, 1, poll=0.01)
    assert stopped.value.exit_code == 1  # rank 0 says why; cli prints nothing for this rank (no status: an error)
    handed(run_dir, pid=dead_pid(), **{"pass": 1})  # ... killed (nothing marked: it says nothing)
    with pytest.raises(PeerLost, match=r"rank 0 of this launch \(pid \d+\) ended without a word \(killed\?\)"):
        wait_for_hand_off(run_dir, 1, poll=0.01)
    handed(run_dir, pid=dead_pid(), **{"pass": None})  # ... or finished before this rank looked: it is done
    assert wait_for_hand_off(run_dir, 1, poll=0.01)["pass"] is None
    handed(run_dir, launch="127.0.0.1:29999/other/0")
    with pytest.raises(UserError, match=r"rank 0 of this launch \(127.0.0.1:29999/t/0\) has not started in the run"):
        wait_for_hand_off(run_dir, -1, poll=0.01, find_main_s=0.1)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UserError, match="RANK is 1 but MASTER_ADDR / MASTER_PORT are not set"):
        wait_for_hand_off(run_dir, -1)


def test_an_earlier_launchs_hand_off_is_not_taken_for_this_ones(launch):
    import socket

    mine = {"launch": launch, "token": "t", "since": STARTED, "pid": os.getpid(), "ppid": os.getppid(),
            "host": socket.gethostname(), "pass": None}
    assert main_of_launch(mine, launch) == mine
    assert main_of_launch(dict(mine, pid=dead_pid()), launch) is not None  # its launcher's: rank 0 finished
    with running() as pid:  # under another launcher on this host (this process): a live rank 0 started about now
        other = dict(mine, pid=pid, ppid=os.getpid())
        assert main_of_launch(other, launch) == other
    assert main_of_launch(dict(other, pid=dead_pid()), launch) is None  # killed
    assert main_of_launch(dict(other, since=STARTED - 3600), launch) is None  # an earlier launch's
    away = dict(other, host="elsewhere", pid=dead_pid())  # another host's pid: not checked here
    assert main_of_launch(away, launch) == away
    assert main_of_launch(dict(away, since=STARTED - 3600), launch) is None
    assert main_of_launch(dict(mine, launch="127.0.0.1:29998/t/0"), launch) is None
    assert main_of_launch({k: v for k, v in mine.items() if k != "pass"}, launch) is None


def _run(tmp_path, name, processes):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", "29547"] if processes > 1 else [sys.executable]
    cmd = [*launcher, "-m", "compress.cli", "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / f"out-{name}"),
           "--run-dir", str(tmp_path / f"run-{name}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_processes_make_the_svd_student_of_one_and_distill_it_together(tmp_path):
    """Before, both ranks calibrated and factorized in the same run folder: a crash on a cache file's
    rename, or a student that differed from one process's (one rank reading the other's half-made
    output Fishers as an earlier run's: the runner's line as an svd pass starts, runner_read_back.say_read_back,
    says what it reads back so, runner_kept.read_back_in_words)."""
    import inspect

    from compress import runner_read_back

    read_back = " measured: it reads back"  # the runner's line (svd.py's own went in 6d81d0e), whoever measured
    assert read_back in inspect.getsource(runner_read_back.say_read_back)  # aimed at a line that is there
    (tmp_path / "r.yaml").write_text(RECIPE)
    one = _run(tmp_path, "one", 1)
    two = _run(tmp_path, "two", 2)
    a, b = (load_file(tmp_path / f"run-{n}" / "stages" / "0-svd" / "diffusion_pytorch_model.safetensors")
            for n in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_back not in one.stdout + one.stderr + two.stdout + two.stderr
    report = json.loads((tmp_path / "out-two" / "report.json").read_text())
    assert report["distill"]["processes"] == 2  # the other rank joined the distill pass
    # rank 0 said no pass was left for the other rank, which said, as it ended, that it finished its part
    # (not killed: runner_answers._gone): then rank 0 removed the hand-off file and the answer, which
    # nothing reads after a finished run (runner_answers.remove_when_done leaves them otherwise)
    assert not (tmp_path / "run-two" / HANDOFF).exists() and not (tmp_path / "run-two" / f"{ANSWER}-1").exists()
    assert (tmp_path / "out-two" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_other_ranks_print_no_stop_and_name_their_rank_on_errors(tmp_path, monkeypatch, capsys):
    from compress import cli
    from compress.passes.distill_trainer import StepLimitReached
    from compress.runner_failures import OutOfMemory

    monkeypatch.setenv("RANK", "1")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "inspect", interrupted)
    assert cli.main(["inspect", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ""  # rank 0 says what the run folder keeps

    def refused(args):
        raise UserError("no such output")

    monkeypatch.setitem(cli.COMMANDS, "inspect", refused)
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "dit-compress inspect (rank 1): error: no such output\n"  # its command named (8779ccc)

    def stopped(args):
        raise StepLimitReached("distill: stopped at step 3/20 on max_steps_this_run=3")

    monkeypatch.setitem(cli.COMMANDS, "inspect", stopped)
    assert cli.main(["inspect", str(tmp_path)]) == 75
    assert capsys.readouterr().err == ""  # rank 0 says it once

    def out_of_memory(args):
        raise OutOfMemory("distill ran out of GPU memory; try batch_size")

    monkeypatch.setitem(cli.COMMANDS, "inspect", out_of_memory)
    assert cli.main(["inspect", str(tmp_path)]) == 1  # an error of its own: said, whatever its status
    assert capsys.readouterr().err == "dit-compress (rank 1): out of memory: distill ran out of GPU memory; try batch_size\n"


def test_rank_0_announces_itself_only_where_the_folders_are_checked_first(tmp_path, launch, monkeypatch):
    """Nested --out / --run-dir are refused by check_folders with its own message: rank 0 writes nothing
    there before it (its announcement would make the folders that check looks at)."""
    from compress.recipe import parse_recipe
    from compress.runner import Runner
    from tests.runner_helpers import SIMPLE

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    recipe = parse_recipe(SIMPLE.format(teacher="toy:pixart", passes="  - distill: {data: toy, steps: 1}\n"),
                          str(tmp_path / "r.yaml"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="must be separate folders"):
        Runner(recipe, out, out / "run").run()
    assert not out.exists()
    monkeypatch.setattr(Runner, "_run", lambda self: self.out)
    Runner(recipe, out, tmp_path / "run").run()
    assert json.loads((tmp_path / "run" / HANDOFF).read_text())["pass"] == -1


@pytest.mark.parametrize("stop, status", [("SIGTERM", 143), ("SIGHUP", 129), ("Ctrl-C", 130), ("error", 2),
                                          ("crash", 1)])
def test_a_follower_ends_with_the_status_rank_0_ends_with(tmp_path, launch, stop, status):
    """A follower that took no signal itself ended with a Ctrl-C's 130 whatever stopped rank 0 (a
    launcher's SIGTERM: 143 on rank 0 alone): rank 0's hand-off file records its own status."""
    import signal

    from compress import interrupts

    raised = {"error": UserError("no such output"), "crash": RuntimeError("boom")}.get(stop, KeyboardInterrupt())
    interrupts.forget_stops()
    try:
        with pytest.raises(type(raised)):
            with leading(tmp_path, {"recipe": {}}):
                if stop.startswith("SIG"):
                    interrupts.took(getattr(signal, stop))  # as runner_setup's handler notes it
                raise raised
    finally:
        interrupts.forget_stops()
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped") as stopped:
        wait_for_hand_off(tmp_path, -1, poll=0.01)
    assert stopped.value.exit_code == status


def test_a_follower_ends_when_rank_0_stops_or_goes_silent_on_another_host(tmp_path, launch, monkeypatch):
    """Before, a follower on another host polled for minutes after rank 0 was interrupted: only a
    rank 0 on its own host was seen to stop. Rank 0 marks its file stopped when it ends on an
    exception, and touches it while it runs: a file unchanged STALE_S is a rank 0 gone."""
    from compress import runner_ranks

    monkeypatch.setattr(runner_ranks, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(runner_ranks, "STALE_S", 0.5)
    with leading(tmp_path, {"recipe": {}}):  # alive: a follower waits past STALE_S for the hand-off
        threading.Timer(1.0, hand_off, (tmp_path, 0, None)).start()
        assert wait_for_hand_off(tmp_path, -1, poll=0.05)["pass"] == 0
    with pytest.raises(KeyboardInterrupt):
        with leading(tmp_path, {"recipe": {}}):
            raise KeyboardInterrupt  # rank 0 Ctrl-C'd while sampling, before its first hand-off
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped"):
        wait_for_hand_off(tmp_path, -1, poll=0.01)
    handed(tmp_path, host="elsewhere", **{"pass": -1})  # rank 0 on another host, alive a while, then killed
    threading.Timer(0.2, handed, (tmp_path,), dict(host="elsewhere", **{"pass": -1})).start()  # its last beat
    with pytest.raises(UserError, match=r"rank 0 of this launch \(127.0.0.1:29999/t/0\) has not touched .* in "
                                        r"0 min: it stopped"):
        wait_for_hand_off(tmp_path, -1, poll=0.05)


@pytest.mark.parametrize("left", [{"pass": -1, "stopped": True}, {"pass": None}, {"pass": 3}])
def test_an_earlier_launchs_file_on_another_host_is_not_taken_until_this_launchs_rank_0_writes(
        tmp_path, launch, monkeypatch, left):
    """A static rendezvous (accelerate multi-node, torchrun --master-addr/--master-port) gives a relaunch
    the launch key of the last: a follower on another host took the file the last launch left minutes
    before (stopped: it ended silently and rank 0 waited 30 min for it; finished: it compared the new
    recipe with the old; killed in distill: it took the old pass's hand-off). A file it has not seen
    change is not taken; this launch's rank 0 announcing, then beating, is."""
    from compress import runner_ranks

    monkeypatch.setattr(runner_ranks, "HEARTBEAT_S", 0.05)
    handed(tmp_path, host="elsewhere", token="old", **left)
    with pytest.raises(UserError, match="has not started in the run folder"):
        wait_for_hand_off(tmp_path, -1, poll=0.02, find_main_s=0.3)

    def rank_0_starts():  # on host "there": announces, beats, hands off pass 0
        handed(tmp_path, host="there", token="new", **{"pass": -1})
        for _ in range(4):
            time.sleep(0.05)
            os.utime(tmp_path / HANDOFF)
        handed(tmp_path, host="there", token="new", **{"pass": 0})
    threading.Timer(0.2, rank_0_starts).start()
    got = wait_for_hand_off(tmp_path, -1, poll=0.02)
    assert (got["pass"], got["token"], got["host"]) == (0, "new", "there")


@pytest.mark.parametrize("left", ["stopped", "killed"])
def test_a_follower_says_the_same_of_its_rank_0_whether_or_not_it_had_taken_its_file(tmp_path, launch, left):
    """wait_for_main judged a rank 0 twice: before the follower took its first record (the `got`
    branch) and after (`_check_followed`); a rank 0 of its own launcher killed before its next
    hand-off was 'stopped before handing over the student ...: see its message' (MainStopped: this
    rank said nothing, and rank 0, killed, says nothing either) the first time and 'ended without a
    word (killed?)' the next. One judgment (`main_gone`), one text."""
    said, gone = [], dict(stopped=True) if left == "stopped" else dict(pid=dead_pid())
    for main in (None, TOKEN):  # not taken yet / taken (the record is this process's: token TOKEN)
        handed(tmp_path, **{"pass": 1}, **gone)
        with pytest.raises(UserError) as e:
            wait_for_hand_off(tmp_path, 1, poll=0.01, find_main_s=0.5, main=main)
        said.append((type(e.value), str(e.value)))
    assert said[0] == said[1]
    assert said[0][0] is (MainStopped if left == "stopped" else PeerLost)


def test_a_follower_under_another_launcher_here_says_at_once_that_its_rank_0_was_killed(tmp_path, launch):
    """Two 'nodes' on one host: the follower had answered rank 0, which was then killed (kill -9,
    nothing marked); it waited 10 minutes and said rank 0 'has not started' (main_of_launch takes no
    dead rank 0 of another launcher). The rank 0 it follows, gone on this host: one line at once.
    A relaunch on the same static port (same key, started near, alive) is not taken for it either."""
    with running() as pid:  # a live rank 0 under another launcher (this process)
        handed(tmp_path, pid=pid, ppid=os.getpid(), **{"pass": -1})
        main = wait_for_main(tmp_path, lambda got: True, poll=0.01)["token"]
    handed(tmp_path, ppid=-1, pid=dead_pid(), **{"pass": -1})  # then killed
    with pytest.raises(PeerLost, match=r"rank 0 of this launch \(pid \d+\) ended without a word \(killed\?\): "
                                       "start the launch again with --resume"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    handed(tmp_path, ppid=-1, pid=dead_pid(), stopped=True, **{"pass": -1})  # ended on its error, then gone
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped: see its message"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    handed(tmp_path, ppid=-1, token="relaunched", **{"pass": 0})  # a new launch's rank 0, alive, same key
    with pytest.raises(PeerLost, match="ended: another process .* now writes its hand-off file, a relaunch"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    (tmp_path / HANDOFF).unlink()  # gone: not 'has not started' once it had answered
    with pytest.raises(UserError, match="stopped answering in the run folder"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=0.1, main=main)


def test_the_workers_of_a_killed_launcher_are_not_taken_for_a_relaunchs_rank_0(tmp_path, launch):
    """kill -9 of torchrun (or accelerate launch) orphans its workers, which run on. A relaunch on the
    same rendezvous (127.0.0.1:29500/none/0) with --resume: its rank 1 took the orphaned rank 0's
    hand-off file (same host, started near, alive) for its own rank 0's and refused in a false line
    ('--resume is False on rank 0, True here'). A rank 0 whose launcher is gone is an earlier
    launch's: not taken, and named where the follower gives up."""
    import socket

    orphan = {"launch": launch, "token": "old", "since": STARTED, "pid": os.getpid(), "ppid": dead_pid(),
              "host": socket.gethostname(), "pass": -1}  # alive (this process), its launcher gone
    assert main_of_launch(orphan, launch) is None
    handed(tmp_path, pid=os.getpid(), ppid=dead_pid(), **{"pass": -1, "--resume": False})
    with pytest.raises(UserError, match=r"has not started in the run folder .*; workers of an earlier launch still "
                                        rf"run here \(its rank 0: pid {os.getpid()}, whose launcher ended\)"):
        wait_for_main(tmp_path, lambda got: True, poll=0.01, find_main_s=0.3)


def test_a_killed_process_its_launcher_has_not_reaped_is_not_alive(tmp_path, launch, monkeypatch):
    """A worker killed (kill -9) stays a zombie until its launcher reaps it: os.kill(pid, 0) found it
    alive, so a follower whose rank 0 was killed said 'another process of this launch ended' without
    naming rank 0 (and rank 0, 'a follower' for 'rank 1')."""
    from compress import runner_ranks

    monkeypatch.setattr(runner_ranks, "STALE_S", 1.0)  # (a rank 0 taken for alive: given up on at once)
    with running() as pid:
        assert alive(pid)
    with zombie() as pid:
        assert not alive(pid)
        handed(tmp_path, pid=pid, **{"pass": 0})  # rank 0 of this launcher, killed before its next hand-off
        with pytest.raises(PeerLost, match=rf"rank 0 of this launch \(pid {pid}\) ended without a word"):
            wait_for_hand_off(tmp_path, 0, poll=0.01, find_main_s=5)


@pytest.mark.parametrize("env, rank_, size", [
    ({}, 0, 1),
    ({"RANK": "1", "WORLD_SIZE": "2"}, 1, 2),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"}, 1, 3),  # mpirun (Open MPI)
    ({"PMI_RANK": "2", "PMI_SIZE": "4"}, 2, 4),  # Intel MPI / MPICH
    ({"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "2"}, 1, 2),  # MVAPICH
    ({"RANK": "0", "WORLD_SIZE": "2", "PMI_RANK": "1", "PMI_SIZE": "2"}, 0, 2),  # torchrun's own first
])
def test_rank_and_world_size_read_an_mpi_launchers_variables_as_accelerate_does(env, rank_, size):
    """Under an MPI launcher (no RANK / WORLD_SIZE) every process took itself for rank 0 of one."""
    from compress.runner_ranks import rank, world_size

    assert (rank(env), world_size(env)) == (rank_, size)


def test_a_process_mpirun_started_second_is_a_follower(monkeypatch):
    from compress.runner_ranks import is_follower, several_processes

    for k in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert is_follower() and several_processes()
    from compress.report import console, notes_from_rank_zero

    monkeypatch.setattr(console, "quiet", False)
    notes_from_rank_zero()
    assert console.quiet  # its notes and bars come from rank 0 alone
