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
    with pytest.raises(UserError, match=r"a.safetensors: a row does not run through the model: .* \(the file holds "
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
    words = (f"distill.latents_dir file {folder / 'b.safetensors'}: 'shared.img_ids' holds other values than in "
             "a.safetensors; a batch joins rows of several files")
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



def _toy_folders(root):
    """Latents folders for the toy PixArt teacher: one it takes, and ones plan must refuse."""
    from compress.io import load_teacher

    teacher = load_teacher("toy:pixart")
    kwargs = model_inputs(teacher, batch=2)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v)}
    latents = kwargs["hidden_states"]  # (2, 4, 8, 8)
    shards = {"ok": (latents, cond), "channels": (latents[:, 1:], cond),
              "no text": (latents, {k: v for k, v in cond.items() if k != "encoder_hidden_states"})}
    for name, (rows, c) in shards.items():
        (root / name).mkdir()
        write_shard(root / name / "a.safetensors", rows, c)
    (root / "empty").mkdir()
    (root / "unreadable").mkdir()
    (root / "unreadable" / "a.safetensors").write_bytes(b"not a safetensors file")
    (root / "a file").write_text("")


def _recipe(path, folder) -> str:
    path.write_text(f"version: 1\nmodel: pixart\nteacher: toy:pixart\npasses:\n  - distill:\n"
                    f"      data: folder\n      latents_dir: '{folder}'\n      steps: 1\n")
    return str(path)


@pytest.mark.parametrize("name, words", [
    ("ok", None),
    ("missing", r"is not a folder \(there is none at"),
    ("a file", r"is not a folder \(there is a file at"),
    ("empty", "has no .safetensors or .pt files"),
    ("unreadable", "cannot be read"),
    ("channels", "does not run through the model: .*; the teacher takes latents rows \\(C, H, W\\) of C = 4 "
                 "channels, the file's are \\(3, 8, 8\\)\\)$"),
    ("no text", "does not run through the model: .*; it lacks cond.encoder_hidden_states, which the teacher "
                "takes\\)$")])
def test_plan_refuses_a_latents_folder_the_distill_pass_would_at_the_latents_dir_line(tmp_path, capsys, name, words):
    """plan ran one row of the folder through the teacher only on the meta device, which a toy
    teacher is not: latents of other channels, or without the text embeddings, planned fine and were
    refused by the run (a traceback-like torch message, at the pass's line). Now plan refuses what the
    run would, in one line at the recipe's latents_dir line, naming what the teacher takes."""
    import re

    from compress.cli import main

    _toy_folders(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", tmp_path / name)
    code = main(["plan", recipe])
    err = capsys.readouterr().err.strip()
    if words is None:
        assert code == 0 and "error" not in err
        return
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert re.search(f"^dit-compress plan: error: {re.escape(recipe)}:7: distill\\.latents_dir .*{words}", err), err


def test_the_run_refuses_a_folder_without_text_embeddings_before_any_compute(tmp_path, capsys):
    """The run's up-front checks (on a meta copy of the teacher) say what plan says: the latents_dir
    line, and the kwarg the folder lacks; nothing is calibrated or trained."""
    from compress.cli import main

    _toy_folders(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", tmp_path / "no text")
    assert main(["run", recipe, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:7: distill.latents_dir file {tmp_path / 'no text'}" in err
    assert err.rstrip().endswith("it lacks cond.encoder_hidden_states, which the teacher takes)")
    assert not (tmp_path / "out").exists()


def test_check_folder_runs_a_row_through_a_model_that_holds_weights_on_a_meta_copy(tmp_path):
    """The dry run was skipped for a model with weights (plan's toy teachers, the student the pass
    trains). Now it runs on a meta copy, the model left as it was, and names the kwargs the teacher
    takes that the folder lacks (Flux: pooled_projections, the ids under 'shared.')."""
    teacher = tiny_flux()
    kwargs = model_inputs(teacher, batch=2)
    cond = {k: v for k, v in cond_of(kwargs).items()
            if torch.is_tensor(v) and k not in ("pooled_projections", "img_ids")}
    write_shard(tmp_path / "a.safetensors", kwargs["hidden_states"], cond)
    with pytest.raises(UserError, match=r"does not run through the model: .*; it lacks cond.pooled_projections, "
                                        r"shared.img_ids, which the teacher takes\)$"):
        check_folder(tmp_path, teacher, get_adapter(teacher))
    assert next(teacher.parameters()).device.type == "cpu"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_check_folder_reads_only_the_first_files_header_and_first_row(tmp_path, monkeypatch, suffix):
    """plan read the folder's first file whole (GBs for a real one: safetensors' load_file) and
    checked all its values finite. Now a safetensors file's header and first row are read, a
    pickle's tensors are mapped (mmap) and one row of each is used; FolderSource, which the pass
    reads the folder with, still checks every value."""
    import safetensors.torch

    from compress.distill_folder import _flatten

    teacher = tiny_pixart()
    kwargs = model_inputs(teacher, batch=32)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v)}
    latents = kwargs["hidden_states"].clone()  # (32, C, H, W)
    latents[-1, 0, 0, 0] = float("nan")  # past the first row: FolderSource's to find
    write_shard(tmp_path / "a.safetensors", latents, cond)
    if suffix == ".pt":
        flat = {"latents": latents}
        for k, v in cond.items():
            _flatten(f"cond.{k}", v, flat)
        torch.save(flat, tmp_path / "a.pt")
        (tmp_path / "a.safetensors").unlink()
    checked, loads, real_isfinite, real_load = [], [], torch.isfinite, torch.load
    monkeypatch.setattr(torch, "isfinite", lambda t: checked.append(t.numel()) or real_isfinite(t))
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("mmap")) or real_load(*a, **k))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("the whole file was read"))
    check_folder(tmp_path, teacher, get_adapter(teacher))
    row = latents[0].numel()
    assert checked and max(checked) <= max(row, *(v[0].numel() for v in cond.values()))
    assert all(loads)  # mapped, not read
    monkeypatch.undo()
    with pytest.raises(UserError, match="'latents' holds non-finite values"):
        FolderSource(tmp_path)
