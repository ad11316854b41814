"""Processes on this host, read from /proc where Linux has it (runner_ranks' hand-off checks): whether
one runs (a zombie does not), whether a launch's rank 0 outlived the launcher that started it, when
this process started. Imports no torch."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _process_start() -> float:
    """When this process started (Linux: from /proc, so the ranks of a launch, started together,
    agree whatever their imports took); elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def orphaned(record: dict) -> bool:
    """A hand-off `record` written on this host whose rank 0 runs on without the launcher that started
    it (its launcher was killed: the workers of an earlier launch, reparented, still run)."""
    pid, launcher = record.get("pid"), record.get("ppid")
    parent = _stat_fields(pid)
    if parent is not None:  # (Linux) its parent now: another process than its launcher once that ended
        return len(parent) > 1 and parent[1] != str(launcher)
    return isinstance(launcher, int) and not alive(launcher)


def _stat_fields(pid) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name (state, ppid, ...), None where not readable."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid) -> bool:
    """Whether process `pid` runs on this host: a zombie (ended, not yet reaped by its launcher) or a
    dying one ('Z', 'X' in /proc/PID/stat) does not; os.kill(pid, 0) where /proc cannot tell."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields:
        return fields[0] not in ("Z", "X", "x")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
