"""Runs of several processes: rank 0 runs the passes, the other ranks join the data-parallel ones from
the student it hands over (compress/runner_ranks.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.errors import UserError
from compress.runner_lock import LOCK, STARTED, TOKEN, hold_run_folder
from compress.runner_ranks import HANDOFF, hand_off, main_of_launch, wait_for_hand_off

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def launch(monkeypatch):
    """This process seen as part of a launch at 127.0.0.1:29999 (what torchrun sets)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "t")
    return "127.0.0.1:29999/t"


def test_a_follower_takes_the_hand_off_of_its_launchs_rank_0_only(tmp_path, launch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / HANDOFF).write_text(json.dumps({"token": "an-earlier-launch", "pass": 3, "stage": None}))
    with hold_run_folder(run_dir):  # rank 0's lock record: this launch, this process alive
        record = json.loads((run_dir / LOCK).read_text())
        assert record["launch"] == launch and record["token"] == TOKEN
        timer = threading.Timer(0.3, hand_off, (run_dir, 1, tmp_path / "stage"))
        timer.start()
        got = wait_for_hand_off(run_dir, -1, poll=0.05)
        timer.join()
        assert got == {"token": TOKEN, "pass": 1, "stage": str((tmp_path / "stage").resolve())}
        hand_off(run_dir, None, None)
        assert wait_for_hand_off(run_dir, 1, poll=0.05)["pass"] is None
        hand_off(run_dir, 1, None)  # a pass it has run already: waits for a later one
        with pytest.raises(UserError, match="rank 0 of this launch stopped before handing pass 3"):
            threading.Timer(0.3, (run_dir / LOCK).unlink).start()  # as rank 0's release
            wait_for_hand_off(run_dir, 1, poll=0.05)


def test_a_follower_without_its_rank_0_stops_in_one_line(tmp_path, launch, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"launch": "127.0.0.1:29999/other", "token": "x", "since": STARTED,
                                            "pid": os.getpid(), "host": "h"}))
    with pytest.raises(UserError, match=r"rank 0 of this launch \(127.0.0.1:29999/t\) has not taken the run folder"):
        wait_for_hand_off(run_dir, -1, poll=0.01, find_main_s=0.1)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UserError, match="RANK is 1 but MASTER_ADDR / MASTER_PORT are not set"):
        wait_for_hand_off(run_dir, -1)


def test_a_stale_lock_record_is_not_taken_for_rank_0(launch):
    import socket

    mine = {"launch": launch, "token": "t", "since": STARTED, "pid": os.getpid(), "host": socket.gethostname()}
    assert main_of_launch(mine, launch) == mine
    assert main_of_launch(dict(mine, since=STARTED - 3600), launch) is None  # an earlier launch, killed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert main_of_launch(dict(mine, pid=int(dead.stdout)), launch) is None
    assert main_of_launch(dict(mine, pid=int(dead.stdout), host="elsewhere"), launch) == \
        dict(mine, pid=int(dead.stdout), host="elsewhere")  # another host's pid: not checked here
    assert main_of_launch(dict(mine, launch="127.0.0.1:29998/t"), launch) is None


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
