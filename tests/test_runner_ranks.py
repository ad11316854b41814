"""Runs of several processes: rank 0 runs the passes, the other ranks join the data-parallel ones from
the student it hands over (compress/runner_ranks.py)."""

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
from compress.runner_lock import LOCK
from compress.runner_ranks import (ANSWER, HANDOFF, PREPARED, STARTED, TOKEN, MainStopped, PeerLost, announce, answer,
                                   check_followers, check_same_run, following, hand_off, leading, main_of_launch,
                                   wait_for_followers, wait_for_hand_off, wait_for_main)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def launch(monkeypatch):
    """This process seen as part of a launch at 127.0.0.1:29999 (what torchrun sets)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "t")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    return "127.0.0.1:29999/t/0"


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _record(run_dir: Path, **changes) -> None:
    """A hand-off file as rank 0 writes it, with `changes`, replaced at once (a follower polling
    run_dir took the plain hand-off written on the way to it: the tests were flaky under load)."""
    draft = run_dir.parent / f"{run_dir.name}.draft"
    hand_off(draft, 0, None)
    record = dict(json.loads((draft / HANDOFF).read_text()), **changes)
    (draft / HANDOFF).write_text(json.dumps(record))
    (draft / HANDOFF).replace(run_dir / HANDOFF)


def test_a_follower_takes_the_hand_offs_of_its_own_launch_without_a_lock(tmp_path, launch):
    """No lock file anywhere (a file system that cannot lock): the hand-off file says whose it is."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _record(run_dir, launch="127.0.0.1:29999/t/1", ppid=-1, pid=_dead_pid())  # a restarted launch's earlier try
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
    _record(run_dir, pid=_dead_pid(), **{"pass": 1})  # rank 0 on this host died after handing pass 1 over
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped before handing over") as stopped:
        wait_for_hand_off(run_dir, 1, poll=0.01)
    assert stopped.value.exit_code == 130  # rank 0 says why; cli prints nothing for this rank
    _record(run_dir, pid=_dead_pid(), **{"pass": None})  # ... or finished before this rank looked: it is done
    assert wait_for_hand_off(run_dir, 1, poll=0.01)["pass"] is None
    _record(run_dir, launch="127.0.0.1:29999/other/0")
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
    assert main_of_launch(dict(mine, pid=_dead_pid()), launch) is not None  # its launcher's: rank 0 finished
    other = dict(mine, ppid=-1)  # under another launcher on this host: a live rank 0 started about now
    assert main_of_launch(other, launch) == other
    assert main_of_launch(dict(other, pid=_dead_pid()), launch) is None  # killed
    assert main_of_launch(dict(other, since=STARTED - 3600), launch) is None  # an earlier launch's
    away = dict(other, host="elsewhere", pid=_dead_pid())  # another host's pid: not checked here
    assert main_of_launch(away, launch) == away
    assert main_of_launch(dict(away, since=STARTED - 3600), launch) is None
    assert main_of_launch(dict(mine, launch="127.0.0.1:29998/t/0"), launch) is None
    assert main_of_launch({k: v for k, v in mine.items() if k != "pass"}, launch) is None


