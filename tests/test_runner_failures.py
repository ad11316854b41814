"""A run that fails or is stopped (compress.runner_failures): a teacher whose predictions overflow, running
out of memory, a full disk, a seed torch cannot take, a Ctrl-C once the output is written: one line saying
what to fix and what the run folder keeps."""

import re
from pathlib import Path

import pytest
import torch

from compress.cli import main
from compress.errors import UserError
from compress.io_output import load_transformer
from compress.recipe import parse_recipe


def test_a_teacher_prediction_that_overflows_stops_the_run():
    """Every error of the run is measured against the teacher's held-out predictions: a NaN/Inf there
    (a finite checkpoint overflowing in float16) is a NumericError, not 'teacher-relative error nan'."""
    from compress.errors import NumericError
    from compress.runner import check_reference

    ok = [torch.ones(2, 3), torch.zeros(2, 3)]
    check_reference(ok, "float16")
    with pytest.raises(NumericError, match="held-out batch 2 of 2 in compute_dtype float16; try bfloat16 or float32"):
        check_reference([ok[0], torch.tensor([1.0, float("inf")])], "float16")


def test_an_overflowing_teacher_names_the_layer_where_it_overflows():
    """It said only 'the teacher's prediction holds NaN/Inf', and suggested float32 to a float32 run."""
    from compress.arch import get_adapter
    from compress.errors import NumericError
    from compress.passes.base import predictions
    from compress.runner_setup import check_reference, locate
    from tests.conftest import model_inputs, tiny_pixart

    teacher = tiny_pixart()
    adapter = get_adapter(teacher)
    batches = [model_inputs(teacher, batch=2, seed=s) for s in range(2)]
    assert locate(teacher, adapter, batches[0]) is None
    with torch.no_grad():
        teacher.transformer_blocks[1].ff.net[2].weight.mul_(1e38)  # finite weights, an overflowing product
    reference = predictions(teacher, adapter, batches)
    with pytest.raises(NumericError, match=r"batch 1 of 2 in compute_dtype float32: transformer_blocks\.1\.ff\.net\.2's "
                                           r"output is the first to hold it \(its inputs were finite\); the "
                                           r"checkpoint's weights overflow even in float32"):
        check_reference(reference, "float32", lambda b: locate(teacher, adapter, batches[b]))
    assert not any(m._forward_hooks for m in teacher.modules())


# ---- what the user can fix: one line, before compute where it can be ------------------------------
def test_running_out_of_memory_names_the_pass_and_what_to_change(tmp_path, monkeypatch, capsys):
    """The CPU allocator's RuntimeError (or CUDA's OutOfMemoryError) in a pass was a traceback: one
    line naming the pass, its recipe line and the keys that lower its memory, and saying what
    --resume keeps (the completed passes: it continues from there)."""
    from compress.passes import svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)

    def too_big(self, model, ctx):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 3200000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(svd.SVDPass, "run", too_big)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"dit-compress: out of memory: {tmp_path / 'r.yaml'}:6: pass 2/2 (svd) ran out of CPU memory "
                   "(tried to allocate 2980.2 GiB); try a smaller calibration.batch_size, passes.1.svd.gradient_checkpointing: "
                   "true, compute_dtype: bfloat16 or calibration.spill_activations: true; "
                   f"{tmp_path / 'run'} keeps its work (1 of 2 "
                   "passes done): --resume continues from pass 2 (whose keys may change)")
    monkeypatch.undo()
    assert main(argv + ["--resume", "--set", "calibration.spill_activations=true"]) == 0
    assert "resuming after pass 1/2 (remove_blocks)" in capsys.readouterr().err


@pytest.mark.parametrize("asked, said", [(3200000000000, "2980.2 GiB"), (786432, "768 KiB"), (512, "512 bytes")])
def test_an_allocation_in_bytes_is_said_in_the_unit_that_fits(asked, said):
    """'you tried to allocate 786432 bytes' read '(tried to allocate 0.0 GiB)'."""
    from compress.runner_failures import memory_in_words

    e = RuntimeError(f"DefaultCPUAllocator: can't allocate memory: you tried to allocate {asked} bytes.")
    assert memory_in_words(e) == f"CPU memory (tried to allocate {said})"


