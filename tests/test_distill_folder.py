"""Latents folders (compress.distill_folder): their checks, reader and writer."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.arch import get_adapter
from compress.distill_data import cond_of
from compress.distill_folder import FolderSource, check_folder, write_shard
from compress.errors import UserError
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.distill_helpers import distill

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _flux_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1], ids[..., 2] = torch.arange(h)[:, None], torch.arange(w)[None]
    return ids.reshape(h * w, 3)


def test_files_whose_shared_ids_differ_are_refused_naming_both(tmp_path):
    """A batch gave every row the 'shared.' tensors of the last file it drew from: latents of a 4x4
    and a 2x8 token grid (16 tokens each) trained silently with one file's img_ids. Now the folder
    is refused up front (check_folder from the files, FolderSource, the pass), naming both files;
    files whose shared. tensors agree still batch together."""
    from safetensors.torch import save_file

    from compress.runner_checks import meta_clone

    teacher = tiny_flux()
    kwargs = model_inputs(teacher, batch=4)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v) and k not in ("img_ids", "txt_ids")}
    latents = kwargs["hidden_states"]  # (4, N, C)
    n = latents.shape[1]
    flat = {"latents": latents, **{f"cond.{k}": v for k, v in cond.items()},
            "shared.txt_ids": kwargs["txt_ids"]}
    folder = tmp_path / "latents"
    folder.mkdir()
    save_file({**flat, "shared.img_ids": _flux_ids(1, n)}, str(folder / "a.safetensors"))
    save_file({**flat, "latents": latents + 1, "shared.img_ids": _flux_ids(1, n)}, str(folder / "b.safetensors"))
    source = FolderSource(folder)  # the same ids: fine
    _, batch = source.batch(8, torch.Generator().manual_seed(0))
    assert torch.equal(batch["img_ids"], _flux_ids(1, n))
    save_file({**flat, "latents": latents + 1, "shared.img_ids": _flux_ids(n, 1)}, str(folder / "b.safetensors"))
    words = (f"distill: {folder / 'b.safetensors'}: 'shared.img_ids' holds other values than in a.safetensors; a "
             "batch joins rows of several files")
    with pytest.raises(UserError) as early:
        check_folder(folder, meta_clone(teacher), get_adapter(teacher))
    assert str(early.value).startswith(words)
    with pytest.raises(UserError) as late:
        FolderSource(folder)
    assert str(late.value) == str(early.value)
    with pytest.raises(UserError, match="'shared.img_ids' holds other values than in a.safetensors"):
        distill(copy.deepcopy(teacher), teacher, tmp_path / "run", steps=2, data="folder", latents_dir=str(folder))
    from compress.distill_folder import _unflatten

    torch.save(_unflatten({**flat, "shared.img_ids": _flux_ids(n, 1)}), folder / "b.pt")  # nested dicts
    (folder / "b.safetensors").unlink()
    with pytest.raises(UserError, match=r"b.pt: 'shared.img_ids' holds other values than in a.safetensors"):
        check_folder(folder, meta_clone(teacher), get_adapter(teacher))

