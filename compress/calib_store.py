"""Where a block calibration's weights and activations live between uses.

`BlockLoader`: block weights just in time (`materialize` before a block runs, `release` after;
resident by default, `compress.stream.CheckpointBlocks` streams them from a checkpoint), and
`Unchanged` for a walk that changes no block. The stores on disk built on these files (`Spilled`,
`SpilledMap`, `NamedFiles`) are compress/calib_spill.py's. `save`:
torch.save that leaves no partial file and says a full disk as an OSError; `load_cached`: a cache file
read back, None (and a note) where it is damaged, for its caller to compute again; `Vanished`: a file
a store wrote gone from the disk meanwhile, an error naming it, never an item silently left out.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError


FULL = 1 << 20  # bytes free under which a failed write is taken for a full disk


class Vanished(UserError):
    """A file (or folder) the run wrote and still needs is gone from the disk: removed by something
    else while the run went on. The runner adds what was running and what the run folder keeps."""

    exit_code = 1


def vanished(path: Path, what: str = "file") -> Vanished:
    """'the run folder's file PATH vanished during the run (removed by another program?)' (`what`:
    file or folder)."""
    return Vanished(f"the run folder's {what} {path} vanished during the run (removed by another program?)")


def load(path: Path, **kwargs):
    """torch.load of a file this run wrote (weights only); gone: `Vanished` naming it."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise vanished(path) from None


def load_cached(path: Path, again: str, damaged_before: bool = False, **kwargs):
    """torch.load of a cache file an earlier run left in the run folder (weights only), or None where it
    is damaged (`damaged`: empty, cut short, overwritten), its caller computing what it held `again`
    ('sampled again', 'computed again') and writing it anew: said in a note naming it, unless its caller
    found one damaged before (`damaged_before`: one line, however many are). Gone meanwhile: `Vanished`;
    other trouble reading it (no permission, an I/O error, out of memory, an error of a file whose bytes are
    whole: `damaged_file`) is raised as it is."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise vanished(path) from None
    except Exception as e:
        if not damaged_file(path, e):
            raise
        if not damaged_before:
            empty = isinstance(e, EOFError) and path.stat().st_size == 0  # (an overwrite can end the pickle too)
            say_damaged(path, "empty" if empty else "not as torch.save wrote it", again)
        return None


def say_damaged(path: Path, why: str, again: str) -> None:
    """The note of a damaged cache file `path` of the run folder (`load_cached`, `NamedFiles`): `why`,
    and that what it held is `again` (and written anew), as any other damaged file of its folder."""
    from compress.report import note

    note(f"the run folder's file {path} is damaged ({why}: cut short or overwritten since?): {again}, as is any "
         "other damaged file in its folder")


def damaged(e: Exception) -> bool:
    """Whether torch.load's `e` (weights only: it runs none of our code) says the file's bytes are not
    what torch.save writes: an empty file (EOFError), garbage (UnpicklingError), a file cut short (a
    RuntimeError of the zip reader, or its OSError EINVAL), one overwritten (whatever the unpickler
    meets: UnicodeDecodeError, ValueError, IndexError, KeyError, struct.error ...); not a failed read
    (an OSError: EACCES, EIO) or allocation (MemoryError, out of memory)."""
    from compress.runner_failures import is_out_of_memory

    if isinstance(e, OSError):
        return e.errno == errno.EINVAL
    return not isinstance(e, MemoryError) and not is_out_of_memory(e)


def damaged_file(path: Path, e: Exception) -> bool:
    """Whether torch.load's `e` of the file `path` is its bytes damaged: an error of the kind damage raises
    (`damaged`) and the file no longer the bytes torch.save wrote (not `intact`), or an UnpicklingError (a
    whole archive holding what a weights-only load refuses, as an older writer's or a torch that allows
    less may: it never reads back, so it is computed again as damage is: R2 stop 51). Another error of a
    whole file (torch's, a MemoryError's kin) is no damage: the file is kept and the error raised as it is."""
    return damaged(e) and (isinstance(e, pickle.UnpicklingError) or not intact(path))


def intact(path: Path) -> bool:
    """Whether torch.save's file `path` holds the bytes it wrote: its zip archive reads and every record's
    CRC-32 checks (the whole file is read: asked only where a load failed). An archive that does not
    read is not intact; other trouble reading it (EACCES, EIO) is raised."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except Exception as e:
        if not damaged(e):
            raise
        return False