def test_running_out_of_memory_advises_no_spill_the_run_folders_disk_cannot_hold(tmp_path, monkeypatch, capsys):
    """calibration.num_prompts: 1000000000 ran out of memory advising calibration.spill_activations: true,
    about 300 TB on disk (a tester's c48): where the activations would not fit the disk free under the run
    folder, fewer calibration inputs instead, saying why."""
    import compress.runner_memory as runner_memory
    from compress.passes import svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: 0)

    def too_big(self, model, ctx):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3200000000000 bytes.")

    monkeypatch.setattr(svd.SVDPass, "run", too_big)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "compute_dtype: bfloat16 or fewer calibration inputs (spilled, their 20 KiB would not fit the 0 bytes free " \
           f"under {tmp_path / 'run'}); " in err and "spill_activations" not in err, err


@pytest.mark.parametrize("stop", ["memory", "disk", "peer", "peer in pass 1"])
def test_a_stop_with_the_output_there_says_the_rerun_needs_overwrite(tmp_path, monkeypatch, capsys, stop):
    """A run with --overwrite stopped (out of memory, a full disk, a lost peer) before it replaced the
    earlier output said '...: --resume continues from pass 2 ...', and the rerun with --resume was refused
    ('output folder OUT exists; pass --overwrite to replace it'): it says the rerun needs --overwrite too,
    as Ctrl-C's note does (output_names.rerun_needs_overwrite); a lost peer's with nothing kept too."""
    import json

    import compress.runner as runner
    from compress.passes import remove_blocks, svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"compression": {}}))  # an earlier output
    raised = {"memory": RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              "disk": OSError(28, "No space left on device")}.get(stop, RuntimeError("Connection reset by peer"))
    if stop.startswith("peer"):
        monkeypatch.setattr(runner, "several_processes", lambda: True)
        monkeypatch.setattr(runner, "peer_lost_in", lambda e: True)
        monkeypatch.setattr(runner, "ended", lambda *a: UserError("rank 1 ended"))

    def fails(self, model, ctx):
        raise raised

    first = stop == "peer in pass 1"  # nothing kept: 'start the launch again with --resume'
    monkeypatch.setattr(*(remove_blocks.RemoveBlocksPass, "run") if first else (svd.SVDPass, "run"), fails)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv + ["--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    kept = "start the launch again with --resume" if first else \
        f"{tmp_path / 'run'} keeps its work (1 of 2 passes done): --resume continues from pass 2 (whose keys may change)"
    assert err.endswith(f"; {kept}; {tmp_path / 'out'} exists: the rerun needs --overwrite too"), err
    monkeypatch.undo()
    assert main(argv + ["--resume"]) != 0  # as it says
    assert f"output folder {tmp_path / 'out'} exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("where, raised, said", [
    ("pass", OSError(28, "No space left on device", "/scratch/run/calib/x.pt"),
     "/scratch/run/calib/x.pt: no space left on the device, during {doing}pass 2/2 (svd)"),
    ("export", Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
     "{out}: no space left on the device, during {doing}the export"),
    ("pass", OSError(122, "Disk quota exceeded"), "{run}: the disk quota is used up, during {doing}pass 2/2 (svd)"),
    ("pass", OSError(30, "Read-only file system", "/ro/x"),
     "/ro/x: the file system is read-only, during {doing}pass 2/2 (svd)"),
])
def test_a_full_disk_is_one_line_saying_what_the_run_folder_keeps(tmp_path, monkeypatch, capsys, where, raised, said):
    """ENOSPC in a pass or safetensors' write error in the export was a traceback (exit 1): one line
    naming where it could not write (the file, else the output or run folder: it named the recipe as
    if that were unwritable), why, during what, and what --resume keeps, as for running out of memory."""
    from compress.passes import svd
    from compress.runner import Runner
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)

    def full(*args, **kwargs):
        raise raised

    monkeypatch.setattr(*(svd.SVDPass, "run") if where == "pass" else (Runner, "export"), full)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    said_all = capsys.readouterr().err
    assert "Traceback" not in said_all
    err = said_all.strip().splitlines()[-1:]
    doing = f"{tmp_path / 'r.yaml'}:6: " if where == "pass" else f"{tmp_path / 'r.yaml'}: "
    done = "1 of 2 passes done): --resume continues from pass 2 (whose keys may change)" if where == "pass" else \
        "2 of 2 passes done): --resume only writes the output"
    fix = "give" if "read-only" in said else "free space there, or give"
    flag = "--out" if where == "export" else "--run-dir"
    said = said.format(doing=doing, out=tmp_path / "out", run=tmp_path / "run")
    assert err[0] == (f"dit-compress: cannot write: {said}; {fix} {flag} on another disk; {tmp_path / 'run'} "
                      f"keeps its work ({done}")


