"""Run by tests/passes/test_distill.py under `torchrun --nproc_per_node 2`: a few distill steps on a tiny
model in each of 2 CPU processes (gloo); each writes its final weights to OUT/weights_<rank>.pt."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

from compress.passes.distill import DistillConfig, DistillPass
from tests.passes.distill_helpers import context, factorize, state, toy_data
from tests.conftest import tiny_pixart


def main(out: Path) -> None:
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    ctx = context(teacher, out, train_batch=toy_data(teacher))
    cfg = DistillConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, checkpoint_every=0, progress=False,
                        plot=False)
    rank = int(os.environ["RANK"])  # set by torchrun; the pass's Accelerator(cpu=True) joins the gloo group
    if rank == 0:
        torch.save(state(student), out / "weights_start.pt")
    trained = DistillPass(cfg).run(student, ctx)
    torch.save(state(trained), out / f"weights_{rank}.pt")
    assert ctx.report["distill"]["processes"] == 2


if __name__ == "__main__":
    main(Path(sys.argv[1]))
