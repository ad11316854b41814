"""Where a block calibration's weights and activations live between uses.

`BlockLoader`: block weights just in time (`materialize` before a block runs, `release` after;
resident by default, `compress.stream.CheckpointBlocks` streams them from a checkpoint), and
`Unchanged` for a walk that changes no block. `Spilled`: per-batch activations on disk
(`calibration.spill_activations`), so one batch is resident at a time; `SpilledMap`: the same by
name, for what a pass measures per target; `NamedFiles`: by name too, kept for a rerun. `save`:
torch.save that leaves no partial file and says a full disk as an OSError; `load_cached`: a cache file
read back, None (and a note) where it is damaged, for its caller to compute again. Each store knows what it
wrote (in memory): a file of it gone from the disk meanwhile is a `Vanished` error naming it, never
an item silently left out.
"""

from __future__ import annotations

import errno
import itertools
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


class Spilled:
    """A list of per-batch activations kept on disk (one torch.save file per batch, read back on
    each access), so the calibration holds one batch's activations at a time instead of every
    batch's. The files go with `discard` (its holder's `with` or finally: an exception's traceback
    keeps the object, and the files, alive past a Ctrl-C), else with the object; those of a process
    that no longer runs (killed hard: the OOM killer, SIGKILL) go when this process first spills to
    the folder. Only this object's own files are ever removed by it."""

    _ids = itertools.count()
    _swept: set[Path] = set()

    def __init__(self, folder: Path):
        self.folder, self.id, self.paths = Path(folder), next(Spilled._ids), []
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.folder.resolve() not in Spilled._swept:
            Spilled._swept.add(self.folder.resolve())
            _sweep(self.folder)

    def append(self, item) -> None:
        path = self.folder / f"{os.getpid()}-{self.id}-{len(self.paths)}.pt"
        save(item, path, atomic=False)  # a killed process's half file goes with _sweep
        self.paths.append(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, b: int):
        return load(self.paths[b])

    def __iter__(self):
        return (self[b] for b in range(len(self)))

    def discard(self) -> None:
        """Delete this object's files (it is empty after)."""
        for path in getattr(self, "paths", []):
            path.unlink(missing_ok=True)
        self.paths = []

    def __enter__(self) -> "Spilled":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    __del__ = discard


def _sweep(folder: Path) -> None:
    """Delete the spill files (`<pid>-<id>-<n>.pt`) of processes that no longer run."""
    for path in folder.glob("*-*-*.pt"):
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    return True


class SpilledMap:
    """name -> item, the items on disk (a `Spilled` list) or, with no folder, in memory: what a
    pass measures for every target before it uses them one at a time (output Fishers, global's
    factors at the uniform rank), which at Flux.1-dev's size would not fit in memory together."""

    def __init__(self, folder: Path | None):
        self.items = Spilled(folder) if folder is not None else []
        self.index: dict[str, int] = {}

    def __setitem__(self, name: str, item) -> None:
        self.index[name] = len(self.items)
        self.items.append(item)

    def __getitem__(self, name: str):
        return self.items[self.index[name]]

    def __contains__(self, name) -> bool:
        return name in self.index

    def __iter__(self):
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def discard(self) -> None:
        """Drop every item: the files of those on disk deleted (`Spilled.discard`)."""
        if isinstance(self.items, Spilled):
            self.items.discard()
        else:
            self.items.clear()
        self.index.clear()

    def __enter__(self) -> "SpilledMap":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


class NamedFiles:
    """name -> tensor, one torch.save file each under `folder`, written atomically (an interrupted
    write leaves no half file) and kept after the object goes: what a pass measures per target
    and can reuse when it is run again on the same model and inputs (the output Fishers).
    The names are those on disk when it is made (what an earlier run left; a damaged file, one that does
    not read back as torch.save wrote it (`reads_back`), is left out with a note: measured again) and those
    written since, kept in memory: a file of them gone meanwhile is `Vanished` when read, not a name left out.
    `clear()` deletes them. `device`: where each is read onto (the pass's; None: where it was written from, as
    torch.load does): a Fisher measured on cuda and read by a run resumed on the cpu, or on cuda:1 then cuda:0,
    was torch's 'Attempting to deserialize object on a CUDA device' traceback or another device's tensor (R1
    stop 52: the run's fingerprint does not hold the device)."""

    def __init__(self, folder: Path, device: torch.device | str | None = None):
        self.folder, self.device = Path(folder), device
        found = sorted(self.folder.glob("*.pt")) if self.folder.is_dir() else []
        whole = [p for p in found if reads_back(p)]  # not cut short or overwritten (in what a load reads)
        self.names = {p.name[:-3] for p in whole}
        # the first damaged file (measured again, written over it), said where the names are first asked for
        self.unsaid = next((p for p in found if p not in whole), None)  # (not where clear() comes first)

    def _said(self) -> set[str]:
        """The names, once the note of a damaged file left out of them (`unsaid`) is said."""
        if self.unsaid is not None:
            say_damaged(self.unsaid, "not as torch.save wrote it", "measured again")
            self.unsaid = None
        return self.names

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"  # module names are safe file names

    def __setitem__(self, name: str, item) -> None:
        if self.names and not self.folder.is_dir():  # what it held went with the folder
            raise vanished(self.folder, "folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        save(item, self._path(name))
        self.names.add(name)

    def __getitem__(self, name: str):
        """The tensor of `name`; its file gone meanwhile: `Vanished`; damaged since it was found where the load
        fails (a tensor record's zip header, which `reads_back` does not read, overwritten; `damaged_file`):
        removed, and a one-line error naming it (measured again by the next run); any other error is raised as
        it is, the file kept. A tensor's bytes changed in place are read as they are: torch.load checks no CRC-32,
        and `intact` per read costs 11% to 76% of a toy svd pass's reads (R1 stop 52)."""
        if name not in self:
            raise KeyError(name)
        path = self._path(name)
        try:
            return load(path, map_location=self.device)
        except Exception as e:
            if isinstance(e, Vanished) or not damaged_file(path, e):
                raise
        path.unlink(missing_ok=True)
        self.names.discard(name)
        raise UserError(f"the run folder's file {path} is damaged (not as torch.save wrote it: overwritten since "
                        "the run began?): removed, to be measured again by the next run")

    def __contains__(self, name) -> bool:
        return name in self._said()

    def __iter__(self):
        return iter(sorted(self._said()))

    def __len__(self) -> int:
        return len(self._said())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.names.clear()
        self.unsaid = None


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