def test_a_user_error_that_mentions_a_full_disk_keeps_its_own_words():
    """_temp_beside's 'cannot make the folder P (No space left on device)' is one line already."""
    from compress.runner_failures import disk_full_words

    assert disk_full_words(UserError("output folder /o: cannot make the folder / (No space left on device)")) is None
    assert disk_full_words(OSError(28, "No space left on device")) == "no space left on the device"


def test_a_seed_torch_cannot_take_is_refused_at_recipe_load(tmp_path):
    """calibration.seed=99999999999999999999999 passed `plan` and crashed `run` with an overflow."""
    text = (Path(__file__).parent.parent / "recipes" / "toy-pixart.yaml").read_text()
    for seed in ("99999999999999999999999", str(2**63), str(2**32), "-1"):  # (2**32: torch reads 32 bits of a seed)
        with pytest.raises(UserError, match=rf"r\.yaml \(--set calibration\.seed={seed}\): calibration\.seed must be an "
                                            r"integer from 0 to 2\*\*32-1"):
            parse_recipe(text, "r.yaml", [f"calibration.seed={seed}"])
    assert parse_recipe(text, "r.yaml", [f"calibration.seed={2**32 - 1}"]).calibration.seed == 2**32 - 1

def test_a_ctrl_c_once_the_output_is_written_stops_nothing(tmp_path, monkeypatch, capsys):
    """A Ctrl-C as the run releases its locks, its output complete and said ('wrote OUT'): status 0 and
    one line saying the output is complete (it was 'interrupted; RUN keeps its work (2 of 2 passes
    done): rerun with --resume', status 130, which scripts read as a failure); the run is marked
    finished, so a rerun starts over without asking for --resume."""
    import compress.runner_lock as runner_lock
    from compress.runner_resume import FINISHED
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir", str(tmp_path / "run")]
    real = runner_lock._release

    def release_then_stop(*args):
        real(*args)
        raise KeyboardInterrupt
    monkeypatch.setattr(runner_lock, "_release", release_then_stop)
    assert main(argv) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"wrote {out}")  # the result, on stdout
    assert said.err.splitlines()[-1] == f"note: interrupted after the output was written: {out} is complete"
    assert load_transformer(out) is not None and (tmp_path / "run" / "stages" / FINISHED).is_file()
    assert not (tmp_path / "run" / runner_lock.LOCK).exists() and not (tmp_path / f".out{runner_lock.LOCK}").exists()


def test_a_ctrl_c_as_the_output_is_said_written_still_says_it_once(tmp_path, monkeypatch, capsys, ctrl_c_raises):
    """A Ctrl-C just after the output's rename, before 'wrote OUT (...)' was printed: status 0 and the
    note on stderr, but stdout empty (the run's result lost: T1, 1 of 2 tries). Now the line is said
    exactly once, then the note."""
    import os
    import signal
    from types import SimpleNamespace

    import compress.runner as runner_module
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    out = tmp_path / "out"
    real = runner_module.results.print

    def stopped_then_print(*args, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C lands as the line is about to be printed
        real(*args, **kw)
    monkeypatch.setattr(runner_module, "results", SimpleNamespace(print=stopped_then_print))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"wrote {out}") and said.out.count("wrote ") == 1
    assert said.err.splitlines()[-1] == f"note: interrupted after the output was written: {out} is complete"


def _cli_run(tmp_path, monkeypatch, capsys) -> list[str]:
    """`run` of the tiny PixArt recipe (runner_helpers.pixart_runner) that exits 1: its stderr lines."""
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    capsys.readouterr()
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "small" / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 1
    said = capsys.readouterr().err
    assert "Traceback" not in said
    return said.strip().splitlines()


