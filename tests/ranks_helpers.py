"""Shared by the tests of runs of several processes (test_runner_ranks, test_runner_answers): the
launch's environment, hand-off files as rank 0 writes them, a recipe with a data-parallel pass and
its two Runners (rank 0's, a follower's)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from compress.runner_ranks import HANDOFF, hand_off


def launch_env(monkeypatch) -> str:
    """This process seen as part of a launch at 127.0.0.1:29999 (what torchrun sets): its key."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "t")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    return "127.0.0.1:29999/t/0"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@contextmanager
def running():
    """The pid of a running child of this process: a rank 0 whose launcher (this process) runs."""
    child = subprocess.Popen(["sleep", "100"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


@contextmanager
def zombie():
    """The pid of a child killed (kill -9) and not yet reaped: a zombie, as a worker its launcher has
    not reaped yet."""
    child = subprocess.Popen(["sleep", "100"])
    try:
        child.kill()  # (not waited)
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z"
        yield child.pid
    finally:
        child.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def handed(run_dir: Path, **changes) -> None:
    """A hand-off file as rank 0 writes it, with `changes`, replaced at once (a follower polling
    run_dir took the plain hand-off written on the way to it: the tests were flaky under load)."""
    draft = run_dir.parent / f"{run_dir.name}.draft"
    hand_off(draft, 0, None)
    record = dict(json.loads((draft / HANDOFF).read_text()), **changes)
    (draft / HANDOFF).write_text(json.dumps(record))
    (draft / HANDOFF).replace(run_dir / HANDOFF)


RECIPE = """\
version: 1
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 2, timesteps: 1, batch_size: 8, seed: 0, heldout: 8}
passes:
  - svd: {targets: [mlp], ratio: 0.5, compensate: false}
  - distill: {data: toy, steps: 2, batch_size: 4, lr: 0.0005, warmup_steps: 0, progress: false}
"""
SVD_ONLY = RECIPE.split("  - distill")[0]  # no data-parallel pass: the followers have nothing to run


def runners(tmp_path, monkeypatch, follower_sets: list[str], main_sets: list[str] = (), recipe: str = RECIPE):
    """(rank 0's Runner, a follower's Runner: RANK 1) of `recipe` with each its --set; the follower's
    prepare (its teacher load, then its compute) fails the test."""
    from compress.recipe import load_recipe
    from compress.runner import Runner

    (tmp_path / "r.yaml").write_text(recipe)
    monkeypatch.setenv("WORLD_SIZE", "2")
    main = Runner(load_recipe(tmp_path / "r.yaml", list(main_sets)), tmp_path / "out", tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    follower = Runner(load_recipe(tmp_path / "r.yaml", follower_sets), tmp_path / "out", tmp_path / "run")
    monkeypatch.setattr(Runner, "prepare", lambda self: pytest.fail("the follower went on to load and compute"))
    return main, follower
