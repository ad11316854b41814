"""Output-side weights for target linears: how much each output direction moves the prediction.

A linear's error E x (a modulation linear on c = silu(temb), an attention projection, ...) reaches
the final prediction through the Jacobian J = ∂pred/∂y. To first order the
prediction error is Σ_s ||J_s E c_s||², which we approximate by tr(F E G Eᵀ) with the output Fisher
F = Σ_s J_sᵀ J_s (Kronecker approximation, as K-FAC). F is estimated with random probes v ~ N(0, I):
E[(Jᵀv)(Jᵀv)ᵀ] = JᵀJ, one backward per probe for all the named linears at once (a zero probe added to each output
keeps the graph whole, so chained linears each get their full Jacobian).
The weighted problem min tr(F E G Eᵀ) is the plain whitened one for V = L W, L = (F + λI)^{1/2}:
W' = L⁻¹ V'_r (see `weighted_factors` in svd_layer; L and L⁻¹ are svd_fisher_roots').

A Fisher is kept as measured (`FisherSum`): while a target has fewer gradient rows than outputs
(a modulation linear has one row per sample and probe: about 1.4k for flux-dev-modulation against
out = 18432) as those rows, (rows, out) float32, else as F (out, out) float64. So one backward
sweep can probe many more of such targets at once (svd_fisher_budget.fisher_chunks).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.replay import Prefix, replaying

if TYPE_CHECKING:
    from compress.passes.svd_fisher_roots import Roots

F64 = torch.float64
ROW_BYTES = 4  # gradient rows kept in float32: the probes' Monte-Carlo noise is far above its rounding


def fisher_bytes(out: int, rows: int | None) -> int:
    """Bytes of one target's Fisher as measured: `rows` gradient rows (None: too many to count)."""
    return ROW_BYTES * rows * out if rows is not None and rows < out else 8 * out * out


class FisherSum:
    """Σ gᵀg over gradient rows g (n, out), kept as the rows while there are fewer than `out`
    of them, as F (out, out) float64 from then on."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []  # (n, out) float32 blocks
        self.count = 0  # rows added
        self.fisher: torch.Tensor | None = None  # (out, out) float64

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().reshape(-1, g.shape[-1])  # (n, out)
        self.count += g.shape[0]
        if self.fisher is None and self.count < g.shape[1]:
            self.rows.append(g.float())
            return
        if self.fisher is None:
            self.fisher = sum((r.T.to(F64) @ r.to(F64) for r in self.rows), torch.zeros((), dtype=F64))
            self.rows = []
        g = g.to(F64)
        self.fisher = self.fisher + g.T @ g

    def value(self) -> torch.Tensor:
        """F (out, out) float64, or the rows (n < out, out) float32 it sums."""
        return self.fisher if self.fisher is not None else torch.cat(self.rows)


def is_rows(measured: torch.Tensor) -> bool:
    """Whether a measured Fisher (`FisherSum.value`) is kept as its gradient rows."""
    return measured.shape[0] < measured.shape[1]


def dense_fisher(measured: torch.Tensor) -> torch.Tensor:
    """F (out, out) float64 of a measured Fisher."""
    if not is_rows(measured):
        return measured
    rows = measured.to(F64)
    return rows.T @ rows


@contextlib.contextmanager
def checkpointed(model: nn.Module, on: bool = True):
    """diffusers' gradient checkpointing of the model's blocks for the duration: a backward through
    the whole model (the prediction's Fisher, compensation's gradient) then keeps each block's
    inputs instead of every activation, and runs each block's forward again during the backward.
    Flux.1-dev at 1024² would otherwise keep about 24 GiB per calibration sample, 2.1 GiB with it
    (`tools/bench_backward_memory.py`). Same gradients (tested)."""
    if not on or not getattr(model, "_supports_gradient_checkpointing", False):
        yield
        return
    was = bool(getattr(model, "gradient_checkpointing", False))
    model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was:
            model.disable_gradient_checkpointing()


@contextlib.contextmanager
def tapped(model: nn.Module, names: list[str], keep_inputs=False):
    """Forward hooks on the named linears for the duration: yields (inputs, outputs), name -> the
    layer's last input (detached; only with `keep_inputs`, else inputs stays empty; a callable
    `keep_inputs`: what it returns of the input, which is then not kept) and a zero tensor
    added to its output, whose gradient is ∂/∂y (the graph stays whole, so chained linears each get
    their full Jacobian). While a backward runs (gradient checkpointing's rerun of a block's forward)
    the hooks add a zero of their own and keep it nowhere: the rerun must save the tensors the
    forward saved (the same ops needing grad), but its zeros get no gradient and are not taps."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(mod, args, out):
            if in_backward():  # the rerun builds the forward's graph again: untapped, its own zero
                return out + torch.zeros_like(out, requires_grad=True)
            if keep_inputs:  # a callable keeps what it makes of the input instead (not the input)
                x = args[0].detach()
                inputs[name] = keep_inputs(x) if callable(keep_inputs) else x
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


def in_backward() -> bool:
    """Whether autograd is running a backward in this thread (gradient checkpointing's rerun of a forward)."""
    return torch._C._current_graph_task_id() != -1


