"""Data flow inside one block (DESIGN.md `calib.py`): which of its stages (the stats keys its targets
read, `svd_walk.stages`) read a tensor that some other stage's linears make. Within-block sequential
calibration (`svd_walk.in_order`) re-runs a block once per *level* of stages that do not depend on
each other (Flux: the image and text streams until the joint attention mixes them), instead of once
per stage.

The dependency is read off autograd, not module names: one forward of the block on one row of a
calibration batch with grad enabled, a zero scalar added to the output of each stage's linears, and,
per stage, torch.autograd.grad of its reader's inputs with respect to the other stages' zeros:
no path (None) means no dependency. That is the graph's structure, not a value (a gate that happens
to be 0 still counts), so a dependency is never missed where the block is differentiable; a block
that hides a path from autograd (detach, no_grad, integer ops on activations) would hide it here too.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def first_row(hidden_rows: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The block inputs (args, kwargs) of the first sample: tensors (top level, or values of a dict)
    whose leading dim is the batch's `hidden_rows`; the rest (Flux's rotary tuple, ids) as given."""
    if hidden_rows == 1:
        return args, kwargs

    def row(v):
        if isinstance(v, dict):
            return {k: row(x) for k, x in v.items()}
        if torch.is_tensor(v) and v.ndim and v.shape[0] == hidden_rows:
            return v[:1]
        return v

    return tuple(row(a) for a in args), {k: row(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def _probed(model: nn.Module, readers: list[str | None], linears: list[list[str]], like: torch.Tensor):
    """Hooks for the duration: yields (inputs, zeros, fired); inputs[s] lists every input of stage s's
    reader module (one per call; none for a stage without one), zeros[s] a scalar leaf added to the
    outputs of stage s's linears, fired the names of the modules that ran."""
    inputs: list[list[torch.Tensor]] = [[] for _ in readers]
    zeros = [torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True) for _ in linears]
    fired: set[str] = set()

    def read(s, name):
        def hook(mod, args):
            fired.add(name)
            if args and torch.is_tensor(args[0]):
                inputs[s].append(args[0])
        return hook

    def tap(s, name):
        def hook(mod, args, out):
            fired.add(name)
            return out + zeros[s].to(out.dtype)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(read(s, n))
               for s, n in enumerate(readers) if n is not None]
    handles += [model.get_submodule(n).register_forward_hook(tap(s, n))
                for s, names in enumerate(linears) for n in names]
    try:
        yield inputs, zeros, fired
    finally:
        for h in handles:
            h.remove()


def dependencies(model: nn.Module, adapter, block: nn.Module, args: tuple, kwargs: dict,
                 readers: list[str | None], linears: list[list[str]]) -> list[set[int]] | None:
    """deps[s] = {t ≠ s: the input of stage s's reader module (`readers[s]`, a module name; every call
    of it; None: a stage of model-wide inputs only, which depends on nothing) depends on the output
    of some linear of stage t (`linears[t]`, module names)}, from one
    forward of `block` on (args, kwargs) (one row: `first_row`) and one partial backward per stage.
    None where a reader or a linear did not run in that forward (nothing to read the flow from)."""
    like = adapter.hidden_of(args, kwargs)[0]
    with _probed(model, readers, linears, like) as (inputs, zeros, fired), torch.enable_grad():
        adapter.run_block(block, args, kwargs)
        if not fired >= {n for n in readers if n is not None} | {n for names in linears for n in names}:
            return None
        deps = []
        for s, xs in enumerate(inputs):
            xs = [x for x in xs if x.requires_grad]
            others = [t for t in range(len(linears)) if t != s]
            grads = torch.autograd.grad(xs, [zeros[t] for t in others], [torch.ones_like(x) for x in xs],
                                        retain_graph=True, allow_unused=True) if xs and others else ()
            deps.append({t for t, g in zip(others, grads) if g is not None})
    return deps
