"""The output folder replaced atomically: it is written in a temp folder beside it (`.NAME.tmp-XXXXXXXX`)
and renamed onto it on success (`atomic_folder`), swapped with an earlier output in one step where the
system can (`exchange`), else set aside and put back on failure. Before any work, which existing folder
may be replaced (`check_replaceable`: an earlier output, holding only the files an output consists of,
`output_part`, or an empty folder; never a mount point, `is_mount_point`) and whether its name leaves room
for the temp folder's (`check_name_fits`). `io_export.save_compressed` and `stream.save_streamed` write
through it."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from compress.errors import NAME_MAX, UserError, cut_middle, folder_named
from compress.interrupts import interrupts_held
from compress.io import INDEX, WEIGHTS
from compress.output_names import is_output


CLI_OVERWRITE = "--overwrite"  # how `run` is told to replace an existing output, as a refusal names it
API_OVERWRITE = "overwrite=True"  # how a Python caller of save_compressed is

# the files an output (or a run's stage folder) consists of; shards are OUTPUT_SHARD
OUTPUT_FILES = (WEIGHTS, INDEX, "config.json", "recipe.yaml", "report.json", "block_map.json", "README.md",
                "state.json", "state.json.tmp")
OUTPUT_SHARD = re.compile(r"diffusion_pytorch_model-\d{5}-of-\d{5}\.safetensors")
# the weights of an output re-saved by save_pretrained, which io_output.weight_files reads too: a
# variant (variant="fp16") or .bin (safe_serialization=False), one file, an index or its shards:
# diffusion_pytorch_model.fp16.safetensors, diffusion_pytorch_model.bin.index.fp16.json,
# diffusion_pytorch_model.fp16-00001-of-00002.safetensors
# (only the dtype variants diffusers' own pipelines name: a backup such as .old.safetensors stays foreign)
DTYPE_VARIANT = r"(?:\.(?:fp16|bf16|fp32))?"
RESAVED_WEIGHTS = re.compile(rf"diffusion_pytorch_model{DTYPE_VARIANT}(?:-\d{{5}}-of-\d{{5}})?\.(?:safetensors|bin)"
                             rf"|diffusion_pytorch_model\.(?:safetensors|bin)\.index{DTYPE_VARIANT}\.json")


def output_part(path: Path) -> bool:
    """Whether `path`, in an output folder, is a file of what dit-compress writes there, or of the
    weights save_pretrained writes when the output is re-saved (RESAVED_WEIGHTS)."""
    name = path.name
    return (name in OUTPUT_FILES or bool(OUTPUT_SHARD.fullmatch(name) or RESAVED_WEIGHTS.fullmatch(name))) and \
        path.is_file() and not path.is_symlink()


def check_replaceable(out: Path, overwrite: bool, flag: str = CLI_OVERWRITE) -> None:
    """An existing `out` may be replaced (with `overwrite`) only if it is an earlier output (holding
    only the files an output consists of, `output_part`: the output replaces the folder as a whole,
    so another file there would go with it) or an empty folder, and never the current folder or
    one above it; a UserError saying why otherwise. `flag`: how the caller gives `overwrite`, as the
    UserError names it (run's --overwrite; a Python caller's overwrite=True, API_OVERWRITE). A name too
    long for the temp folder beside it (`_temp_name`) is refused too, before the work, not at the export."""
    check_name_fits(out)
    if not (out.exists() or out.is_symlink()):
        return
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UserError(f"output folder {out} is the current folder or one above it, and the output "
                        "replaces its folder as a whole; name a new folder")
    if out.is_symlink():  # (its target, which the output would not replace, named: it may be the one meant)
        raise UserError(f"output folder {out} exists and is a link (to {os.readlink(out)}), not a folder; name a "
                        "new folder")
    if not out.is_dir():
        raise UserError(f"output folder {out} exists and is a file, not a folder; name a new folder")
    if is_mount_point(out):
        raise UserError(mount_point(out))
    try:
        entries = sorted(out.iterdir())
    except OSError as e:
        raise UserError(f"cannot read the output folder {out}: {e.strerror}") from None
    if entries and not is_output(out):
        raise UserError(f"output folder {out} exists and is not a dit-compress output (no config.json "
                        f"with a compression section); {flag} replaces only an earlier output or an "
                        "empty folder: name a new folder")
    foreign = next((p for p in entries if not output_part(p)), None)
    if foreign is not None:
        what = "a link" if foreign.is_symlink() else "not part of a dit-compress output"
        raise UserError(f"output folder {out} holds {foreign.name}, which is {what}, and the output replaces its "
                        "folder as a whole; move it out, or name a new folder")
    if not overwrite:
        raise UserError(f"output folder {out} exists; pass {flag} to replace it")


def check_name_fits(out: Path) -> None:
    """The output is written as `.NAME.tmp-XXXXXXXX` beside `out` (`_temp_name`), 14 bytes longer than
    its NAME, and a name may have NAME_MAX bytes: a longer NAME, legal itself, would fail at the export,
    after the whole run."""
    size = len(os.fsencode(out.name))
    if NAME_MAX - 14 < size <= NAME_MAX:  # longer: the OS's ENAMETOOLONG, said by the cli (errors.too_long)
        raise UserError(f"output folder {cut_middle(str(out))}: its name has {size} bytes, and the output is written "
                        f"beside it first as .NAME.tmp-XXXXXXXX, which a file system allows for names of at most "
                        f"{NAME_MAX - 14} bytes; name a shorter folder")


MOUNTINFO = Path("/proc/self/mountinfo")  # Linux: this process's mounts, one a line, the 5th field its mount point


def is_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point: os.path.ismount's (another device, or the folder's parent its own
    inode), or one MOUNTINFO lists, which ismount misses for a bind mount on the same file system
    (`mount --bind src dst`, a Docker volume of a host folder)."""
    return os.path.ismount(path) or os.fsencode(os.path.realpath(path)) in listed_mount_points()


