"""What an svd pass's output Fishers hold, for plan's peak memory (plan_memory.peak_memory): the
whole-model backward of one calibration batch with its largest sweep's Fishers, what a sweep taps (each
target's zero tap and a probe's gradient, chunked as the pass chunks them: svd_fisher_budget.fisher_chunks), a
block's own output Fisher (fisher: block) and the Fishers' square roots the pass keeps (svd_fisher_roots.Roots).
"""

from __future__ import annotations

from types import SimpleNamespace

from compress.passes.svd_targets import is_model_wide


def part(what: str, size: int, keys: list[str], fix: str = "") -> dict:
    """What holds `size` bytes, the recipe keys that set how many, and a setting that holds fewer."""
    return {"what": what, "bytes": int(size), "keys": keys, "fix": fix}


def tap(info) -> dict:
    """What an output Fisher's sweep needs of a target to count what tapping it holds (fisher_sweep;
    peak_memory drops these from the plan)."""
    return {"name": info.name, "role": info.role, "part": info.part, "group": info.group, "block": info.block,
            "shared": info.group is not None and is_model_wide(info), "out": info.out_features}


def fisher_backward(plan: dict, index: int, fisher: dict) -> dict:
    """An svd pass's output Fisher: a whole-model backward of one calibration batch and its largest
    sweep's Fishers (fisher_plan's sweep_bytes: fisher_memory_gb is a limit per sweep, not what one
    holds; auto sizes itself to what is free, so it is not counted)."""
    plain, checkpointed = plan["backward"]
    size = checkpointed if fisher["gradient_checkpointing"] else plain
    keys = ["calibration.batch_size"]
    what = "an output Fisher's backward of one calibration batch"
    if fisher["memory_gb"] != "auto":
        size += fisher["sweep_bytes"]  # at most the limit, unless one target's Fisher alone is more
        keys.append(f"passes.{index}.svd.fisher_memory_gb")
        what += " and its largest sweep's Fishers"
    fix = "" if fisher["gradient_checkpointing"] else f"passes.{index}.svd.gradient_checkpointing: true"
    return part(what, size, keys, fix)


def on_device(fisher: dict, device: str) -> dict:
    """A fisher_plan (measured on svd_fisher_budget.plan_device()'s free memory, the pass's plan knowing no
    recipe) with fisher_memory_gb auto's free memory that of the recipe's `device` where that is
    another (device: cpu on a machine with a GPU)."""
    from compress.passes.svd_fisher_budget import plan_device
    from compress.runner_memory import free_memory

    if fisher["memory_gb"] != "auto" or plan_device(device) == plan_device():
        return fisher
    return {**fisher, "free_bytes": free_memory(plan_device(device))}


def budget(c, step: dict, resident: float, device: str = "auto") -> float:
    """Bytes of Fishers per sweep (or block chunk) and of square roots kept, as the svd pass with config
    `c` sizes them (svd_fisher_budget.fisher_budget) once the run holds `resident` bytes (plan_memory's
    estimate): auto at the memory free that fisher_plan measured (step["fisher"], a prediction's
    Fisher), else at what is free now on `device` (the recipe's)."""
    from compress.passes.svd_fisher_budget import auto_budget, fisher_budget, plan_device

    if c.fisher_memory_gb == "auto" and "fisher" in step:
        return auto_budget(step["fisher"]["free_bytes"], resident)
    return fisher_budget(c.fisher_memory_gb, plan_device(device), resident)


def fisher_sweep(recipe, plan: dict, index: int, fisher: dict, taps: list[dict], resident: float) -> tuple[dict, dict]:
    """What an svd pass's output Fisher sweep holds for one calibration batch beside the backward and
    the Fishers: its targets' taps and a probe's gradients (calib_footprint.sweep_held_bytes), at the
    sweep that holds most; and `fisher` (a settled fisher_plan) with the sweeps and the largest sweep's
    Fishers as the pass chunks them, taps counted (svd_fisher_budget.fisher_chunks, sweep_chunks).
    taps: svd_statistics' of the pass's targets; resident: what the run holds as the sweeps start."""
    from compress.calib_footprint import sweep_held_bytes
    from compress.passes.svd_decisions import prediction_fisher
    from compress.passes.svd_fisher import fisher_bytes
    from compress.passes.svd_fisher_budget import fisher_chunks

    c, itemsize = recipe.passes[index].config, plan["calibration"]["itemsize"]
    targets = _tapped(recipe, plan, index, [t for t in taps if prediction_fisher(c, SimpleNamespace(role=t["role"]))])
    rows = {t["name"]: t["fisher_rows"] for t in targets if t["fisher_rows"]}
    outputs = {t["name"]: t["out"] * t["rows"] * itemsize for t in targets}
    chunks = fisher_chunks(_infos(targets), budget(c, {"fisher": fisher}, resident, recipe.device), rows, outputs)
    size = {t["name"]: fisher_bytes(t["out"], t["fisher_rows"]) for t in targets}
    if targets:
        fisher = {**fisher, "sweeps": len(chunks), "sweep_bytes": max(sum(size[n] for n in ch) for ch in chunks)}
    keys = ["calibration.batch_size", f"passes.{index}.svd.targets"]
    held = part("an output Fisher sweep's taps of its targets and a probe's gradients",
                sweep_held_bytes(targets, chunks, itemsize),
                keys + ([] if fisher["memory_gb"] == "auto" else [f"passes.{index}.svd.fisher_memory_gb"]))
    return held, fisher


