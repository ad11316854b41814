"""Run by tests/passes/test_distill.py under `torchrun --nproc_per_node 2`: a few distill steps on a tiny
model in each of 2 CPU processes (gloo); each writes its final weights to OUT/weights_<rank>.pt. With a
signal's name after OUT (SIGTERM), rank 1 sends it to itself during its second step, and each rank
writes the exit status of its stop (TrainingInterrupted) to OUT/status_<rank>, its message to
OUT/message_<rank>."""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

import torch

from compress.passes.distill import DistillConfig, DistillPass
from compress.passes.distill_trainer import TrainingInterrupted
from tests.passes.distill_helpers import context, factorize, state, toy_data
from tests.conftest import tiny_pixart


def main(out: Path, stop: str | None = None) -> None:
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    rank = int(os.environ["RANK"])  # set by torchrun; the pass's Accelerator(cpu=True) joins the gloo group
    data, batches = toy_data(teacher), []

    def train_batch(batch_size, generator):
        batches.append(1)
        if stop and rank == 1 and len(batches) == 2:
            os.kill(os.getpid(), getattr(signal, stop))  # rank 1 alone is signalled
        return data(batch_size, generator)

    ctx = context(teacher, out, train_batch=train_batch)
    cfg = DistillConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, checkpoint_every=0, progress=False,
                        plot=False)
    if rank == 0:
        torch.save(state(student), out / "weights_start.pt")
    try:
        trained = DistillPass(cfg).run(student, ctx)
    except TrainingInterrupted as e:
        (out / f"status_{rank}").write_text(str(e.exit_code))
        (out / f"message_{rank}").write_text(str(e))
        return
    torch.save(state(trained), out / f"weights_{rank}.pt")
    assert ctx.report["distill"]["processes"] == 2


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
