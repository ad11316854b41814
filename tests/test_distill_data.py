"""Distillation data (compress.distill_data): the teacher-sample cache."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

import compress.distill_data as distill_data
from compress.distill_data import shard_sizes, teacher_sample_cache
from compress.distill_folder import FolderSource
from compress.passes.distill import DistillConfig, DistillPass
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.distill_helpers import context

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shard_sizes_add_up_to_num_samples_whatever_the_batch_rows():
    assert shard_sizes(5, 3, [4, 4]) == [3, 2]
    assert shard_sizes(7, 4, [2, 3]) == [2, 3, 2]  # batches shorter than a shard: more shards
    assert sum(shard_sizes(2048, 16, [8] * 64)) == 2048  # pixart-sigma-50.yaml's sizes


def samples_run(teacher, run_dir, batches, num_samples, progress=False):
    ctx = context(teacher, run_dir, calibration_inputs=lambda: batches, train_batch=None)
    cfg = DistillConfig(steps=1, batch_size=4, data="teacher_samples", num_samples=num_samples, sample_steps=2,
                        checkpoint_every=0, progress=progress, plot=False)
    DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
    (folder,) = (run_dir / "distill" / "teacher_samples").iterdir()
    return folder


def test_teacher_samples_are_as_many_as_asked_when_calibration_batches_are_short(tmp_path):
    """Calibration batches of 2 rows, shards of 4 (the distill batch): 7 samples, not 4 (each shard
    used to be cut to its batch's rows). A cache of that earlier layout (complete.json without
    'samples') is topped up, its shards of the right size kept."""
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    folder = samples_run(teacher, tmp_path, batches, num_samples=7)
    assert len(FolderSource(folder)) == 7
    shards = sorted(folder.glob("shard-*.safetensors"))
    stamp = shards[0].stat().st_mtime_ns
    shards[-1].unlink()
    (folder / "complete.json").write_text(json.dumps({"num_samples": 7, "steps": 2}))
    samples_run(teacher, tmp_path, batches, num_samples=7)
    assert len(FolderSource(folder)) == 7 and shards[0].stat().st_mtime_ns == stamp


def test_a_complete_json_whose_shards_are_missing_is_filled_up_again(tmp_path):
    """Before, complete.json's count was trusted: a cache whose shard another process of a launch had
    written elsewhere (it read the recipe otherwise) trained this run and every rerun on part of it."""
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    folder = samples_run(teacher, tmp_path, batches, num_samples=4)
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 2 and json.loads((folder / "complete.json").read_text())["samples"] == 4
    shards[-1].unlink()
    samples_run(teacher, tmp_path, batches, num_samples=4)
    assert shards[-1].is_file() and len(FolderSource(folder)) == 4


def _sample_lines(err: str) -> list[str]:
    """The counts of the teacher sampling's log lines ('distill: teacher samples 2/8 (0:00)')."""
    return [line.split()[-2] for line in err.splitlines() if line.startswith("distill: teacher samples")]


def test_teacher_sampling_logs_its_progress_off_a_terminal(tmp_path, capsys):
    """Sampling the teacher (num_samples x sample_steps forwards: hours on a real Flux) printed nothing,
    on a terminal or in a log: it logs a line per tenth of the samples, as other long steps do; a cache
    cut short and filled up again counts from what was there, and says how many it read back."""
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    folder = samples_run(teacher, tmp_path, batches, num_samples=8, progress=True)
    assert _sample_lines(capsys.readouterr().err) == ["2/8", "4/8", "6/8", "8/8"]  # shards of 2 rows
    (folder / "complete.json").unlink()
    sorted(folder.glob("shard-*.safetensors"))[-1].unlink()
    samples_run(teacher, tmp_path, batches, num_samples=8, progress=True)
    err = capsys.readouterr().err
    assert _sample_lines(err) == ["8/8"]
    # the shards read back said, as a pipeline's sampling says its calls read back (a resume said only '8/8')
    assert [line.rsplit(" (", 1)[0] for line in err.splitlines() if line.startswith("distill: teacher samples")] == [
        "distill: teacher samples (6 read back) 8/8"], err
    samples_run(teacher, tmp_path, batches, num_samples=8)  # progress: false
    assert _sample_lines(capsys.readouterr().err) == []


