"""What the machine has to run on, read here: a recipe's device's memory (a CUDA device's total, else
this machine's physical memory within its cgroup's limit) and this machine's swap, that plan_memory
weighs a run's estimated peak against (plan's warning, run's refusal) and bench its inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


# ---- what the device has ------------------------------------------------------------------------
def device_memory(device: str) -> tuple[int, str] | None:
    """(bytes, name) of the memory of a recipe's `device` here: a CUDA device's total, else this
    machine's physical memory (within its cgroup's limit); None where unknown or not here."""
    device = device_name(device)
    if not device.startswith("cuda"):
        total = machine_memory()
        return (total, "this machine") if total else None
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None  # a GPU torch does not see: make_plan notes it (devices.unusable), the run refuses it
    return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"


def device_name(device: str) -> str:
    """A recipe's `device` with auto resolved as the run resolves it (runner_setup.resolve_device)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def machine_memory() -> int | None:
    """This machine's physical memory, or a smaller cgroup memory limit (a container's)."""
    total = _physical_memory()
    limits = [n for n in map(_read_int, ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
              if n]
    found = [n for n in [total, *limits] if n and n > 0]
    return min(found) if found else None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return None


def machine_swap() -> int:
    """This machine's swap (SwapTotal of /proc/meminfo, within its cgroup v2 memory.swap.max: a container's
    0 lets it none) where no cgroup limit binds below its physical memory (a container's limit holds its
    swap apart); else 0. Only run's refusal counts it: a run through swap crawls."""
    total = _physical_memory()
    if total is None or (machine_memory() or 0) < total:
        return 0
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return 0
    kib = [line.split()[1] for line in lines if line.startswith("SwapTotal:")]
    swap = int(kib[0]) * 1024 if kib and kib[0].isdigit() else 0
    limit = _read_int("/sys/fs/cgroup/memory.swap.max")  # None: "max" (no limit), or no cgroup v2
    return swap if limit is None else min(swap, max(limit, 0))


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None
