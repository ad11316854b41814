"""Distillation data (compress.distill_data): the teacher-sample cache."""

from __future__ import annotations

import copy
import json

import pytest

from compress.distill_data import shard_sizes
from compress.distill_folder import FolderSource
from compress.passes.distill import DistillConfig, DistillPass
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.distill_helpers import context

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shard_sizes_add_up_to_num_samples_whatever_the_batch_rows():
    assert shard_sizes(5, 3, [4, 4]) == [3, 2]
    assert shard_sizes(7, 4, [2, 3]) == [2, 3, 2]  # batches shorter than a shard: more shards
    assert sum(shard_sizes(2048, 16, [8] * 64)) == 2048  # pixart-sigma-50.yaml's sizes


def samples_run(teacher, run_dir, batches, num_samples):
    ctx = context(teacher, run_dir, calibration_inputs=lambda: batches, train_batch=None)
    cfg = DistillConfig(steps=1, batch_size=4, data="teacher_samples", num_samples=num_samples, sample_steps=2,
                        checkpoint_every=0, progress=False, plot=False)
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
