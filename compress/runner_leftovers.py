"""What killed writes leave: the temp folders of an output being written (.NAME.tmp-*) and of the
output it replaced, set aside (.NAME.old-*), beside an output or in a run's stages/, and the files of
sampling calls being written (inputs/<name>/<hash>.tmp-PID) by a process gone, removed at the start
of a run that holds its locks, with a missing output put back (`clear_run_leftovers`). Imports no
torch."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from compress.errors import UserError
from compress.report import warn


# io_atomic._temp_beside's folders: .NAME.tmp-XXXXXXXX (an output being written) and .NAME.old-XXXXXXXX
# (the output it replaces, set aside), tempfile's 8 characters
LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[a-z0-9_]{8}")
# calib_pipeline's sampling call being written in a run's inputs/<name>/: <hash>.tmp-PID, renamed to <hash>.pt
CALL_TMP = re.compile(r"[0-9a-f]+\.tmp-(?P<pid>\d+)")


def clear_leftovers(folder: Path, names: str, keep_complete: bool = False) -> None:
    """The temp folders a killed process left in `folder` while it wrote an output whose name fully
    matches `names` (io_atomic.atomic_folder: a copy of the model each), removed. Where the output is
    missing, the old one set aside for it (.NAME.old-*) goes back (`_put_back_newest`). `keep_complete`:
    a complete output in a temp folder is kept, with a warning naming it: beside an old one set aside,
    the newer of the two goes in place (a swap killed between its renames); alone, it stays where it
    is (an older dit-compress's swap named both outputs .tmp-*). Only for folders no live process
    writes: the run's, under its locks."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    found: dict[str, list[tuple[Path, str]]] = {}  # output name -> [(temp folder, "tmp" | "old")]
    for p in entries:
        m = LEFTOVER.fullmatch(p.name)
        if m is not None and re.fullmatch(names, m["name"]) and not p.is_symlink() and p.is_dir():
            found.setdefault(m["name"], []).append((p, m["kind"]))
    for name, leftovers in found.items():
        _clear_leftovers_of(folder / name, leftovers, keep_complete)


def _clear_leftovers_of(out: Path, leftovers: list[tuple[Path, str]], keep_complete: bool) -> None:
    """`clear_leftovers` for the one output `out`: its temp folders [(folder, "tmp" | "old")]."""
    missing = not (out.exists() or out.is_symlink())
    olds = [(p, kind) for p, kind in leftovers if kind == "old"] if missing else []
    whole = [(p, kind) for p, kind in leftovers if kind == "tmp" and missing and keep_complete and _complete(p)]
    if olds:
        kept = _put_back_newest(out, olds + whole)
    else:
        kept = [p for p, _ in whole]
        for p in kept:
            warn(f"{out} is missing, and {p} holds a complete output an interrupted write left: kept; move it "
                  f"to {out} if it is the one to keep")
    for p, _ in leftovers:
        if p.exists() and p not in kept:
            shutil.rmtree(p, ignore_errors=True)


def _put_back_newest(out: Path, found: list[tuple[Path, str]]) -> list[Path]:
    """Of the outputs interrupted writes left for the missing `out` [(folder, "old": set aside | "tmp":
    written, not swapped in)], the newest (`_written`) goes in place; a warning names it and the others,
    which are kept where they are (returned), where there are any."""
    newest, kind = max(found, key=_written)
    _put_back(out, newest, kind)
    others = [p for p, _ in found if p != newest]
    if others:
        what = "set aside by" if kind == "old" else "finished, not swapped in, by"
        where, it = ("where it is", "it") if len(others) == 1 else ("where they are", "them")
        warn(f"{out} was missing: {newest}, the newest output (one {what} an interrupted write), is put in "
              f"its place; the older {_listed(others)} {where.split()[-1]} kept {where}: move {it} elsewhere "
              f"to keep {it} (the next run on {out} removes {it})")
    return others


def _put_back(out: Path, leftover: Path, kind: str) -> None:
    """`leftover` renamed to the missing `out` (a finished write's folder with the permissions the
    write would have given it); a one-line UserError naming both where it cannot be."""
    try:
        if kind == "tmp":
            from compress.io_atomic import as_umask_allows

            as_umask_allows(leftover)  # a write killed before it could
        os.replace(leftover, out)
    except OSError as e:
        why = f"{out} appeared meanwhile" if out.exists() else e.strerror or str(e)
        raise UserError(f"{out} is missing, and putting back {leftover} (the output an interrupted write left) "
                        f"failed ({why}): move {leftover} to {out} yourself, or remove it, and run again") from None


def _written(found: tuple[Path, str]) -> tuple[int, bool]:
    """When a leftover output (folder, kind) was written: its config.json's time, or the folder's
    (a stage); a write's finished folder is taken for the newer where they tie (it was written last)."""
    folder, kind = found
    config = folder / "config.json"
    try:
        return (config if config.is_file() else folder).stat().st_mtime_ns, kind == "tmp"
    except OSError:
        return 0, kind == "tmp"


def _listed(paths: list[Path]) -> str:
    """'a, b and c'."""
    return ", ".join(map(str, paths[:-1])) + (" and " if len(paths) > 1 else "") + str(paths[-1])


def _complete(folder: Path) -> bool:
    """Whether `folder` holds a written output: a config.json with a compression section (written last)."""
    from compress.output_names import is_output

    return is_output(folder)


def clear_run_leftovers(run_dir: Path | None, out: Path | None) -> None:
    """At the start of a run that holds its locks (runner_lock.hold_run; None: a folder it does not
    hold), what killed runs left: temp folders of stage saves in `run_dir`/stages and of exports
    beside `out` (`clear_leftovers`), sampling calls' files in `run_dir`/inputs (`clear_unfinished_calls`).
    An interrupted run removes its own; a killed one could not."""
    if run_dir is not None:
        clear_leftovers(Path(run_dir) / "stages", r"\d+-\w+")
        clear_unfinished_calls(Path(run_dir))
    if out is not None:
        clear_leftovers(Path(out).parent, re.escape(Path(out).name), keep_complete=True)


def clear_unfinished_calls(run_dir: Path) -> None:
    """The files of sampling calls a killed process left half written in `run_dir`/inputs/<name>/
    (calib_pipeline: <hash>.tmp-PID, renamed to <hash>.pt once written; a call's records each, read
    by no run), removed where process PID no longer runs on this host. Those of live processes stay:
    another rank of this launch may be sampling the same call; rank 0 clears them as it takes the run
    folder's lock, before its launch's processes load the teacher, let alone sample."""
    from compress.runner_ranks import alive  # no torch either

    for p in sorted(Path(run_dir).glob("inputs/*/*.tmp-*")):
        m = CALL_TMP.fullmatch(p.name)
        if m is not None and not p.is_symlink() and p.is_file() and not alive(int(m["pid"])):
            p.unlink(missing_ok=True)
