"""Shared by the distill tests: a plain-SVD student, a fixed toy data pool, a run context and one
distill pass run."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.arch import get_adapter
from compress.distill_data import cond_of
from compress.lowrank import LowRankLinear
from compress.passes.base import RunContext
from compress.passes.distill import DistillConfig, DistillPass
from tests.conftest import model_inputs


def factorize(model, rank: int = 4):
    """Plain truncated SVD of every block linear -> LowRankLinear (in place)."""
    adapter = get_adapter(model)
    for info in adapter.linears(model):
        if info.group is None:
            continue
        parent_name, _, child = info.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        r = min(rank, len(s))
        setattr(parent, child, LowRankLinear.from_factors(u[:, :r] * s[:r], vh[:r], layer.bias))
    return model


def toy_data(model, n: int = 16, seed: int = 0):
    """A fixed pool of clean latents + cond; returns train_batch(batch_size, generator)."""
    kwargs = model_inputs(model, batch=n, seed=seed)
    latents, cond = kwargs["hidden_states"], cond_of(kwargs)
    shared = ("img_ids", "txt_ids", "added_cond_kwargs")

    def train_batch(batch_size, generator):
        rows = torch.randint(0, n, (batch_size,), generator=generator)
        return latents[rows], {k: v if k in shared else v[rows] for k, v in cond.items()}

    return train_batch


def context(teacher, run_dir, **kw):
    return RunContext(adapter=get_adapter(teacher), family=get_adapter(teacher).family, teacher=teacher,
                      run_dir=Path(run_dir), seed=0, train_batch=kw.pop("train_batch", toy_data(teacher)),
                      **kw)


def distill(student, teacher, run_dir, **cfg):
    ctx = context(teacher, run_dir, block_map=cfg.pop("block_map", None), resume=cfg.pop("resume", False))
    defaults = dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, progress=False,
                    plot=False)
    out = DistillPass(DistillConfig(**{**defaults, **cfg})).run(student, ctx)
    return out, ctx



def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