RECIPE = """\
version: 1
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 2, timesteps: 1, batch_size: 8, seed: 0, heldout: 8}
passes:
  - svd: {targets: [mlp], ratio: 0.5, compensate: false}
  - distill: {data: toy, steps: 2, batch_size: 4, lr: 0.0005, warmup_steps: 0, progress: false}
"""


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
    output Fishers, 'read back from an earlier run')."""
    (tmp_path / "r.yaml").write_text(RECIPE)
    one = _run(tmp_path, "one", 1)
    two = _run(tmp_path, "two", 2)
    a, b = (load_file(tmp_path / f"run-{n}" / "stages" / "0-svd" / "diffusion_pytorch_model.safetensors")
            for n in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "read back" not in one.stdout + one.stderr + two.stdout + two.stderr
    report = json.loads((tmp_path / "out-two" / "report.json").read_text())
    assert report["distill"]["processes"] == 2  # the other rank joined the distill pass
    handed = json.loads((tmp_path / "run-two" / HANDOFF).read_text())
    assert handed["pass"] is None  # rank 0 said no pass was left for the other rank
    assert (tmp_path / "out-two" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_other_ranks_print_no_stop_and_name_their_rank_on_errors(tmp_path, monkeypatch, capsys):
    from compress import cli
    from compress.passes.distill_trainer import StepLimitReached
    from compress.runner_stream import OutOfMemory

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
    assert capsys.readouterr().err == "dit-compress (rank 1): error: no such output\n"

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


def _runners(tmp_path, monkeypatch, follower_sets: list[str], main_sets: list[str] = ()):
    """(rank 0's Runner, a follower's Runner: RANK 1) of RECIPE with each its --set; the follower's
    prepare (its teacher load, then its compute) fails the test."""
    from compress.recipe import load_recipe
    from compress.runner import Runner

    (tmp_path / "r.yaml").write_text(RECIPE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    main = Runner(load_recipe(tmp_path / "r.yaml", list(main_sets)), tmp_path / "out", tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    follower = Runner(load_recipe(tmp_path / "r.yaml", follower_sets), tmp_path / "out", tmp_path / "run")
    monkeypatch.setattr(Runner, "prepare", lambda self: pytest.fail("the follower went on to load and compute"))
    return main, follower


@pytest.mark.parametrize("sets, said", [
    (["calibration.seed=7"], "calibration.seed is 0 on rank 0, 7 here"),
    (["passes.1.distill.lr=0.002"], "passes.1.distill.lr is 0.0005 on rank 0, 0.002 here"),
    (["passes.1.distill.steps=6"], "passes.1.distill.steps is 2 on rank 0, 6 here"),
])
def test_a_follower_that_reads_the_recipe_otherwise_refuses_before_it_computes_and_rank_0_stops(
        tmp_path, launch, monkeypatch, sets, said):
    """Before, a follower run with another --set (seed, lr, steps) joined rank 0 silently: its teacher
    samples went under another cache key (rank 0 trained on half of them), or it trained another
    student (the output's recipe.yaml said rank 0's lr), or rank 0 hung after its last step."""
    from compress import runner_ranks

    main, follower = _runners(tmp_path, monkeypatch, sets)
    announce(tmp_path / "run", main.about)  # rank 0, as Runner.run starts (runner_ranks.leading)
    with pytest.raises(UserError, match=f"rank 1 does not run what rank 0 runs \\({said}\\): every process"):
        follower.run()
    monkeypatch.setattr(runner_ranks, "rank", lambda: 0)
    with pytest.raises(UserError, match=f"rank 1 of this launch stopped: rank 1 does "
                                        f"not run what rank 0 runs \\({said}\\)"):
        wait_for_followers(tmp_path / "run", poll=0.01, limit_s=5)  # not waiting for a process group


def test_a_follower_that_reads_other_teacher_or_prompt_files_refuses(tmp_path, launch):
    """The same recipe on another node may read another prompt file or teacher: compared once both
    are prepared (the fingerprint keys the caches)."""
    prepared = {"teacher": {"source": "/p", "config": None, "checksum": "a"},
                "inputs": {"prompts": "p1", "pipeline": {"vae/x": "1"}}, "fingerprint": "f1"}
    announce(tmp_path, dict(prepared, version="1"))  # rank 0's records carry its version from the first on
    check_same_run(tmp_path, prepared, PREPARED, poll=0.01)
    assert json.loads((tmp_path / f"{ANSWER}-0").read_text())["ready"] == PREPARED
    for change, said in ((dict(inputs={"prompts": "p2", "pipeline": {"vae/x": "1"}}), "calibration prompts read"),
                         (dict(inputs={"prompts": "p1", "pipeline": {"vae/x": "2"}}), "pipeline's vae/x differ"),
                         (dict(teacher={"source": "/q", "config": None, "checksum": "a"}), "teacher is /p on rank 0"),
                         (dict(fingerprint="f2"), "fingerprint differs")):
        with pytest.raises(UserError, match=said):
            check_same_run(tmp_path, dict(prepared, **change), PREPARED, poll=0.01)


def test_rank_0_waits_for_its_followers_answers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    answer(tmp_path, TOKEN, ready=PREPARED)
    monkeypatch.setenv("RANK", "2")
    answer(tmp_path, "an earlier rank 0", ready=PREPARED)  # not to this rank 0
    with pytest.raises(UserError, match=r"rank 2 of this launch did not answer in .* in 0 min: every node must"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=0.1)
    answer(tmp_path, TOKEN, ready="recipe")
    threading.Timer(0.2, answer, (tmp_path, TOKEN), {"ready": PREPARED}).start()
    wait_for_followers(tmp_path, poll=0.01, limit_s=5)
    with pytest.raises(RuntimeError):
        with following(tmp_path):
            raise RuntimeError("no space left")
    with pytest.raises(UserError, match="rank 2 of this launch stopped: no space left"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=5)


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
    _record(tmp_path, host="elsewhere", **{"pass": -1})  # rank 0 on another host, alive a while, then killed
    threading.Timer(0.2, _record, (tmp_path,), dict(host="elsewhere", **{"pass": -1})).start()  # its last beat
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
    _record(tmp_path, host="elsewhere", token="old", **left)
    with pytest.raises(UserError, match="has not started in the run folder"):
        wait_for_hand_off(tmp_path, -1, poll=0.02, find_main_s=0.3)

    def rank_0_starts():  # on host "there": announces, beats, hands off pass 0
        _record(tmp_path, host="there", token="new", **{"pass": -1})
        for _ in range(4):
            time.sleep(0.05)
            os.utime(tmp_path / HANDOFF)
        _record(tmp_path, host="there", token="new", **{"pass": 0})
    threading.Timer(0.2, rank_0_starts).start()
    got = wait_for_hand_off(tmp_path, -1, poll=0.02)
    assert (got["pass"], got["token"], got["host"]) == (0, "new", "there")


def test_a_follower_says_in_one_line_where_only_one_side_samples_a_pipeline():
    from compress.runner_ranks import WORDS

    assert WORDS["inputs"](None, {"prompts": "a", "pipeline": {}}) == (
        "the calibration samples a pipeline here, not on rank 0 (the teacher folder holds other files)")
    assert "on rank 0, not here" in WORDS["inputs"]({"prompts": "a"}, None)


def test_a_follower_of_a_rank_0_of_an_older_version_refuses_at_once(tmp_path, launch):
    """A rank 0 of an older dit-compress writes no `version` (nor a recipe): the follower waited for a
    record that never came and said, after STALE_S, that rank 0 had stopped."""
    _record(tmp_path, **{"pass": -1})
    with pytest.raises(UserError, match="runs dit-compress 9 and rank 0 an older one"):
        check_same_run(tmp_path, {"recipe": {}, "version": "9"}, "recipe", poll=0.01)
    assert "older one" in json.loads((tmp_path / f"{ANSWER}-0").read_text())["stopped"]


@pytest.mark.parametrize("follower", ["killed here", "unknown"])
def test_rank_0_says_in_one_line_which_follower_a_failed_collective_lost(tmp_path, monkeypatch, capsys, follower):
    """A follower killed (kill -9) in distill gave rank 0 forty lines of gloo's 'Connection closed by
    peer' traceback: one line naming the rank (its answer's pid is gone on this host; 'a follower'
    when it cannot tell) and what the run folder keeps for --resume."""
    from compress.cli import main
    from compress.passes import svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"

    def peer_gone(self, model, ctx):
        if follower == "killed here":
            monkeypatch.setenv("RANK", "1")
            answer(run_dir, TOKEN, ready=PREPARED)
            monkeypatch.setenv("RANK", "0")
            record = json.loads((run_dir / f"{ANSWER}-1").read_text())
            (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, pid=_dead_pid())))
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:21182. This is typically caused by a remote worker crashing.")

    monkeypatch.setattr(svd.SVDPass, "run", peer_gone)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    who = "rank 1 of this launch" if follower == "killed here" else "a follower of this launch"
    assert err.strip().splitlines()[-1] == (
        f"dit-compress: error: {tmp_path / 'r.yaml'}:6: pass 2/2 (svd): {who} ended without a word (killed?); "
        f"{run_dir} keeps its work (1 of 2 passes done): --resume continues from pass 2 (whose keys may change)")


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), MainStopped("rank 0 of this launch stopped: see its message")])
def test_a_follower_stopped_on_request_is_not_named_as_the_launchs_failure(tmp_path, monkeypatch, stop):
    """A Ctrl-C of the whole torchrun: rank 0 said 'interrupted; rank 1 of this launch stopped:
    KeyboardInterrupt', as if rank 1 had failed. A requested stop is answered as one: rank 0 names
    no follower for it, but does not wait before a data-parallel pass for one that will not come."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    answer(tmp_path, TOKEN, ready=PREPARED)
    with pytest.raises(type(stop)):
        with following(tmp_path):
            raise stop
    monkeypatch.setenv("RANK", "0")
    assert "stopped" not in json.loads((tmp_path / f"{ANSWER}-1").read_text())
    assert check_followers(tmp_path)[1]["interrupted"] is True
    with pytest.raises(UserError, match="rank 1 of this launch was interrupted .* with --resume"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=5)


