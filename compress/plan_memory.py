"""Whether a run's estimated peak memory fits where it runs: `plan` shows the estimate and warns,
naming the recipe keys that drive it, when it is more than the machine (or the CUDA device) has.

The estimate adds up what `plan` already estimates (calib_footprint): the weights resident
throughout (teacher and student, or a streamed run's top levels and one block), the calibration
activations held while blocks are calibrated, and the largest of what a step holds for a while
(sequential calibration's one-row probe, a Fisher's whole-model backward of one calibration batch,
a streamed skip scan's residual streams). It compares against the device's total memory, not what is
free now: the run checks that again before it starts (runner_stream.warn_if_*).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from compress.calib_footprint import human_size
from compress.inputs import source_kind


def peak_memory(recipe, plan: dict, calibrates: bool) -> dict:
    """{"bytes": the run's estimated peak, "parts": [{"what", "bytes", "keys"}]} of a `make_plan`
    plan (calibration, backward, stream, passes); calibrates: some pass needs calibration."""
    f = plan["calibration"]
    held = [_weights(plan)]
    passing = []  # held by one step for a while: the largest counts
    if calibrates:
        held.append(_activations(recipe, plan))
        if f["probe_bytes"]:
            passing.append(_part("within-block sequential calibration's one-row probe", f["probe_bytes"],
                                 ["teacher"],
                                 " or ".join(f"{k}: false" for k in _svd_keys(recipe, "sequential"))))
    for index, step in enumerate(plan["passes"]):
        if "fisher" in step:
            passing.append(_fisher(plan, index, step["fisher"]))
        if "streamed_scan" in step:
            passing.append(_part("a streamed skip scan's residual streams of one batch",
                                 step["streamed_scan"]["batch_bytes"], ["calibration.batch_size", "teacher"]))
    parts = held + ([max(passing, key=lambda p: p["bytes"])] if passing else [])
    return {"bytes": sum(p["bytes"] for p in parts), "parts": parts}


def _part(what: str, size: int, keys: list[str], fix: str = "") -> dict:
    """What holds `size` bytes, the recipe keys that set how many, and a setting that holds fewer."""
    return {"what": what, "bytes": int(size), "keys": keys, "fix": fix}


def _weights(plan: dict) -> dict:
    itemsize = plan["calibration"]["itemsize"]  # the compute dtype's
    if plan.get("stream"):
        s, copies = plan["stream"], plan["calibration"]["block_copies"]
        params = 2 * s["top_level_params"] + copies * s["largest_block_params"]
        return _part("streamed weights (two top levels and a block)", params * itemsize, ["teacher", "compute_dtype"])
    return _part("teacher and student weights", 2 * plan["params_before"] * itemsize, ["teacher", "compute_dtype"],
                 "stream: true (svd passes)")


def _activations(recipe, plan: dict) -> dict:
    """Calibration's activations at a block: all of them, or one batch when spilled to disk."""
    f, c = plan["calibration"], recipe.calibration
    rows = _row_keys(recipe, plan["teacher"])
    if c.spill_activations:
        keys = ["calibration.batch_size"] + (rows if c.batch_size >= f["rows"] else [])
        return _part("calibration activations (one batch, spilled)", f["batch_bytes"], keys)
    return _part("calibration activations", f["bytes"], rows, "calibration.spill_activations: true")


def _row_keys(recipe, teacher: str) -> list[str]:
    """The recipe keys that set how many calibration rows there are and how long they are."""
    c, kind = recipe.calibration, source_kind(recipe.calibration, teacher)
    if kind == "toy":
        return ["calibration.num_prompts", "calibration.timesteps", "calibration.cfg_branches"]
    if kind == "synthetic":
        return ["calibration.num_prompts", "calibration.timesteps"]
    prompts = "calibration.prompt_file" if c.prompt_file else "calibration.prompts"
    return [prompts, "calibration.timesteps", "calibration.cfg_branches", "calibration.height", "calibration.width"]


def _fisher(plan: dict, index: int, fisher: dict) -> dict:
    """An svd pass's output Fisher: a whole-model backward of one calibration batch and its largest
    sweep's Fishers (fisher_plan's sweep_bytes: fisher_memory_gb is a limit per sweep, not what one
    holds; auto sizes itself to what is free, so it is not counted)."""
    plain, checkpointed = plan["backward"]
    size = checkpointed if fisher["gradient_checkpointing"] else plain
    if fisher["memory_gb"] != "auto":
        size += fisher["sweep_bytes"]  # at most the limit, unless one target's Fisher alone is more
    keys = ["calibration.batch_size"] + ([] if fisher["memory_gb"] == "auto" else [f"passes.{index}.svd.fisher_memory_gb"])
    fix = "" if fisher["gradient_checkpointing"] else f"passes.{index}.svd.gradient_checkpointing: true"
    return _part("an output Fisher's backward of one calibration batch", size, keys, fix)


def _svd_keys(recipe, option: str) -> list[str]:
    return [f"passes.{i}.svd.{option}" for i, spec in enumerate(recipe.passes) if spec.name == "svd"]


# ---- what the device has ------------------------------------------------------------------------
def device_memory(device: str) -> tuple[int, str] | None:
    """(bytes, name) of the memory of a recipe's `device` here: a CUDA device's total, else this
    machine's physical memory (within its cgroup's limit); None where unknown or not here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cuda"):
        total = machine_memory()
        return (total, "this machine") if total else None
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None  # make_plan notes it
    return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"


def machine_memory() -> int | None:
    """This machine's physical memory, or a smaller cgroup memory limit (a container's)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        total = None
    limits = [n for n in map(_read_int, ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
              if n]
    found = [n for n in [total, *limits] if n and n > 0]
    return min(found) if found else None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None


# ---- words --------------------------------------------------------------------------------------
def memory_words(memory: dict) -> str:
    """The peak estimate on a line: its total and what it is made of."""
    parts = ", ".join(f"{p['what']} {human_size(p['bytes'])}" for p in memory["parts"])
    return f"memory: about {human_size(memory['bytes'])} at the run's peak ({parts})"


def beyond_memory(memory: dict, have: tuple[int, str] | None) -> str | None:
    """A one-line warning when the estimated peak is more than `have` (device_memory): the parts
    that make most of it, each with the keys that drive it; None when it fits or is unknown."""
    if have is None or memory["bytes"] <= have[0]:
        return None
    big = sorted(memory["parts"], key=lambda p: -p["bytes"])
    big = [p for p in big if p["bytes"] >= memory["bytes"] / 10] or big[:1]
    drivers = "; ".join(f"{p['what']} {human_size(p['bytes'])} ({', '.join(p['keys'])}"
                        f"{'; or ' + p['fix'] if p['fix'] else ''})" for p in big)
    return (f"the run would hold about {human_size(memory['bytes'])} at its peak, more than the "
            f"{human_size(have[0])} {have[1]} has: {drivers}")