def block_fishers(recipe, plan: dict, taps: dict[int, list[dict]], resident: float) -> list[dict]:
    """An svd pass with fisher: block measures each block's targets' output Fishers at that block
    (svd_fisher.block_fisher, in chunks of at most fisher_memory_gb, taps counted: block_chunks): one block's backward of one
    calibration batch, the chunk's taps, a probe's gradients and its Fishers; the part
    of the block that holds most (none without such a pass; auto sized as the pass sizes it, `budget`).
    taps: svd_statistics' by pass index; resident: what the run holds as its walk starts."""
    from compress.calib_footprint import block_backward_bytes, sweep_held_bytes
    from compress.passes.svd_fisher import fisher_bytes
    from compress.passes.svd_fisher_budget import fisher_chunks

    f, found = plan["calibration"], []
    backward = block_backward_bytes(f)
    for index, block_taps in taps.items():
        c = recipe.passes[index].config
        if c.fisher != "block":
            continue
        chunk = budget(c, plan["passes"][index], resident, recipe.device)
        blocks = {}
        for t in _tapped(recipe, plan, index, [t for t in block_taps if t["group"] is not None]):
            blocks.setdefault((t["group"], t["block"]), []).append({**t, "fisher": fisher_bytes(t["out"], t["fisher_rows"])})
        for ts in blocks.values():
            chunks = fisher_chunks(_infos(ts), chunk, {t["name"]: t["fisher_rows"] for t in ts if t["fisher_rows"]},
                                   {t["name"]: t["out"] * t["rows"] * f["itemsize"] for t in ts})  # as block_chunks
            found.append((backward + sweep_held_bytes(ts, chunks, f["itemsize"]), index))
    if not found:
        return []
    size, index = max(found)
    return [part("a block's output Fisher (fisher: block): the block's backward of one calibration batch, its "
                  "targets' taps, a probe's gradients and Fishers", size,
                  ["calibration.batch_size", f"passes.{index}.svd.targets", f"passes.{index}.svd.fisher_memory_gb"])]


def fisher_roots(recipe, plan: dict, taps: dict[int, list[dict]], resident: float) -> list[dict]:
    """An svd pass keeps the square roots of its targets' output Fishers, L and L⁻¹ (out x out float64
    each, svd_fisher_roots.Roots), of the targets of the block (or the top level) it visits, until they pass
    fisher_memory_gb (the oldest then go; auto: `budget`; the newest is kept beside the limit);
    the block of the pass that keeps most, while its walk holds its statistics (none without an output
    Fisher). taps: by pass index; resident: what the run holds as its walk starts."""
    from compress.passes.svd_decisions import prediction_fisher

    found = []
    for index, pass_taps in taps.items():
        c, step = recipe.passes[index].config, plan["passes"][index]
        weighted = [t for t in pass_taps if (c.fisher == "block" and t["group"] is not None)
                    or prediction_fisher(c, SimpleNamespace(role=t["role"]))]
        if not weighted:
            continue
        blocks: dict[tuple, list[int]] = {}
        for t in weighted:  # as svd_fisher_roots.Roots' groups: the targets the walk visits together
            blocks.setdefault((t["group"], t["block"]), []).append(16 * t["out"] ** 2)
        keep = budget(c, step, resident, recipe.device)
        found.append((int(max(min(sum(pairs), keep + max(pairs)) for pairs in blocks.values())), index))
    if not found:
        return []
    size, index = max(found)
    return [part("the output Fishers' square roots kept for the block visited (L and L⁻¹, float64)", size,
                  [f"passes.{index}.svd.targets", f"passes.{index}.svd.fisher_memory_gb"])]


def _tapped(recipe, plan: dict, index: int, taps: list[dict]) -> list[dict]:
    """svd_statistics' taps of pass `index` with what calib_footprint.sweep_held_bytes reads: the rows of
    each one's output in one calibration batch, the rows its Fisher is measured as (fisher_rows: one a
    sample and probe where it reads one a sample, as the pass counts them; else None), whether that
    Fisher is dense (out x out float64)."""
    from compress.arch import get_adapter
    from compress.calib_footprint import tap_tokens, text_tokens
    from compress.passes.svd_fisher import fisher_bytes

    c, f, adapter = recipe.passes[index].config, plan["calibration"], get_adapter(plan["family"])
    batch = min(f["rows"], f["batch_rows"])
    text = text_tokens(recipe, f["source"], toy=f["toy_pipeline"])  # make_plan's source_kind and toy_pipeline
    out = []
    for tap in taps:
        per_sample = adapter.per_sample(SimpleNamespace(part=tap["part"]))
        rows = f["rows"] * c.fisher_probes if per_sample else None
        out.append({**tap, "rows": batch * tap_tokens(plan["family"], {**tap, "per_sample": per_sample}, f, text),
                    "fisher_rows": rows, "dense": fisher_bytes(tap["out"], rows) == 8 * tap["out"] ** 2})
    return out


def _infos(targets: list[dict]) -> list:
    """Stand-ins of LinearInfo for svd_fisher_budget.fisher_chunks."""
    return [SimpleNamespace(name=t["name"], out_features=t["out"]) for t in targets]
