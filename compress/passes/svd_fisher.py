"""Output-side weights for target linears: how much each output direction moves the prediction.

A linear's error E x (a modulation linear on c = silu(temb), an attention projection, ...) reaches
the final prediction through the Jacobian J = ∂pred/∂y. To first order the
prediction error is Σ_s ||J_s E c_s||², which we approximate by tr(F E G Eᵀ) with the output Fisher
F = Σ_s J_sᵀ J_s (Kronecker approximation, as K-FAC). F is estimated with random probes v ~ N(0, I):
E[(Jᵀv)(Jᵀv)ᵀ] = JᵀJ, one backward per probe for all the named linears at once (a zero probe added to each output
keeps the graph whole, so chained linears each get their full Jacobian).
The weighted problem min tr(F E G Eᵀ) is the plain whitened one for V = L W, L = (F + λI)^{1/2}:
W' = L⁻¹ V'_r (see `weighted_factors` in svd_layer).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from compress.replay import Prefix, replaying

F64 = torch.float64


@contextlib.contextmanager
def tapped(model: nn.Module, names: list[str]):
    """Forward hooks on the named linears for the duration: yields (inputs, outputs), name -> the
    layer's last input (detached) and a zero tensor added to its output, whose gradient is ∂/∂y
    (the graph stays whole, so chained linears each get their full Jacobian)."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(mod, args, out):
            inputs[name] = args[0].detach()
            z = torch.zeros_like(out, requires_grad=True)
            outputs[name] = z
            return out + z
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def output_fisher(model: nn.Module, adapter, batches: list[dict], names: list[str], probes: int = 4,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> F (out, out) float64 = Σ over samples and probes of gᵀg, g = ∂<v, pred>/∂y."""
    fisher: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    with tapped(model, names) as (_, outputs):
        for batch in batches:
            with torch.enable_grad():
                _probe([adapter.predict(model, batch)], names, outputs, probes, gen, fisher)
    return fisher


def _probe(ends: list[torch.Tensor], names: list[str], outputs: dict, probes: int, gen: torch.Generator,
           fisher: dict[str, torch.Tensor]) -> None:
    """Add Σ over probes v ~ N(0, I) of gᵀg, g = ∂ Σ<v, end>/∂y, to fisher[name] for each tapped y."""
    ys = [outputs[n] for n in names]
    for p in range(probes):
        total = sum((e * torch.randn(e.shape, generator=gen).to(e.device, e.dtype)).sum() for e in ends)
        grads = torch.autograd.grad(total, ys, retain_graph=p < probes - 1, allow_unused=True)
        for n, g in zip(names, grads):
            if g is None:
                raise RuntimeError(f"'{n}' does not reach the probed output")
            rows = g.detach().reshape(-1, g.shape[-1]).to(F64)  # (samples, out)
            fisher[n] = fisher.get(n, 0) + rows.T @ rows


def block_fisher(model: nn.Module, adapter, block: nn.Module, inputs: list, names: list[str],
                 probes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> F (out, out) float64 = Σ over samples and probes of gᵀg, g = ∂<v, h>/∂y with h the
    block's residual-stream outputs (`adapter.hidden_of_output`) and v ~ N(0, I): the output Fisher
    of the block alone, for linears of `block` run on `inputs` [(args, kwargs)]. Needs only that
    block's weights, so it works where the whole model's backward does not (streamed weights);
    it weighs output directions by their effect on the block's output, not on the prediction."""
    fisher: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    with tapped(model, names) as (_, outputs):
        for args, kwargs in inputs:
            with torch.enable_grad():
                ends = adapter.hidden_of_output(adapter.run_block(block, args, kwargs))
                _probe(ends, names, outputs, probes, gen, fisher)
    return fisher


def prediction_gradients(model: nn.Module, adapter, batches: list[dict], references: list[torch.Tensor],
                         names: list[str], prefix: Prefix | None = None) -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (M (out, in) float64, rows): M = Σ_rows g xᵀ, the gradient of ½ Σ ||pred − ref||² over
    the batches with respect to the linear's weight, where g = ∂/∂y at its output and x its input.
    With `references` the predictions of the model before compression, M says how the layer can undo
    the error that the already compressed layers left in the prediction (first order).
    prefix: a `replay.Prefix` over these batches starting at or before the named linears' block."""
    moments: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    with tapped(model, names) as (inputs, outputs):
        for b, (batch, ref) in enumerate(zip(batches, references)):
            with torch.enable_grad(), replaying(prefix, b):
                pred = adapter.predict(model, batch)
                loss = 0.5 * (pred.double() - ref.double()).square().sum()
                grads = torch.autograd.grad(loss, [outputs[n] for n in names])
            for n, g in zip(names, grads):
                x = inputs[n].reshape(-1, inputs[n].shape[-1]).to(F64)  # (rows, in)
                g = g.detach().reshape(-1, g.shape[-1]).to(F64)  # (rows, out)
                moments[n] = moments.get(n, 0) + g.T @ x
                rows[n] = rows.get(n, 0) + x.shape[0]
    return {n: (moments[n], rows[n]) for n in names}


def sqrt_pair(fisher: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L = (F + λI)^{1/2} and L⁻¹, λ = damping · mean eigenvalue (keeps L invertible)."""
    f = 0.5 * (fisher + fisher.T)
    vals, vecs = torch.linalg.eigh(f)
    lam = damping * float(vals.clamp_min(0).mean()) or 1.0
    root = (vals.clamp_min(0) + lam).sqrt()
    return (vecs * root) @ vecs.T, (vecs / root) @ vecs.T


def fisher_chunks(infos: list, budget_bytes: float) -> list[list[str]]:
    """Target names in groups whose float64 output Fishers (out² · 8 bytes each) fit the budget
    (a layer bigger than the budget gets a group of its own)."""
    chunks, size = [[]], 0.0
    for info in infos:
        need = 8.0 * info.out_features**2
        if chunks[-1] and size + need > budget_bytes:
            chunks, size = chunks + [[]], 0.0
        chunks[-1].append(info.name)
        size += need
    return [c for c in chunks if c]
