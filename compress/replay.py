"""Forwards that start at a block: earlier blocks stand in as stubs returning recorded outputs.

Blocks are swapped for `Replay` stubs inside the real diffusers forward, so embeddings, the glue
between block groups and the output head still run the model's own code (no fork). Used by the
importance scan (skip one block, replay the ones before it; streamed, every block a stub for the
head, `first_inputs` for the first block) and by the svd pass's compensation (every candidate of a
stage changes only that stage's block and later ones, so the blocks before it are run once per
stage instead of once per candidate).
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch
from torch import nn

from compress.arch.base import Adapter
from compress.calib import _detach


class Replay(nn.Module):
    """Stands in for a block: returns a fixed output without compute."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def slots(model: nn.Module, adapter: Adapter) -> list[tuple[nn.ModuleList, int]]:
    """(module list, position) of every block in execution order."""
    return [(adapter.blocks(model, g), i) for g, i, _ in adapter.iter_blocks(model)]


@contextmanager
def replayed(model: nn.Module, adapter: Adapter, outputs: list):
    """Blocks 0..len(outputs)-1 (execution order) replaced by stubs returning outputs[j]; restored
    afterwards."""
    where = slots(model, adapter)
    saved = [blocks[i] for blocks, i in where[:len(outputs)]]
    try:
        for (blocks, i), out in zip(where, outputs):
            blocks[i] = Replay(out)
        yield
    finally:
        for (blocks, i), blk in zip(where, saved):
            blocks[i] = blk


class _Stop(Exception):
    """Ends a recording forward once what it records has run."""


def first_inputs(model: nn.Module, adapter: Adapter, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) the model hands its first block for these forward kwargs; only the top level
    runs (the first block may still be on the meta device)."""
    _, _, first = next(adapter.iter_blocks(model))
    got = []

    def grab(mod, args, kw):
        got.append((args, kw))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with contextlib.suppress(_Stop):
            adapter.predict(model, kwargs)
    finally:
        handle.remove()
    return got[0]


class Prefix:
    """Forwards over fixed `batches` that run only blocks `start`.. (execution order) and what follows
    them; the output of block start−1 on each batch is recorded at first use (one forward per batch
    that stops there) and replayed by every block before `start`. Valid while nothing before block
    `start` changes. start = 0: plain forwards (nothing recorded).

    Memory: one block output per batch (Flux-dev at 1024², batch 2: about 57 MB in bf16)."""

    def __init__(self, model: nn.Module, adapter: Adapter, batches: list[dict], start: int):
        self.model, self.adapter, self.batches, self.start = model, adapter, batches, start
        self._outputs: list | None = None

    def _record(self) -> list:
        blocks, i = slots(self.model, self.adapter)[self.start - 1]
        outputs = []

        def grab(mod, args, out):
            outputs.append(_detach(out))
            raise _Stop

        handle = blocks[i].register_forward_hook(grab)
        try:
            with torch.no_grad():
                for batch in self.batches:
                    with contextlib.suppress(_Stop):
                        self.adapter.predict(self.model, batch)
        finally:
            handle.remove()
        if len(outputs) != len(self.batches):
            raise RuntimeError(f"block {self.start - 1} (execution order) did not run for every batch")
        return outputs

    @contextmanager
    def replaying(self, b: int):
        """Within: a forward of batch b runs from block `start` on."""
        if self.start == 0:
            yield
            return
        if self._outputs is None:
            self._outputs = self._record()
        with replayed(self.model, self.adapter, [self._outputs[b]] * self.start):
            yield


def replaying(prefix: Prefix | None, b: int):
    """Context for a forward of batch b: `prefix.replaying(b)`, or nothing without a prefix."""
    return prefix.replaying(b) if prefix else contextlib.nullcontext()
