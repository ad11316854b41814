"""The distill pass's checkpoints (passes/distill_checkpoints.py) on tiny random diffusers models: one
on a full disk is ENOSPC naming it, a damaged one falls back to the one before (in one process or
two), and none that reads whole is one line saying what to do."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.distill_utils import read_curves
from compress.errors import UserError
from compress.passes.distill import DistillConfig
from compress.passes.distill_trainer import StepLimitReached
from tests.conftest import tiny_pixart
from tests.passes.distill_helpers import distill, factorize, state

HERE = Path(__file__).parent

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("full", [True, "size limit", False], ids=["disk full", "size limit", "room left"])
def test_a_checkpoint_on_a_full_disk_is_enospc_naming_it_and_leaves_no_half_checkpoint(tmp_path, monkeypatch, full):
    """torch's zip writer says 'unexpected pos' when the disk fills: a traceback, where the run's one-line
    disk-full error reads ENOSPC. With room left the error is not called a full disk. A file that reached
    the file-size limit (ulimit -f: its 4 bytes here) was a traceback too: EFBIG."""
    import errno

    from compress import calib_store

    def cut_short(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    monkeypatch.setattr(torch, "save", cut_short)
    monkeypatch.setattr(calib_store, "disk_is_full", lambda folder: full is True)
    monkeypatch.setattr(calib_store, "file_size_limit", lambda: 4 if full == "size limit" else None)
    with pytest.raises(OSError if full else RuntimeError) as caught:
        distill(student, teacher, tmp_path, steps=2, checkpoint_every=1)
    checkpoints = tmp_path / "distill" / "checkpoints"
    if full:
        assert caught.value.errno == (errno.ENOSPC if full is True else errno.EFBIG)
        assert caught.value.filename == str(checkpoints / "tmp-step-00000001")
        assert list(checkpoints.iterdir()) == []
    else:
        assert "unexpected pos" in str(caught.value)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(min(1000, path.stat().st_size // 2))


_DAMAGE = {
    "model truncated": lambda c: _truncate(c / "model.safetensors"),
    "meta.json deleted": lambda c: (c / "meta.json").unlink(),
    "meta.json not JSON": lambda c: (c / "meta.json").write_text("{bad"),
    "meta.json nested too deep": lambda c: (c / "meta.json").write_text("[" * 100_000),  # (a RecursionError)
    "train state truncated": lambda c: _truncate(c / "train_state_0.pt"),
    "optimizer truncated": lambda c: _truncate(c / "optimizer.bin"),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, damage, capsys):
    """A checkpoint cut short (disk full, a kill mid-write) or missing a file gave a traceback on
    --resume and the older kept checkpoint went unused: the resume warns, naming the damaged one,
    continues from the newest that reads whole, and ends where an uninterrupted run ends."""
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, max_steps_this_run=2)
    checkpoints = tmp_path / "distill" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]
    _DAMAGE[damage](checkpoints / "step-00000002")
    capsys.readouterr()
    from compress.passes.distill_resume import check_resumable_configs

    check_resumable_configs(tmp_path, [DistillConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1)])
    resumed, _ = distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, resume=True)
    err = capsys.readouterr().err
    assert f"warning: distill: checkpoint {checkpoints / 'step-00000002'} is damaged (" in err
    assert f"distill: continuing from its checkpoint at step 1/4 ({checkpoints / 'step-00000001'})" in err
    assert "\n" not in err.split("warning: ")[1].split("the newest that reads whole")[0]
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=4)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_curves(tmp_path / "distill" / "loss.csv")) == 4


def test_no_checkpoint_that_reads_whole_is_one_line_saying_what_to_do(tmp_path):
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, max_steps_this_run=2)
    checkpoints = tmp_path / "distill" / "checkpoints"
    _truncate(checkpoints / "step-00000002" / "model.safetensors")
    (checkpoints / "step-00000001" / "meta.json").write_text("{bad")
    with pytest.raises(UserError) as refused:
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, resume=True)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"distill: checkpoint {checkpoints / 'step-00000002'} is damaged (SafetensorError: ")
    assert message.endswith(
        f"), as is the older one; delete {checkpoints} to train this pass from "
        "its start, or rerun with --restart to start over")  # (a pass made alone, data: toy: --resume keeps none)


_TWO_PROCS_DAMAGED = '''
import copy, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from compress.passes.distill import DistillConfig, DistillPass
from compress.passes.distill_trainer import StepLimitReached
from tests.conftest import tiny_pixart
from tests.passes.distill_helpers import context, factorize, state

out = Path(sys.argv[1])
teacher = tiny_pixart()
student = factorize(copy.deepcopy(teacher))
cfg = dict(steps=4, batch_size=4, lr=1e-2, warmup_steps=0, checkpoint_every=1, progress=False, plot=False)
try:
    DistillPass(DistillConfig(**cfg, max_steps_this_run=2)).run(copy.deepcopy(student), context(teacher, out))
except StepLimitReached:
    pass
rank = int(os.environ["RANK"])
if rank == 0:  # only process 1's own state is cut short: process 0 reads step 2 whole
    path = out / "distill" / "checkpoints" / "step-00000002" / "train_state_1.pt"
    path.write_bytes(path.read_bytes()[:100])
dist.barrier()
trained = DistillPass(DistillConfig(**cfg)).run(copy.deepcopy(student), context(teacher, out, resume=True))
torch.save(state(trained), out / f"weights_{rank}.pt")
'''


def test_two_processes_fall_back_to_the_same_checkpoint(tmp_path):
    """Where one process cannot read its part of the newest checkpoint, both continue from the one
    before it (else they would train out of step, or one would wait for the other forever)."""
    script = tmp_path / "two_procs_damaged.py"
    script.write_text(_TWO_PROCS_DAMAGED)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"weights_{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    checkpoints = tmp_path / "distill" / "checkpoints"
    assert f"checkpoint {checkpoints / 'step-00000002'} is damaged (process 1: " in proc.stderr
    assert f"continuing from its checkpoint at step 1/4 ({checkpoints / 'step-00000001'})" in proc.stderr


def _set_of(aside: Path, step: int) -> Path:
    """The folder under `aside` (or `aside`) holding the set whose newest checkpoint is step `step`."""
    (folder,) = {meta.parent.parent for meta in aside.rglob(f"step-{step:08d}/meta.json")}
    return folder


def _lr_of(folder: Path) -> float:
    """The lr the newest checkpoint in `folder` was trained with."""
    import json

    return json.loads(sorted(folder.glob("step-*/meta.json"))[-1].read_text())["settings"]["lr"]


def test_resume_sets_aside_each_set_of_other_keys_by_its_fingerprint(tmp_path, capsys):
    """--resume with another distill.lr sets the pass's checkpoints aside (in distill/checkpoints.discarded),
    saying where and how to take them back; a later such discard replaced the earlier one (the disk held the
    latest only): at lr 2e-3 then 3e-3 by mistake, the original lr-1e-3 training was gone. Now each set is kept
    in a folder named by its fingerprint, and --resume at lr 1e-3 takes back the original, step 4."""
    teacher, student, run, kw = _stopped_at_step_4(tmp_path)
    root, aside = run / "distill" / "checkpoints", run / "distill" / "checkpoints.discarded"
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, lr=2e-3, max_steps_this_run=2, **kw)
    said = capsys.readouterr().err.replace("\n", " ")
    first = _set_of(aside, 4)
    assert (f"--resume moves {root} to {first} and trains this pass from its start; a --resume with the keys it was "
            "trained with takes it back (it is kept past this pass, until a later one with other settings ends)") \
        in said, said
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000001", "step-00000002"]  # trained anew
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, lr=3e-3, max_steps_this_run=1, **kw)
    assert [_lr_of(_set_of(aside, 4)), _lr_of(_set_of(aside, 2))] == [1e-3, 2e-3]
    capsys.readouterr()
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, max_steps_this_run=1, **kw)
    said = capsys.readouterr().err.replace("\n", " ")
    assert f"continuing from its checkpoint at step 4/6 ({root / 'step-00000004'})" in said, said
    assert sorted(_lr_of(s) for s in aside.iterdir()) == [2e-3, 3e-3]


def test_resume_with_the_original_keys_takes_back_the_checkpoints_set_aside(tmp_path, capsys):
    """A run stopped at step 4/6 (lr 1e-3), a --resume at lr 2e-3 by mistake (its checkpoints set aside,
    2 steps trained anew), then --resume at lr 1e-3 again: that set the lr-2e-3 checkpoints aside,
    replacing the original ones, and trained from step 0 (the original training lost by the rerun the
    line advised). Now it takes them back: it continues from step 4 and ends as an uninterrupted run does."""
    torch.manual_seed(0)
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    run, kw = tmp_path / "run", dict(steps=6, checkpoint_every=1, keep_checkpoints=2)
    whole, _ = distill(copy.deepcopy(student), teacher, tmp_path / "whole", **kw)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, max_steps_this_run=4, **kw)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, lr=2e-3, max_steps_this_run=2, **kw)
    root, aside = run / "distill" / "checkpoints", run / "distill" / "checkpoints.discarded"
    first = _set_of(aside, 4)
    capsys.readouterr()
    back, _ = distill(copy.deepcopy(student), teacher, run, resume=True, max_steps_this_run=2, **kw)
    said = capsys.readouterr().err.replace("\n", " ")
    (other,) = aside.iterdir()
    assert (f"distill: --resume takes back {first}, trained with these settings (step 4), and sets {root}, trained "
            f"with other settings (distill.lr: 0.002 in the checkpoint, 0.001 now), aside ({other})") in said, said
    assert f"continuing from its checkpoint at step 4/6 ({root / 'step-00000004'})" in said
    assert _lr_of(other) == 2e-3
    a, b = state(back), state(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _interrupted_at(monkeypatch, rename: int) -> None:
    """Path.replace stopped (KeyboardInterrupt, as a Ctrl-C) at its `rename`-th call, the ones before done."""
    replace, calls = Path.replace, []

    def stopping(self, target):
        calls.append(self)
        if len(calls) == rename:
            raise KeyboardInterrupt
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", stopping)


def _stopped_at_step_4(tmp_path):
    """(teacher, student, run folder, distill keys) of a 6-step distill stopped at step 4, a checkpoint
    at each step, two kept."""
    torch.manual_seed(0)
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    run, kw = tmp_path / "run", dict(steps=6, checkpoint_every=1, keep_checkpoints=2)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, max_steps_this_run=4, **kw)
    return teacher, student, run, kw


def test_a_take_back_stopped_between_its_renames_is_taken_back_by_the_next_resume(tmp_path, monkeypatch, capsys):
    """The take-back of test_resume_with_the_original_keys_takes_back_the_checkpoints_set_aside stopped between
    its two renames (the lr-2e-3 checkpoints set aside, the lr-1e-3 ones not yet in checkpoints): the next
    --resume takes them back, the lr-2e-3 ones kept."""
    teacher, student, run, kw = _stopped_at_step_4(tmp_path)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, lr=2e-3, max_steps_this_run=2, **kw)
    root, aside = run / "distill" / "checkpoints", run / "distill" / "checkpoints.discarded"
    with monkeypatch.context() as m:
        _interrupted_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            distill(copy.deepcopy(student), teacher, run, resume=True, max_steps_this_run=2, **kw)
    assert not root.exists() and len(list(aside.iterdir())) == 2
    capsys.readouterr()
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run, resume=True, max_steps_this_run=1, **kw)
    said = capsys.readouterr().err.replace("\n", " ")
    assert f"continuing from its checkpoint at step 4/6 ({root / 'step-00000004'})" in said, said
    assert [_lr_of(p) for p in aside.iterdir()] == [2e-3]


def test_a_train_state_written_on_cuda_is_read_onto_the_cpu(tmp_path, monkeypatch, capsys):
    """R2 stop 52: train_state_<rank>.pt was loaded with no map_location: a checkpoint whose tensors a GPU run's
    torch.save tagged as cuda's, resumed on a machine without one, was torch's 'Attempting to deserialize object
    on a CUDA device' read as damage ('distill: checkpoint ... is damaged (RuntimeError: Attempting to
    deserialize object on a CUDA device ...), as is the older one; delete ...'). Now read onto the cpu (the cpu
    generator's state, which set_state takes there): the resume goes on from step 2 and ends where an
    uninterrupted run ends. (A CPU-only torch cannot write cuda tensors: tagged as test_calib_spill_device.)"""
    from tests.test_calib_spill_device import saved_as_cuda

    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, max_steps_this_run=2)
    checkpoints = tmp_path / "distill" / "checkpoints"
    for path in checkpoints.glob("step-*/train_state_0.pt"):
        saved_as_cuda(monkeypatch, torch.load(path, weights_only=False), path)
    capsys.readouterr()
    resumed, _ = distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=1, resume=True)
    err = capsys.readouterr().err
    assert f"distill: continuing from its checkpoint at step 2/4 ({checkpoints / 'step-00000002'})" in err, err
    assert "damaged" not in err, err
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=4)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
