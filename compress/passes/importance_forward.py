"""The forwards an importance scan runs on a resident model (importance.py): a clean one keeping every
block's input and output, one keeping only each block's cosine proxy, and one with a block skipped (the
blocks before it replayed from the clean one's outputs, compress.replay); the cosine proxy of a block.
Each is the model's own diffusers forward, with hooks or replay stubs on its blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.inputs import moved
from compress.replay import replayed


def _prediction(model, adapter, kwargs: dict) -> torch.Tensor:
    """The prediction a sampler uses (PixArt: without the learned-variance half)."""
    return adapter.sampled_prediction(model, adapter.predict(model, kwargs))


def to_model(batch: dict, model: nn.Module) -> dict:
    """The batch where the model's resident weights are (streamed: its top level, not a meta block)."""
    p = next(p for p in model.parameters() if p.device.type != "meta")
    return moved(batch, p.device, p.dtype)


def clean_pass(model, adapter, kwargs: dict):
    """One normal forward. Returns (pred, inputs, outputs): per block in execution order, its input and
    output in the block's output form (so inputs[i + 1] is outputs[i])."""
    blocks = [blk for _, _, blk in adapter.iter_blocks(model)]
    first, outputs = [], []

    def grab_first(mod, args, kw):
        first.append(adapter.skipped_output(adapter.hidden_of(args, kw)))

    hooks = [blocks[0].register_forward_pre_hook(grab_first, with_kwargs=True)]
    hooks += [b.register_forward_hook(lambda m, a, o: outputs.append(o)) for b in blocks]
    try:
        pred = _prediction(model, adapter, kwargs)
    finally:
        for h in hooks:
            h.remove()
    return pred, first[:1] + outputs[:-1], outputs


def proxy_pass(model, adapter, kwargs: dict):
    """One normal forward keeping only each block's cosine proxy (B,) per block in execution
    order: two blocks' activations alive at a time, not every block's (streamed models)."""
    blocks = [blk for _, _, blk in adapter.iter_blocks(model)]
    last, cos = [], []

    def grab_first(mod, args, kw):
        last.append(adapter.skipped_output(adapter.hidden_of(args, kw)))

    def each(mod, args, out):
        cos.append(block_cosine(adapter, last.pop(), out))
        last.append(out)

    hooks = [blocks[0].register_forward_pre_hook(grab_first, with_kwargs=True)]
    hooks += [b.register_forward_hook(each) for b in blocks]
    try:
        pred = _prediction(model, adapter, kwargs)
    finally:
        for h in hooks:
            h.remove()
    return pred, cos


def skip_prediction(model, adapter, kwargs: dict, i: int, inputs: list, outputs: list) -> torch.Tensor:
    """The model's prediction with block i (execution order) skipped; blocks before it replayed."""
    with replayed(model, adapter, outputs[:i] + [inputs[i]]):
        return _prediction(model, adapter, kwargs)


def block_cosine(adapter, block_in, block_out) -> torch.Tensor:
    """(B,) mean over the tokens of every residual stream of cos(input, output)."""
    cos = [F.cosine_similarity(a.float(), b.float(), dim=-1).flatten(1)  # (B, N_stream)
           for a, b in zip(adapter.hidden_of_output(block_in), adapter.hidden_of_output(block_out))]
    return torch.cat(cos, dim=1).mean(dim=1).double().cpu()


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """(B,) squared norm of each row of x (B, ...), in float64 on the CPU."""
    return x.double().flatten(1).pow(2).sum(1).cpu()  # (B,)