def test_a_follower_under_another_launcher_here_says_at_once_that_its_rank_0_was_killed(tmp_path, launch):
    """Two 'nodes' on one host: the follower had answered rank 0, which was then killed (kill -9,
    nothing marked); it waited 10 minutes and said rank 0 'has not started' (main_of_launch takes no
    dead rank 0 of another launcher). The rank 0 it follows, gone on this host: one line at once.
    A relaunch on the same static port (same key, started near, alive) is not taken for it either."""
    _record(tmp_path, ppid=-1, **{"pass": -1})  # a live rank 0 under another launcher (this process)
    main = wait_for_main(tmp_path, lambda got: True, poll=0.01)["token"]
    _record(tmp_path, ppid=-1, pid=_dead_pid(), **{"pass": -1})  # then killed
    with pytest.raises(PeerLost, match=r"rank 0 of this launch \(pid \d+\) ended without a word \(killed\?\): "
                                       "start the launch again with --resume"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    _record(tmp_path, ppid=-1, pid=_dead_pid(), stopped=True, **{"pass": -1})  # ended on its error, then gone
    with pytest.raises(MainStopped, match="rank 0 of this launch stopped: see its message"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    _record(tmp_path, ppid=-1, token="relaunched", **{"pass": 0})  # a new launch's rank 0, alive, same key
    with pytest.raises(PeerLost, match="ended: another process .* now writes its hand-off file, a relaunch"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=30, main=main)
    (tmp_path / HANDOFF).unlink()  # gone: not 'has not started' once it had answered
    with pytest.raises(UserError, match="stopped answering in the run folder"):
        wait_for_hand_off(tmp_path, -1, poll=0.01, find_main_s=0.1, main=main)


def test_a_follower_names_rank_0_where_a_collective_lost_it_here(tmp_path, launch, monkeypatch):
    """A follower whose collective failed says rank 0 ended where its pid is gone on this host, and
    does not answer the failure as its own reason (rank 0 would name the wrong rank)."""
    from compress.runner_ranks import ended, peer_lost

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    _record(tmp_path, pid=_dead_pid())
    assert ended(tmp_path).startswith("rank 0 of this launch (pid ")
    _record(tmp_path)  # rank 0 alive: another follower ended
    assert ended(tmp_path) == "another process of this launch ended"
    answer(tmp_path, TOKEN, ready=PREPARED)
    lost = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:21182")
    assert peer_lost(lost) and not peer_lost(RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(RuntimeError):
        with following(tmp_path):
            raise lost
    assert json.loads((tmp_path / f"{ANSWER}-2").read_text())["ready"] == PREPARED
