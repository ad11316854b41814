"""A run's folders: the output and run folders checked before anything loads (`check_folders`), an
interrupted run's saved work that a fresh start must not discard (`check_run_folder`), and what a
rerun can do after Ctrl-C (`interrupt_note`). Imports no torch: the CLI reads the run folder after
a Ctrl-C that may come before torch is imported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compress.errors import UserError
from compress.runner_resume import interrupted_run, saved_in_words


def check_folders(out: Path, run_dir: Path, overwrite: bool) -> None:
    """Before anything loads: the output may be written (and replace what is there, see
    `check_replaceable`) and the run folder made; a UserError saying why not otherwise."""
    from compress.io_export import check_replaceable

    check_replaceable(out, overwrite)
    a, b = out.resolve(), run_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UserError(f"--out {out} and --run-dir {run_dir} must be separate folders, neither inside "
                        "the other")
    check_writable(out.parent, f"output folder {out}")
    check_writable(run_dir, f"run folder {run_dir}")


def check_writable(folder: Path, what: str) -> None:
    """`folder` can be made (if missing) and written: a temp folder is made in it and removed, and so
    are the folders made for it."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".dit-compress-check-", dir=folder))
    except OSError as e:
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{file} is a file, not a folder" if file else f"cannot write in {folder}: {e.strerror or e}"
        raise UserError(f"{what}: {why}") from None
    finally:
        for p in missing:
            try:
                p.rmdir()
            except OSError:
                pass


def check_run_folder(run_dir: Path, now: dict, passes) -> None:
    """A run folder holding an interrupted run's saved work (completed stages, a distill checkpoint)
    is a UserError saying what is there, for a run without --resume or --restart: a fresh start
    would discard it. A finished run's folder (its output written) is started over."""
    info = interrupted_run(run_dir, now, passes)
    if info is None:
        return
    if info["changed"]:
        raise UserError(f"{another_recipe(run_dir, info)}: add --restart to discard it and start over, "
                        "or choose another --run-dir")
    of = " of this recipe" if info["changed"] == [] else ""
    if info["total"] is not None and info["done"] >= info["total"]:  # an export cut short, or an older
        # dit-compress's finished run (it wrote no FINISHED marker)
        raise UserError(f"{run_dir} holds a run{of} whose {info['total']} passes are all done but whose "
                        "output was not marked written (its export was cut short, or an older dit-compress "
                        "wrote it): add --resume to write the output from them, or --restart to start over")
    raise UserError(f"{run_dir} holds an interrupted run{of} ({saved_in_words(info)}): add --resume to continue, "
                    "or --restart to start over")


def another_recipe(run_dir: Path, info: dict) -> str:
    """'RUN_DIR holds an interrupted run of another recipe (it differs in ...; 1 of 3 passes done)'
    for an `interrupted_run` whose recipe differs (info["changed"])."""
    return (f"{run_dir} holds an interrupted run of another recipe (it differs in "
            f"{', '.join(info['changed'][:3])}; {saved_in_words(info)})")


def interrupt_note(run_dir: Path, discarding: bool = False, now: dict | None = None, passes=()) -> str:
    """What follows 'interrupted' after Ctrl-C in a run: '; RUN_DIR keeps its work (...): rerun with
    --resume to continue' where `run_dir` holds an unfinished run's saved work, else that nothing
    was saved and a rerun starts over. `discarding`: what is there is an earlier run's that this
    one (--restart) was about to discard. `now`, `passes`: this run's resolved recipe and passes,
    compared as `check_run_folder` does (no `now`: not compared); saved work of another recipe is not
    offered to --resume, which would refuse it."""
    info = None if discarding else interrupted_run(run_dir, now, passes)
    if info is None:
        return "; nothing was saved yet: a rerun starts over"
    if info["changed"]:
        return f"; {another_recipe(run_dir, info)}: a rerun needs --restart to discard it, or another --run-dir"
    return f"; {run_dir} keeps its work ({saved_in_words(info)}): rerun with --resume to continue"