def test_a_cache_with_every_shard_but_no_complete_json_says_it_read_them_back(tmp_path, capsys):
    """Every shard there, only complete.json lost (a run stopped between the last shard and it): the
    sampling printed nothing, on a terminal or in a log (the bar, added full, never moved). Now one line."""
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    folder = samples_run(teacher, tmp_path, batches, num_samples=8, progress=True)
    capsys.readouterr()
    (folder / "complete.json").unlink()
    samples_run(teacher, tmp_path, batches, num_samples=8, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: teacher samples")]
    assert lines == ["distill: teacher samples (read back) 8/8"], lines
    (folder / "complete.json").unlink()
    samples_run(teacher, tmp_path, batches, num_samples=8)  # progress: false
    assert capsys.readouterr().err == ""


def test_a_followers_teacher_sampling_shows_no_progress(tmp_path, capsys):
    """Process 1 of a launch samples its shards (1, 3, ...) without a bar or lines: rank 0 shows them."""
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    ctx = context(teacher, tmp_path, calibration_inputs=lambda: batches, train_batch=None)
    follower = SimpleNamespace(process_index=1, num_processes=2, is_main_process=False, device="cpu",
                               wait_for_everyone=lambda: None)
    folder = teacher_sample_cache(ctx, 8, 2, 4, follower, progress=True)
    assert sorted(p.name for p in folder.glob("shard-*")) == ["shard-00001.safetensors", "shard-00003.safetensors"]
    assert capsys.readouterr().err == ""


def test_an_interrupted_teacher_sampling_names_the_shards_it_keeps(tmp_path, monkeypatch):
    """A Ctrl-C while distill sampled the teacher said 'nothing was saved yet' (or named only the
    passes and block statistics kept), though the shards written are read back by --resume: the
    note names them, and the resume note of an error's stop too; those of other settings are not."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_folders import interrupt_note
    from compress.runner_resume import resume_note

    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=2, seed=s) for s in (1, 2)]
    ctx = context(teacher, tmp_path, calibration_inputs=lambda: batches, train_batch=None, fingerprint="aaaa")
    one = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True, device="cpu",
                          wait_for_everyone=lambda: None)
    write, calls = distill_data.write_shard, []

    def cut_short(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(distill_data, "write_shard", cut_short)
    with pytest.raises(KeyboardInterrupt):
        teacher_sample_cache(ctx, 8, 2, 4, one)
    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - distill: {{data: teacher_samples, num_samples: {n}, "
            "sample_steps: 2, batch_size: 4}}\n")
    recipe = parse_recipe(text.format(n=8), "r.yaml")
    passes = build_passes(recipe)
    kept = f"; {tmp_path} keeps teacher samples (2 of 4 shards): a rerun"
    assert interrupt_note(tmp_path, False, recipe.raw, passes, "aaaa").startswith(kept)
    assert resume_note(tmp_path, recipe, passes, "aaaa").startswith(kept)
    other = parse_recipe(text.format(n=16), "r.yaml")  # another cache: this one is not read back
    assert interrupt_note(tmp_path, False, other.raw, build_passes(other), "aaaa").endswith("a rerun starts over")
    assert interrupt_note(tmp_path, False, recipe.raw, passes, "bbbb").endswith("a rerun starts over")


def test_teacher_samples_are_drawn_in_inference_mode_and_returned_as_ordinary_tensors():
    """The sampler's forwards run in inference mode (no autograd bookkeeping), the same samples as with
    autograd merely off; what it returns can be changed in place as any tensor."""
    import torch

    from compress.arch import get_adapter

    teacher = tiny_pixart()
    adapter = get_adapter(teacher)
    kwargs = model_inputs(teacher, batch=3)
    cond = distill_data.cond_of(kwargs)
    shape = tuple(kwargs["hidden_states"].shape)
    modes = []
    predict = adapter.predict

    def watched(model, kw):
        modes.append(torch.is_inference_mode_enabled())
        return predict(model, kw)

    adapter.predict = watched
    got = distill_data.sample_latents(adapter, teacher, cond, shape, 3, torch.Generator().manual_seed(0), "cpu")
    adapter.predict = predict
    assert modes == [True] * 3 and not got.is_inference()
    with torch.no_grad():
        plain = distill_data._sampled(adapter, teacher, cond, shape, 3, torch.Generator().manual_seed(0), "cpu",
                                      None, 1.0, None)
    assert torch.equal(got, plain)
    got.add_(1)  # an inference tensor would refuse this outside inference mode


def test_the_teacher_sampling_label_says_what_was_read_back():
    from compress.distill_data import samples_label

    assert samples_label(0, 1024) == "distill: teacher samples"
    assert samples_label(320, 1024) == "distill: teacher samples (320 read back)"
    assert samples_label(8, 8) == "distill: teacher samples (read back)"
    assert samples_label(0, 0) == "distill: teacher samples"
    from tests.test_progress import _drawn

    for read_back, samples in [(320, 1024), (9600, 9999)]:  # whole at 80 columns up to 4-digit counts
        line = _drawn(samples_label(read_back, samples), samples, read_back)
        assert line.startswith(samples_label(read_back, samples) + " ") and "…" not in line, line
        assert f" {read_back}/{samples} " in line and len(line) <= 80, line