def reads_back(path: Path) -> bool:
    """Whether torch.save's file `path` reads back (weights only, its tensors mapped, not read: an output
    Fisher may be GBs; read where the mapped load fails, as where the file system cannot map it: some FUSE
    and network mounts); False where it is damaged (`damaged_file`); other trouble reading it (EACCES, EIO)
    is raised."""
    try:
        torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        return True
    except Exception:  # damaged, or the map itself failed ('unable to mmap ... No such device'): read it
        pass
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        if not damaged_file(path, e):
            raise
        return False
    return True


def save(item, path: Path, atomic: bool = True) -> None:
    """torch.save `item` to `path`, through PATH.tmp renamed on success where `atomic` (an interrupted
    write leaves no half file). A failed write removes what it wrote; where the disk is full after it,
    or the file reached the file-size limit, the error is an OSError(ENOSPC, EFBIG: `write_stopped`)
    naming `path`: torch's zip writer says only "unexpected pos" or
    "iostream error", which would otherwise be a traceback (runner_failures.disk_full_words). Its
    folder gone meanwhile (before the write or before the rename): `Vanished` naming it."""
    written = path.with_suffix(".tmp") if atomic else path
    try:
        torch.save(item, written)
    except BaseException as e:
        stopped = write_stopped(written.parent, [written]) if isinstance(e, RuntimeError) else None  # before the unlink
        written.unlink(missing_ok=True)
        if stopped is not None:
            raise OSError(stopped, os.strerror(stopped), str(path)) from e
        if isinstance(e, (RuntimeError, OSError)) and not written.parent.is_dir():
            raise vanished(written.parent, "folder") from None
        raise
    if atomic:
        try:
            written.replace(path)
        except FileNotFoundError:
            raise (vanished(written) if written.parent.is_dir() else vanished(written.parent, "folder")) from None


def write_stopped(folder: Path, written=()) -> int | None:
    """Why a write into `folder` failed where the writer does not say it (torch's zip writer: "unexpected
    pos"): ENOSPC where the disk is full (`disk_is_full`), EFBIG where a file of `written` reached the
    file-size limit (ulimit -f: `file_size_limit`); None otherwise. Asked before the half files go."""
    if disk_is_full(folder):
        return errno.ENOSPC
    limit = file_size_limit()
    if limit is not None and any(p.is_file() and p.stat().st_size >= limit for p in written):
        return errno.EFBIG
    return None


def file_size_limit() -> int | None:
    """The largest file this process may write, in bytes (RLIMIT_FSIZE, `ulimit -f`); None where unlimited
    or unknown (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def disk_is_full(folder: Path) -> bool:
    """Whether the disk holding `folder` has less than FULL bytes free (False where unknown)."""
    try:
        return shutil.disk_usage(folder).free < FULL
    except OSError:
        return False


class BlockLoader:
    """Just-in-time weights: `materialize` before a block runs, `release` once it is done.
    The default keeps everything resident (the model is already loaded); a streaming loader sets
    `resident = False`, and whole-model work (the svd pass's output Fisher) is then refused."""

    resident = True

    def materialize(self, group: str, index: int, block: nn.Module) -> None:
        pass

    def release(self, group: str, index: int, block: nn.Module) -> None:
        pass

    def unload(self, group: str, index: int, block: nn.Module) -> None:
        """Free a block that was not changed (a streaming loader writes nothing back)."""


class Unchanged(BlockLoader):
    """A calibration that changes no block (global's loss curves): blocks are freed, never
    written back."""

    def __init__(self, loader: BlockLoader):
        self.loader, self.resident = loader, loader.resident

    def materialize(self, group: str, index: int, block: nn.Module) -> None:
        self.loader.materialize(group, index, block)

    def unload(self, group: str, index: int, block: nn.Module) -> None:
        self.loader.unload(group, index, block)

    release = unload  # nothing changed: nothing to write back