def listed_mount_points() -> set[bytes]:
    """The mount points MOUNTINFO lists (its 5th field, `unescape_mount`ed), as bytes; none where it is
    not there or cannot be read (not Linux)."""
    try:
        lines = MOUNTINFO.read_bytes().splitlines()
    except OSError:
        return set()
    return {unescape_mount(fields[4]) for fields in (line.split(b" ") for line in lines) if len(fields) > 4}


def unescape_mount(field: bytes) -> bytes:
    """A mountinfo path field with its octal escapes decoded (the kernel writes a space, tab, newline
    and backslash as \\040, \\011, \\012, \\134)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


class OutputBusy(UserError):
    """The export's final rename onto the output folder refused (EBUSY, EXDEV): a mount point
    `is_mount_point` did not know; the runner adds what the run folder keeps (`--resume --out`)."""

    def __init__(self, message: str, inside: Path):
        super().__init__(message)
        self.inside = inside  # a folder inside it that a rerun may name


def busy_output(out: Path, e: OSError) -> OutputBusy:
    """One line for the rename onto `out` refused with `e` (EBUSY, EXDEV), naming a folder inside it."""
    return OutputBusy(f"output folder {out} could not be replaced ({e.strerror or e}): it is a mount point, which an "
                      f"output cannot replace (it is written beside its folder, then renamed onto it); name a folder "
                      f"inside it, e.g. {out / 'NAME'}", out / "NAME")


def mount_point(out: Path) -> str:
    """Why the mount point `out` (a Docker volume, a USB disk) cannot be an output folder: the output is
    written beside it and renamed onto it, which no mount point takes (EBUSY, after the whole run); a
    folder inside it can be, where it is writable."""
    if not os.access(out, os.W_OK):
        return f"output folder {out} is a mount point that cannot be written (read-only, or not yours); name a " \
               "folder on a writable disk"
    return f"output folder {out} is a mount point, which an output cannot replace (it is written beside its " \
           f"folder, then renamed onto it); name a folder inside it, e.g. {out / 'NAME'}"


@contextmanager
def atomic_folder(out, overwrite: bool = False, flag: str = CLI_OVERWRITE,
                  on_written: Callable[[Path], None] | None = None):
    """Yields a temp folder beside `out` that replaces it on success and vanishes on any error or
    interrupt, so `out` is never half-written. An existing `out` is replaced only with `overwrite`,
    and only where `check_replaceable` allows it (`flag`: how the caller gives `overwrite`).
    `on_written(out)`: the caller's record that `out` is complete (the run's `written`), made with the
    rename as one step: a Ctrl-C (SIGTERM) from the rename to its end is held until both are done, so
    none lands between an output in place and its record (it is raised after them, for the caller to
    take as a stop once the output was written)."""
    out = Path(out).expanduser()
    check_replaceable(out, overwrite, flag)
    tmp, old = _temp_name(out), None  # tmp made inside the try: an interrupt just as it is made removes it too
    try:
        _make_temp(tmp, out)
        yield tmp
        as_umask_allows(tmp)
        with interrupts_held():  # the rename and its record: one step
            old = _swap_in_or_busy(tmp, out)  # (no try statement of its own: an interrupt at its line is held)
            if on_written is not None:
                on_written(out)
        _removed(old)  # the earlier output, after the hold: a slow removal holds no Ctrl-C (a second press is
    except BaseException:  # raised at once), and one cut short is removed here, or by the next run's clear_leftovers
        _removed(tmp)
        _removed(old)
        raise


def _removed(folder: Path | None) -> None:
    """`folder` removed (what is left of it where that fails), where there is one."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _swap_in_or_busy(tmp: Path, out: Path) -> Path | None:
    """`_swap_in`, where the system refuses the rename onto `out` (EBUSY, EXDEV: a mount point
    `is_mount_point` missed, refused only here, after the work) the one-line `busy_output`."""
    try:
        return _swap_in(tmp, out)
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        raise busy_output(out, e) from None


