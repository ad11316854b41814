"""How many output Fishers one backward sweep measures at once: the bytes fisher_memory_gb gives a sweep
(a number of GiB, or auto: a share of the memory free when the sweeps start), the targets in groups whose
Fishers as measured (svd_fisher.fisher_bytes) and taps fit it, and what `plan` says of the sweeps."""

from __future__ import annotations

import torch
from torch import nn

from compress.passes.svd_fisher import fisher_bytes

AUTO_SHARE = 0.5  # fisher_memory_gb: auto takes this share of the memory free when the sweeps start
AUTO_MIN_GB = 1.0  # ... at least this much
FALLBACK_GB = 2.0  # ... or this much where the free memory is unknown


def fisher_budget(setting: float | str, device: torch.device | str, resident: float = 0) -> float:
    """Bytes of Fishers one backward sweep (or fisher: block's chunk of a block's targets) may hold,
    and of square roots `Roots` keeps: `setting` GiB, or for "auto" `auto_budget` of the memory free
    on `device` now. The run calls it once teacher, student and calibration inputs are there; plan
    (plan_fisher, on `plan_device`) with `resident`, its estimate of what they will hold."""
    if setting != "auto":
        return float(setting) * 2**30
    from compress.runner_memory import free_memory

    return auto_budget(free_memory(torch.device(device)), resident)


def auto_budget(free: float | None, resident: float = 0) -> float:
    """fisher_memory_gb: auto's bytes per sweep: AUTO_SHARE of the `free` bytes less `resident` ones
    (the other share is left to the sweep's backward), at least AUTO_MIN_GB; FALLBACK_GB where `free`
    is unknown."""
    if free is None:
        return FALLBACK_GB * 2**30
    return max(AUTO_SHARE * max(free - resident, 0), AUTO_MIN_GB * 2**30)


