"""What killed writes leave beside an output or stage (runner_leftovers.clear_leftovers): temp folders
removed, an output set aside put back (the newest complete one where a finished write was never
swapped in), and a one-line error where it cannot be."""

import errno
import json
import os
import re
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.runner_leftovers import clear_leftovers, clear_run_leftovers


def _leftover(folder: Path, name: str, output: bool = True) -> Path:
    """A temp folder as io_atomic._temp_beside names them, holding (part of) an output."""
    d = folder / name
    d.mkdir(parents=True)
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    if output:
        (d / "config.json").write_text(json.dumps({"compression": {}}))
    return d


def test_leftovers_of_killed_writes_go_and_an_output_set_aside_comes_back(tmp_path, capsys):
    """A kill during a stage save or an export left .NAME.tmp-* folders (a model copy each) that no
    rerun removed; a kill between the two renames of a swap (no renameat2) left no output at all."""
    run, out = tmp_path / "run", tmp_path / "o" / "out"
    _leftover(run / "stages", ".1-svd.tmp-_wpatwcm", output=False)
    _leftover(run / "stages", ".0-remove_blocks.old-abcd1234")  # its stage is in place: the old one goes
    (run / "stages" / "0-remove_blocks").mkdir()
    old = _leftover(tmp_path / "o", ".out.old-05jgdgvp")
    _leftover(tmp_path / "o", ".out.tmp-1a2b3c4d", output=False)  # a new one cut short
    kept = [_leftover(tmp_path / "o", name) for name in (".out.tmp-short", ".other.tmp-1a2b3c4d", ".out.tmp-1a2b3c4d.x")]
    clear_run_leftovers(run, out)
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["0-remove_blocks"]
    assert (out / "config.json").is_file() and not old.exists()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(["out", *(p.name for p in kept)])
    assert capsys.readouterr().err == ""


def test_a_complete_output_left_by_an_older_swap_is_kept_and_named(tmp_path, capsys):
    """An older dit-compress's swap, killed between its renames, left both outputs in .out.tmp-*: with
    no `out`, a complete one is kept (it may be the only copy of the earlier output) and named."""
    whole = _leftover(tmp_path, ".out.tmp-aaaaaaaa")
    half = _leftover(tmp_path, ".out.tmp-bbbbbbbb", output=False)
    clear_run_leftovers(None, tmp_path / "out")
    assert whole.is_dir() and not half.exists() and not (tmp_path / "out").exists()
    said = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'out'} is missing, and {whole} holds a complete output an interrupted write left: kept" in said


def _written_at(folder: Path, seconds_ago: float, which: str) -> Path:
    """`folder` marked `which`, its config.json written `seconds_ago`."""
    (folder / "which").write_text(which)
    t = os.stat(folder / "config.json").st_mtime - seconds_ago
    os.utime(folder / "config.json", (t, t))
    return folder


@pytest.mark.parametrize("newer", ["tmp", "old"])
def test_the_newer_of_a_set_aside_and_a_finished_output_goes_in_place_and_the_other_is_named(tmp_path, capsys,
                                                                                          newer):
    """A swap killed between its renames (no renameat2) leaves the old output set aside and the new one
    complete in its temp folder: the old one was put back and the complete new one deleted, silently.
    The newer goes in place; the other stays where it is, and a warning names both. (A complete
    .tmp-* older than the one set aside: an older dit-compress's leftover, kept and named too.)"""
    out = tmp_path / "out"
    old = _written_at(_leftover(tmp_path, ".out.old-05jgdgvp"), 600 if newer == "tmp" else 0, "old")
    new = _written_at(_leftover(tmp_path, ".out.tmp-1a2b3c4d"), 0 if newer == "tmp" else 600, "tmp")
    put, other = (new, old) if newer == "tmp" else (old, new)
    clear_run_leftovers(None, out)
    assert (out / "which").read_text() == newer and not put.exists() and other.is_dir()
    said = " ".join(capsys.readouterr().err.split())
    what = "finished, not swapped in, by" if newer == "tmp" else "set aside by"
    assert f"{out} was missing: {put}, the newest output (one {what} an interrupted write), is put in its " \
           f"place; the older {other} is kept where it is: move it elsewhere to keep it (the next run on {out} " \
           "removes it)" in said, said


@pytest.mark.parametrize("where", ["output", "stage"])
def test_an_output_set_aside_that_cannot_be_put_back_is_one_line_naming_both(tmp_path, monkeypatch, where):
    """os.replace failing to put a set-aside output (or stage) back was a raw PermissionError
    traceback: a one-line UserError names both folders and what to do, and moves nothing."""
    folder = tmp_path if where == "output" else tmp_path / "run" / "stages"
    name = "out" if where == "output" else "1-svd"
    old = _leftover(folder, f".{name}.old-05jgdgvp")

    def refused(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src), None, str(dst))
    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(UserError) as e:
        clear_run_leftovers(tmp_path / "run", tmp_path / "out") if where == "stage" else \
            clear_run_leftovers(None, tmp_path / "out")
    monkeypatch.undo()
    said = str(e.value)
    assert said == (f"{folder / name} is missing, and putting back {old} (the output an interrupted write left) "
                    f"failed (Permission denied): move {old} to {folder / name} yourself, or remove it, and run "
                    "again"), said
    assert old.is_dir() and not (folder / name).exists()


def test_an_output_that_appears_while_the_old_one_is_put_back_is_named(tmp_path, monkeypatch):
    """The output made by someone else between the check and the rename (a folder that is not
    empty): the UserError says so, and neither folder is touched."""
    old = _leftover(tmp_path, ".out.old-05jgdgvp")
    real = os.replace

    def raced(src, dst):
        _leftover(tmp_path, "out")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", raced)
    with pytest.raises(UserError, match=re.escape(f"failed ({tmp_path / 'out'} appeared meanwhile): move {old}")):
        clear_leftovers(tmp_path, "out", keep_complete=True)
    monkeypatch.undo()
    assert old.is_dir() and (tmp_path / "out" / "config.json").is_file()


def test_sampling_calls_a_killed_process_left_unfinished_go(tmp_path):
    """A sampling call killed while its file was written (calib_pipeline: inputs/<name>/<hash>.tmp-PID)
    left it for good: the run's start removes those of processes gone, and keeps a live one's (another
    rank of the launch may be writing it), the finished calls and what is not a call's file."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    calls = tmp_path / "run" / "inputs" / "65465a41ca0694bc"
    calls.mkdir(parents=True)
    killed, live = calls / f"031da6387599f30fd6d9.tmp-{dead.pid}", calls / f"0a40515ad0d96fed675e.tmp-{os.getpid()}"
    done, other = calls / "031da6387599f30fd6d9.pt", calls / f"notes.tmp-{dead.pid}"
    for p in (killed, live, done, other):
        p.write_bytes(b"records")
    clear_run_leftovers(tmp_path / "run", None)
    assert not killed.exists()
    assert live.exists() and done.exists() and other.exists()