def _swap_in(tmp: Path, out: Path) -> Path | None:
    """`tmp` renamed to `out`; returns the folder holding the old output, for the caller to remove (None
    where there was none). An existing `out` is swapped with `tmp` in one step where the system can
    (`exchange`: the old output is then `tmp`), so a kill at any moment leaves the old output or the new
    one. Elsewhere it is first renamed aside (`.NAME.old-*`, returned once the new one is in place),
    and put back if the rename fails or is interrupted (SIGTERM comes as KeyboardInterrupt,
    runner.sigterm_as_interrupt); a kill between the two renames leaves it aside, where the next run
    on `out` puts it back (runner_leftovers.clear_leftovers; beside a whole `out` it removes it)."""
    if not out.exists():
        os.replace(tmp, out)
        return None
    if exchange(tmp, out):
        return tmp  # the old output now
    aside = _temp_beside(out, "old")  # an empty folder, named as runner_leftovers.LEFTOVER knows
    try:
        os.replace(out, aside)  # onto the empty folder
        os.replace(tmp, out)
    except BaseException:
        if out.exists():  # the old output never moved (aside is empty), or the new one is in place
            shutil.rmtree(aside, ignore_errors=True)
        else:
            _put_back_aside(aside, out)
        raise
    return aside


def _put_back_aside(aside: Path, out: Path) -> None:
    """The earlier output, set aside in `aside` by a swap that failed or was interrupted, renamed back
    to `out`. Where that fails too, a warning naming both: the error that stopped the swap is the one
    raised (not this one's traceback), and the next run on `out` puts it back
    (runner_leftovers.clear_leftovers)."""
    try:
        os.replace(aside, out)
    except OSError as e:
        from compress.report import warn

        warn(f"{out}: the earlier output is set aside in {aside} and could not be put back "
             f"({e.strerror or e}): the next run on {out} puts it back, or move it there yourself")


RENAME_EXCHANGE, AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def exchange(a: Path, b: Path) -> bool:
    """Swaps what the paths `a` and `b` name, atomically (Linux's renameat2 with RENAME_EXCHANGE);
    False, having changed nothing, where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # an old kernel, a file system without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _temp_beside(out: Path, kind: str = "tmp") -> Path:
    """A new temp folder `.NAME.<kind>-XXXXXXXX` in `out`'s parent (`_make_temp`)."""
    tmp = _temp_name(out, kind)
    _make_temp(tmp, out)
    return tmp


def _temp_name(out: Path, kind: str = "tmp") -> Path:
    """A name `.NAME.<kind>-XXXXXXXX` (8 random hex digits, as runner_leftovers.LEFTOVER knows them) in
    `out`'s parent that is not there."""
    while (tmp := out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}").exists():
        pass
    return tmp


def _make_temp(tmp: Path, out: Path) -> None:
    """The folder `tmp` beside `out`, readable by its owner only (as mkdtemp makes one; as_umask_allows
    widens it once written), its parent made if missing; a one-line UserError where it cannot be made
    (a file where a folder of the path should be, no permission)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
    except OSError as e:
        file = next((p for p in reversed(out.parents) if p.exists() and not p.is_dir()), None)
        why = f"{file} is a file, not a folder" if file else e.strerror or str(e)
        what = "write in" if out.parent.is_dir() else "make the folder"
        raise UserError(f"output folder {out}: cannot {what} {folder_named(out.parent)} ({why})") from None


def as_umask_allows(folder: Path) -> None:
    """The permissions an ordinary mkdir / open would have given `folder` and what is in it (mkdtemp
    makes 0700 and safetensors writes 0600, which other users of a shared machine cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
