"""The skip scan with block weights streamed (recipe `stream: true`): every block read once per batch.

The resident scan (importance.scan) keeps every block's output of a clean forward and, for each
skipped block i, replays blocks 0..i-1 and re-runs blocks i+1..: block j is run by the clean
forward and by every skip of an earlier block, so with weights read from disk it would be read
N(N+1)/2 times per batch. Here the same block evaluations are ordered by block instead of by skip
(a wavefront): one *stream* of block inputs per skip, started when its block is reached (its
output := its input), and each block, once read, runs on the clean stream and on every stream
started before it. So each block is read once per batch; the cost is holding up to N + 1 streams'
residual activations at the last block (Flux.1-dev at 1024²: about 28 MB per sample and stream in
bf16, so 1.6 GB per sample) where the resident scan holds N block outputs.

Inputs pass from block to block with `adapter.next_inputs`, as block-by-block calibration chains
them; the predictions come from the model's own forward with every block replaced by a stub that
returns a stream's last output (replay.replayed), so the embeddings and the output head run the
diffusers code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from compress.arch.base import Adapter
from compress.calib_store import BlockLoader
from compress.replay import first_inputs, replayed


def replay_prediction(model: nn.Module, adapter: Adapter, kwargs: dict, last_output) -> torch.Tensor:
    """The model's prediction when its last block outputs `last_output` (every block a stub)."""
    n = sum(adapter.block_counts(model).values())
    with replayed(model, adapter, [last_output] * n):
        return adapter.predict(model, kwargs)


@torch.no_grad()
def wave_pass(model: nn.Module, adapter: Adapter, kwargs: dict, loader: BlockLoader,
              block_cosine: Callable, tick: Callable[[], None] = lambda: None):
    """One batch of the skip scan, each block read once (`loader.materialize`, then `unload`).
    Returns (clean prediction, [cosine proxy (B,) per block], [prediction with block i skipped]),
    blocks in execution order. `tick` is called after each block."""
    clean = first_inputs(model, adapter, kwargs)  # (args, kwargs) of the next block
    streams: list[tuple[tuple, dict]] = []  # stream i: block i skipped; its next block's inputs
    last: list = []  # each stream's latest block output (the tensors its inputs hold: no copy)
    cosines, clean_out = [], None
    for group, index, block in adapter.iter_blocks(model):
        loader.materialize(group, index, block)
        try:
            clean_out = adapter.run_block(block, *clean)
            for i, s in enumerate(streams):  # each stream's inputs are dropped as it advances
                last[i] = adapter.run_block(block, *s)
                streams[i] = adapter.next_inputs(group, *s, last[i])
        finally:
            loader.unload(group, index, block)
        passed = adapter.skipped_output(adapter.hidden_of(*clean))  # this block skipped
        cosines.append(block_cosine(adapter, passed, clean_out))
        streams.append(adapter.next_inputs(group, *clean, passed))
        last.append(passed)
        clean = adapter.next_inputs(group, *clean, clean_out)
        tick()
    del streams, clean
    pred = replay_prediction(model, adapter, kwargs, clean_out)
    return pred, cosines, [replay_prediction(model, adapter, kwargs, o) for o in last]