def plan_device(setting: str = "auto") -> torch.device:
    """Where plan measures the memory free for fisher_memory_gb: auto: the recipe's `device` as the run
    resolves it (runner_setup.resolve_device): auto is this machine's GPU, else its CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else setting)


def fisher_plan(infos: list, rows: dict, memory_gb: float | str, checkpointing: bool) -> dict:
    """What `plan` says of the prediction's Fishers of `infos`: the whole-model backward sweeps
    they take, the bytes of the largest sweep's Fishers (at most the budget, unless one target's
    alone is more) and the disk they take while the pass runs (disk_bytes; disk_gib: the same in GiB,
    rounded to 0.01, kept for scripts that read it). fisher_memory_gb "auto": sized at the memory free
    on this machine's device now, until `settle_auto` takes off what the run holds by the time the
    sweeps start (plan_memory; the run measures it again); "target_bytes" (each target's Fisher, in
    order) is kept for that."""
    size = {i.name: fisher_bytes(i.out_features, rows.get(i.name)) for i in infos}
    free = None
    if memory_gb == "auto":
        from compress.runner_memory import free_memory

        free = free_memory(plan_device())
    out = {"targets": len(infos), "gradient_checkpointing": checkpointing, "memory_gb": memory_gb,
           "free_bytes": free, "target_bytes": [size[i.name] for i in infos],
           "disk_bytes": sum(size.values()), "disk_gib": round(sum(size.values()) / 2**30, 2)}
    return sized(out, auto_budget(free) if memory_gb == "auto" else fisher_budget(memory_gb, "cpu"))


def settle_auto(fisher: dict, resident: int) -> dict:
    """A `fisher_plan` of fisher_memory_gb auto sized as the run sizes it: AUTO_SHARE of what is
    free once `resident` bytes (teacher, student, calibration inputs: plan_memory's estimate) are
    there, not of what is free now. Drops target_bytes (plan --json stays short)."""
    if fisher["memory_gb"] == "auto" and fisher["free_bytes"] is not None:
        fisher = sized(fisher, auto_budget(fisher["free_bytes"], resident))
        fisher["resident_bytes"] = int(resident)
    return {k: v for k, v in fisher.items() if k != "target_bytes"}


def sized(fisher: dict, budget: float) -> dict:
    """`fisher` (a fisher_plan) with its sweeps, per-sweep budget and largest sweep at `budget`."""
    groups = _groups(fisher["target_bytes"], budget)
    return {**fisher, "sweep_gib": round(budget / 2**30, 1), "sweeps": len(groups),
            "sweep_bytes": max((sum(g) for g in groups), default=0)}


# A sweep holds per tapped target, beside its Fisher and what autograd keeps: the zero tensor added to
# its output (its tap) and the gradient of the probe at hand (_probe drops the one before it first):
# two of its outputs.
TAP_COPIES = 2


def sweep_share(out: int, rows: int | None, output: int) -> int:
    """Bytes one target takes of a sweep's budget: its Fisher as measured (`fisher_bytes`) and
    TAP_COPIES of its `output` (bytes of its output on one calibration batch)."""
    return fisher_bytes(out, rows) + TAP_COPIES * output


def fisher_chunks(infos: list, budget_bytes: float, rows=None, outputs=None) -> list[list[str]]:
    """Target names in groups whose Fishers as measured (`fisher_bytes`: F, out² · 8 bytes, or
    rows[name] gradient rows where given and fewer than out) and taps (outputs[name]: bytes of its
    output on one calibration batch, where given; `sweep_share`) fit the budget (a layer bigger than
    the budget gets a group of its own)."""
    rows, outputs = rows or {}, outputs or {}
    names = iter([i.name for i in infos])
    sizes = [sweep_share(i.out_features, rows.get(i.name), outputs.get(i.name, 0)) for i in infos]
    return [[next(names) for _ in g] for g in _groups(sizes, budget_bytes)]


def sweep_chunks(model: nn.Module, adapter, batches: list[dict], infos: list, budget_bytes: float,
                 rows=None) -> list[list[str]]:
    """`fisher_chunks` of the output Fisher's targets `infos`, their taps counted at their outputs'
    sizes on the first (largest) calibration batch (`output_sizes`: one forward without autograd)."""
    if not infos or not batches:
        return []
    outputs = output_sizes(model, adapter, batches[0], [i.name for i in infos])
    return fisher_chunks(infos, budget_bytes, rows, outputs)


def block_chunks(model: nn.Module, adapter, block: nn.Module, inputs: list, infos: list, budget_bytes: float,
                 rows=None) -> list[list[str]]:
    """`fisher_chunks` of fisher: block's targets `infos` of `block` (block_fisher), their taps counted
    at their outputs' sizes on its first (largest) calibration input [(args, kwargs)] (one run of the
    block without autograd), as `sweep_chunks` counts the output Fisher's."""
    if not infos or not inputs:
        return []
    args, kwargs = inputs[0]
    outputs = _sizes(model, [i.name for i in infos], lambda: adapter.run_block(block, args, kwargs))
    return fisher_chunks(infos, budget_bytes, rows, outputs)


def _groups(sizes: list, budget_bytes: float) -> list[list]:
    """`sizes` in order, in groups that fit the budget (one bigger than it gets a group of its own)."""
    groups, total = [[]], 0.0
    for need in sizes:
        if groups[-1] and total + need > budget_bytes:
            groups, total = groups + [[]], 0.0
        groups[-1].append(need)
        total += need
    return [g for g in groups if g]


def output_sizes(model: nn.Module, adapter, batch: dict, names: list[str]) -> dict[str, int]:
    """name -> bytes of the named linear's output on `batch` (one forward without autograd): what a
    sweep's tap of it and a probe's gradient each hold (`fisher_chunks`' outputs)."""
    return _sizes(model, names, lambda: adapter.predict(model, batch))


def _sizes(model: nn.Module, names: list[str], run) -> dict[str, int]:
    """name -> bytes of the named linear's output in `run()` (called without autograd)."""
    sizes: dict[str, int] = {}

    def make_hook(name):
        def hook(mod, args, out):
            sizes[name] = out.numel() * out.element_size()
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return sizes
