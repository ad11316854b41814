"""The calibration's stores on disk, built on calib_store's files (`save`, `load`, `Vanished`).

`Spilled`: per-batch activations on disk (`calibration.spill_activations`), so one batch is resident
at a time; `SpilledMap`: the same by name, for what a pass measures per target; `NamedFiles`: by name
too, kept for a rerun. Each store knows what it wrote (in memory): a file of it gone from the disk
meanwhile is a `Vanished` error naming it, never an item silently left out.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import torch

from compress.calib_store import Vanished, damaged_file, load, reads_back, save, say_damaged, vanished
from compress.errors import UserError


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
