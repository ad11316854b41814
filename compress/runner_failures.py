"""What a run (or a command) says when the machine runs short: out of memory (`OutOfMemory`, its
words, what in the recipe lowers memory) or of disk (`DiskFull`, for a write that failed for want of
space, quota or a writable file system): one line naming what was running and what to change, never
a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from compress.errors import UserError


class OutOfMemory(UserError):
    """An allocation failed (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError, MemoryError):
    one line naming what was running and what to change, never a traceback."""

    exit_code = 1
    label = "out of memory: "


_CPU_ALLOCATOR = ("can't allocate memory", "not enough memory")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is a failed allocation on the GPU or the CPU (not another RuntimeError)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (any(s in text for s in _CPU_ALLOCATOR) or "out of memory" in text)


def memory_in_words(e: BaseException) -> str:
    """'GPU memory (tried to allocate 20.00 GiB)' / 'CPU memory (tried to allocate 2980.2 GiB)'."""
    import re

    from compress.calib_footprint import human_size

    text = str(e)
    where = "GPU" if isinstance(e, torch.OutOfMemoryError) or "CUDA" in text else "CPU"
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", text)
    size = asked.group(1) if asked else None
    if size is None and (found := re.search(r"allocate (\d+) bytes", text)):
        size = human_size(int(found.group(1)))
    return f"{where} memory" + (f" (tried to allocate {size})" if size else "")


class DiskFull(UserError):
    """A write failed for want of space or quota, or on a read-only file system: one line naming what
    was running, why, where, and what the run folder keeps, never a traceback."""

    exit_code = 1
    label = "cannot write: "


TOO_LARGE = "the file is larger than this file system or the file-size limit allows (FAT32: 4 GiB; ulimit -f)"
_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EFBIG: TOO_LARGE}
_DISK_TEXTS = {"No space left on device": _DISK_ERRNOS[errno.ENOSPC], "os error 28": _DISK_ERRNOS[errno.ENOSPC],
               "Disk quota exceeded": _DISK_ERRNOS[errno.EDQUOT], "os error 122": _DISK_ERRNOS[errno.EDQUOT],
               "Read-only file system": _DISK_ERRNOS[errno.EROFS], "os error 30": _DISK_ERRNOS[errno.EROFS],
               "File too large": TOO_LARGE, "os error 27": TOO_LARGE}


def disk_full_words(e: BaseException) -> str | None:
    """'no space left on the device (PATH)' where `e` is a failed write for want of space, quota or a
    writable file system (an OSError, or safetensors' / torch's errors that only say it in words);
    None for any other error."""
    said = _disk_full(e)
    return None if said is None else said[0] + (f" ({said[1]})" if said[1] else "")


def _disk_full(e: BaseException) -> tuple[str, str | None] | None:
    """(why in words, the file named or None) where `e` is a failed write (`disk_full_words`), else None."""
    if isinstance(e, UserError):  # already one line saying where (io_atomic._temp_beside ...)
        return None
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return _DISK_ERRNOS[e.errno], e.filename
    text = str(e)
    return next(((words, None) for key, words in _DISK_TEXTS.items() if key in text), None)


def disk_full_line(e: BaseException, doing: str, folder: Path, flag: str | None) -> str:
    """'PATH: no space left on the device, during DOING; free space there, or give FLAG on another
    disk' for a failed write `e` (`disk_full_words`): PATH is the file `e` names, else `folder`, where
    the run was writing (safetensors' "os error 28" names no file); FLAG, the option that moves it."""
    why, path = _disk_full(e)
    return f"{path or folder}: {why}, during {doing}; {disk_fix(why, flag)}"


def disk_fix(why: str, flag: str | None) -> str:
    """What to do about a failed write `why` (`_DISK_ERRNOS`' words): FLAG names the place elsewhere
    (run's '--out', a command's 'an output folder'; None: no option moves it)."""
    if why == TOO_LARGE:  # more space changes nothing
        return "raise ulimit -f, or use a file system that takes larger files" if flag is None else \
            f"give {flag} on a file system that takes larger files (not FAT32), or raise ulimit -f"
    if flag is None:
        return "make it writable" if "read-only" in why else "free space there"
    fix = "give" if "read-only" in why else "free space there, or give"
    return f"{fix} {flag} on another disk"


HELDOUT = "the teacher's held-out predictions"  # the runner's phase of that name


def memory_hints(recipe, passes, doing, spill_short: str = "") -> str:
    """What in `recipe` lowers the memory of pass `doing` (an index into `passes`) or of a phase of
    the run (its words), as 'a, b or c'. `spill_short`: why calibration's activations would not fit the
    run folder's disk spilled (runner_memory.spill_short): fewer calibration inputs, not a spill, then."""
    p = passes[doing] if isinstance(doing, int) and doing < len(passes) else None
    calibrated = getattr(p, "needs_calibration", False)
    hints = []
    checkpointed = p is not None and p.name == "distill"  # (its checkpoints: --resume keeps them by the pass's keys)
    if p is not None and hasattr(p.config, "batch_size"):
        hints.append(f"a smaller passes.{doing}.{p.name}.batch_size"
                     + (" (which trains the pass from its start)" if checkpointed else ""))
    if calibrated or doing == HELDOUT:
        hints.append("a smaller calibration.batch_size")
    if p is not None and getattr(p.config, "gradient_checkpointing", None) is False:
        hints.append(f"passes.{doing}.{p.name}.gradient_checkpointing: true"
                     + (" (which keeps its checkpoints)" if checkpointed else ""))
    if recipe.compute_dtype == "float32":
        hints.append("compute_dtype: bfloat16")
    if not recipe.stream and _streamable(p):
        hints.append("stream: true")
    if calibrated and not recipe.calibration.spill_activations:
        hints.append(f"fewer calibration inputs ({spill_short})" if spill_short
                     else "calibration.spill_activations: true")
    if not hints:
        return "a machine with more memory"
    return ", ".join(hints[:-1]) + f" or {hints[-1]}" if len(hints) > 1 else hints[0]


def _streamable(p) -> bool:
    """Whether pass p (None: no pass) can run with stream: true."""
    try:
        p is None or p.check_streaming()
    except UserError:
        return False
    return True
