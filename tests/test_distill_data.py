"""Distillation data (compress.distill_data): the teacher-sample cache and latents folders."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.arch import get_adapter
from compress.distill_data import FolderSource, check_folder, cond_of, shard_sizes, write_shard
from compress.errors import UserError
from compress.passes.distill import DistillConfig, DistillPass
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.test_distill import context, distill

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


def test_a_later_file_of_another_layout_is_refused_before_any_compute(tmp_path):
    """Only the first file ran through the meta model; a batch joining rows of a later file of
    another shape was a torch.cat traceback mid-training. Now check_folder (from the files'
    headers), FolderSource and the pass refuse it with a line naming the file and key."""
    from compress.runner_checks import meta_clone

    teacher = tiny_pixart()
    kwargs = model_inputs(teacher, batch=3)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v)}
    latents = kwargs["hidden_states"]  # (3, C, H, W)
    folder = tmp_path / "latents"
    folder.mkdir()
    write_shard(folder / "a.safetensors", latents, cond)
    write_shard(folder / "b.safetensors", latents[:, 1:], cond)  # (3, C - 1, H, W)
    words = r"b.safetensors: 'latents' has rows \(3, 4, 4\), in a.safetensors \(4, 4, 4\)"
    with pytest.raises(UserError, match=words):
        check_folder(folder, meta_clone(teacher), get_adapter(teacher))
    with pytest.raises(UserError, match=words):
        FolderSource(folder)
    with pytest.raises(UserError, match=words):
        distill(copy.deepcopy(teacher), teacher, tmp_path / "run", steps=3, data="folder", latents_dir=str(folder))


@pytest.mark.parametrize("drop", ["img_ids", "pooled_projections"])
def test_a_flux_folder_without_a_kwarg_the_model_needs_is_one_line(tmp_path, drop):
    """Flux reads img_ids / txt_ids / pooled_projections off None: an AttributeError the dry run let
    through as a traceback. Now one line naming the file and what it holds."""
    from compress.runner_checks import meta_clone

    teacher = tiny_flux()
    kwargs = model_inputs(teacher, batch=2)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v) and k != drop}
    write_shard(tmp_path / "a.safetensors", kwargs["hidden_states"], cond)
    with pytest.raises(UserError, match=r"a.safetensors does not run through the model: .* \(the file holds "
                                        r"latents, cond.encoder_hidden_states"):
        check_folder(tmp_path, meta_clone(teacher), get_adapter(teacher))


def test_non_finite_latents_are_refused_naming_the_file(tmp_path):
    """A nan in the data was a non-finite loss at step 1 that blamed the student ("lower lr")."""
    teacher = tiny_pixart()
    kwargs = model_inputs(teacher, batch=2)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v)}
    latents = kwargs["hidden_states"].clone()  # (2, C, H, W)
    latents[1, 0, 0, 0] = float("nan")
    write_shard(tmp_path / "a.safetensors", latents, cond)
    with pytest.raises(UserError, match="a.safetensors: 'latents' holds non-finite values"):
        FolderSource(tmp_path)