@pytest.mark.usefixtures("one_thread")  # as in test_runner_stream.py, where it was
def test_torch_save_on_a_full_run_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """A full disk under --run-dir during calibration's torch.save was a traceback (torch's zip writer
    says 'unexpected pos', not 'No space left') and left blocks-<hash>.tmp, partly written."""
    import collections
    import shutil

    from compress import calib_store

    real = calib_store.torch.save

    def full(item, path, *a, **kw):
        if "calib" not in str(path):
            return real(item, path, *a, **kw)
        path.write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(calib_store.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(1 << 30, 1 << 30, 0))
    err = _cli_run(tmp_path, monkeypatch, capsys)[-1]
    assert re.fullmatch(rf"dit-compress: cannot write: {re.escape(str(tmp_path / 'run' / 'calib'))}/\S+\.pt: no space left "
                        rf"on the device, during {re.escape(str(tmp_path / 'r.yaml'))}:6: pass 2/2 \(svd\); free space "
                        r"there, or give --run-dir on another disk; .* keeps its work \(1 of 2 passes done\).*", err), err
    assert list(tmp_path.rglob("*.tmp")) == []


@pytest.mark.usefixtures("one_thread")
def test_a_full_output_disk_names_the_output_not_the_recipe(tmp_path, monkeypatch, capsys):
    """safetensors' 'os error 28' names no file: the line said 'cannot write: r.yaml: the export ...',
    as if the recipe were unwritable, and 'free space there' pointed nowhere."""
    from safetensors import SafetensorError

    import compress.io_export as io_export

    real = io_export.save_file

    def full(tensors, path, *args, **kwargs):
        if "small" not in path:  # the stage saves under --run-dir
            return real(tensors, path, *args, **kwargs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(io_export, "save_file", full)
    err = _cli_run(tmp_path, monkeypatch, capsys)[-1]
    assert err.startswith(f"dit-compress: cannot write: {tmp_path / 'small' / 'out'}: no space left on the device, "
                          f"during {tmp_path / 'r.yaml'}: the export; free space there, or give --out on another disk; ")
    assert not (tmp_path / "small").exists()  # no output, no temp folder: the folder made for them goes too


def test_running_out_of_memory_in_distill_says_which_change_keeps_its_checkpoints():
    """The line advised 'a smaller passes.1.distill.batch_size, ... or passes.1.distill.gradient_checkpointing:
    true' and then '--resume continues from pass 2's checkpoint', as if either kept it: a changed batch_size
    trains the pass from its start (its checkpoints are discarded), gradient_checkpointing keeps them."""
    from types import SimpleNamespace

    from compress.passes.distill import DistillPass
    from compress.passes.distill_config import DistillConfig
    from compress.runner_failures import memory_hints

    recipe = SimpleNamespace(compute_dtype="bfloat16", stream=True, calibration=None)
    hints = memory_hints(recipe, [None, DistillPass(DistillConfig())], 1)
    assert hints == ("a smaller passes.1.distill.batch_size (which trains the pass from its start) or "
                     "passes.1.distill.gradient_checkpointing: true (which keeps its checkpoints)")


@pytest.mark.usefixtures("one_thread")
def test_the_run_folders_fishers_removed_during_the_run_stop_it_in_one_line(tmp_path, monkeypatch, capsys):
    """The output Fishers deleted under a running svd pass (rm -rf of the run folder or its calib/)
    gave rc 0 with another model: the Fisher store listed the disk, so the targets whose files were
    gone were fitted without output weighting and left out of compensation. Now one line naming the
    file, what ran and what the run folder keeps."""
    import shutil

    from compress.passes.svd import SVDPass

    real = SVDPass._measure_fishers

    def then_removed(self, *args):
        real(self, *args)
        shutil.rmtree(self.roots.folder)

    monkeypatch.setattr(SVDPass, "_measure_fishers", then_removed)
    err = _cli_run(tmp_path, monkeypatch, capsys)[-1]
    fishers = re.escape(str(tmp_path / "run" / "calib"))
    assert re.fullmatch(rf"dit-compress run: error: {re.escape(str(tmp_path / 'r.yaml'))}:6: pass 2/2 \(svd\): the run "
                        rf"folder's file {fishers}/\S+\.pt vanished during the run \(removed by another program\?\); "
                        rf".* keeps its work \(1 of 2 passes done.*", err), err