def output_fisher(model: nn.Module, adapter, batches: list[dict], names: list[str], probes: int = 4,
                  seed: int = 0, tick=lambda: None, guide=None) -> dict[str, torch.Tensor]:
    """name -> F = Σ over samples and probes of gᵀg, g = ∂<v, pred>/∂y, as measured (`FisherSum`:
    F (out, out) float64 or its rows; `dense_fisher` gives F). `tick` after each batch. guide: a
    guided.CalibrationGuidance: pred is then each batch's guided prediction (its rows' pairs combined)."""
    fisher: dict[str, FisherSum] = {}
    gen = torch.Generator().manual_seed(seed)
    at = [0]  # the batch the forward runs
    shared = (lambda x: guide.shared(x, at[0])) if guide is not None else False  # noqa: E731
    with tapped(model, names, keep_inputs=shared) as (same, outputs):  # name -> whether each pair's input is one
        for b, batch in enumerate(batches):
            at[0] = b
            with torch.enable_grad():
                pred = adapter.predict(model, batch)
                if guide is None:
                    _probe([pred], names, outputs, probes, gen, fisher)
                else:  # a pair's rows of a layer whose input is the pair's one: one row (CalibrationGuidance.shared)
                    merged = {n: guide.pairs[b] for n in names if same.get(n)}
                    _probe([guide.of(pred, b)], names, outputs, probes, gen, fisher, merged)
            tick()
    return {n: f.value() for n, f in fisher.items()}


def sweeps(model: nn.Module, adapter, batches: list[dict], chunks: list[list[str]], probes: int,
           roots: "Roots", progress: bool = True, guide=None) -> None:
    """The output Fishers of each chunk of target names (`fisher_chunks`), one backward sweep over
    the batches per chunk, into `roots`; a progress bar over the sweeps and their batches."""
    from compress.progress import bar as progress_bar

    with progress_bar(progress and bool(chunks)) as bar:
        task = bar.add_task("output Fishers", total=len(chunks) * len(batches))
        for k, names in enumerate(chunks, 1):
            bar.update(task, description=f"output Fishers (sweep {k} of {len(chunks)}):")
            tick = lambda: bar.advance(task)  # noqa: E731
            for name, fisher in output_fisher(model, adapter, batches, names, probes, seed=0, tick=tick,
                                              guide=guide).items():
                roots.add(name, fisher, next(model.parameters()).dtype)


def _probe(ends: list[torch.Tensor], names: list[str], outputs: dict, probes: int, gen: torch.Generator,
           fisher: dict[str, FisherSum], merged: dict | None = None) -> None:
    """Add the rows g = ∂ Σ<v, end>/∂y of each probe v ~ N(0, I) to fisher[name] for each tapped y.
    merged: name -> (rows u, rows c) whose gradients are summed into one row each (g[u] + g[c])."""
    merged = merged or {}
    ys = [outputs[n] for n in names]
    for p in range(probes):
        total = sum((e * torch.randn(e.shape, generator=gen).to(e.device, e.dtype)).sum() for e in ends)
        grads = torch.autograd.grad(total, ys, retain_graph=p < probes - 1, allow_unused=True)
        for n, g in zip(names, grads):
            if g is None:
                raise RuntimeError(f"'{n}' does not reach the probed output")
            if n in merged:
                g = g[merged[n][0].to(g.device)] + g[merged[n][1].to(g.device)]  # (pairs, ..., out)
            fisher.setdefault(n, FisherSum()).add(g)  # (samples, out) rows
        grads = g = None  # not held while the next probe's backward runs


def block_fisher(model: nn.Module, adapter, block: nn.Module, inputs: list, names: list[str],
                 probes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> F (out, out) float64 = Σ over samples and probes of gᵀg, g = ∂<v, h>/∂y with h the
    block's residual-stream outputs (`adapter.hidden_of_output`) and v ~ N(0, I), as measured
    (`FisherSum`): the output Fisher
    of the block alone, for linears of `block` run on `inputs` [(args, kwargs)]. Needs only that
    block's weights, so it works where the whole model's backward does not (streamed weights);
    it weighs output directions by their effect on the block's output, not on the prediction."""
    fisher: dict[str, FisherSum] = {}
    gen = torch.Generator().manual_seed(seed)
    with tapped(model, names) as (_, outputs):
        for args, kwargs in inputs:
            with torch.enable_grad():
                ends = adapter.hidden_of_output(adapter.run_block(block, args, kwargs))
                _probe(ends, names, outputs, probes, gen, fisher)
    return {n: f.value() for n, f in fisher.items()}


def prediction_gradients(model: nn.Module, adapter, batches: list[dict], references: list[torch.Tensor],
                         names: list[str], prefix: Prefix | None = None,
                         guide=None) -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (M (out, in) float64, rows): M = Σ_rows g xᵀ, the gradient of ½ Σ ||pred − ref||² over
    the batches with respect to the linear's weight, where g = ∂/∂y at its output and x its input.
    With `references` the predictions of the model before compression, M says how the layer can undo
    the error that the already compressed layers left in the prediction (first order).
    prefix: a `replay.Prefix` over these batches starting at or before the named linears' block.
    guide: a guided.CalibrationGuidance: pred and ref are then each batch's guided predictions."""
    moments: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    with tapped(model, names, keep_inputs=True) as (inputs, outputs):
        for b, (batch, ref) in enumerate(zip(batches, references)):
            with torch.enable_grad(), replaying(prefix, b):
                pred = adapter.predict(model, batch)
                if guide is not None:
                    pred, ref = guide.of(pred, b), guide.of(ref, b)
                loss = 0.5 * (pred.double() - ref.double()).square().sum()
                grads = torch.autograd.grad(loss, [outputs[n] for n in names])
            for n, g in zip(names, grads):
                x = inputs[n].reshape(-1, inputs[n].shape[-1]).to(F64)  # (rows, in)
                g = g.detach().reshape(-1, g.shape[-1]).to(F64)  # (rows, out)
                moments[n] = moments.get(n, 0) + g.T @ x
                rows[n] = rows.get(n, 0) + x.shape[0]
    return {n: (moments[n], rows[n]) for n in names}
