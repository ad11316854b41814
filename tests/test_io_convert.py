"""`convert_file`: a single-file checkpoint as a diffusers transformer folder, tensor by tensor."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress import load_teacher
from compress.errors import UserError
from compress.io_convert import convert_file
from tests.bfl import flux_to_bfl
from tests.conftest import forward, model_inputs, tiny_flux, tiny_pixart
from tests.test_io_single import _to_original_pixart


def _folder_tensors(folder):
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["diffusion_pytorch_model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(folder / f)))
    return out, files


@pytest.mark.parametrize("shard_bytes", [2**40, 20_000])  # one file; many shards and an index
def test_a_bfl_file_converts_to_the_model_it_was_written_from(tmp_path, shard_bytes):
    model = tiny_flux().to(torch.bfloat16)
    model.save_config(tmp_path / "cfg")
    save_file(flux_to_bfl(model, "model.diffusion_model."), str(tmp_path / "flux1-dev.safetensors"))
    done = convert_file(tmp_path / "flux1-dev.safetensors", tmp_path / "out", config=str(tmp_path / "cfg"),
                        shard_bytes=shard_bytes)
    saved, files = _folder_tensors(tmp_path / "out")
    want = model.state_dict()
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], v) for k, v in want.items())
    assert done["shards"] == len(files) and (len(files) == 1) == (shard_bytes == 2**40)
    assert done["dtypes"] == ["bfloat16"] and done["tensors"] == len(want)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", *files, *(["diffusion_pytorch_model.safetensors.index.json"] if len(files) > 1 else [])])
    teacher, inputs = load_teacher(str(tmp_path / "out")), model_inputs(model)  # float32, as a run loads it
    assert torch.equal(forward(teacher, inputs), forward(model.float(), inputs))


@pytest.mark.parametrize("legacy", [False, True])  # memory-mapped; torch.save's pre-zipfile format
def test_an_original_pixart_pth_converts(tmp_path, legacy):
    model = tiny_pixart()
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, tmp_path / "PixArt.pth",
               _use_new_zipfile_serialization=not legacy)
    model.save_config(tmp_path / "cfg")
    convert_file(tmp_path / "PixArt.pth", tmp_path / "out", config=str(tmp_path / "cfg"))
    teacher = load_teacher(str(tmp_path / "out"))
    inputs = model_inputs(model)
    torch.testing.assert_close(forward(teacher, inputs), forward(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("final_layer.linear.bias"), "lacks 1 tensor.*proj_out.bias"),
    (lambda sd: sd.update({"img_in.weight": sd["img_in.weight"][:, :-1].contiguous()}), "x_embedder.weight has shape"),
    (lambda sd: sd.update({"double_blocks.0.extra.weight": torch.zeros(1)}), "double_blocks.0.extra.weight"),
])
def test_a_file_that_does_not_fit_its_config_leaves_no_folder(tmp_path, change, words):
    model = tiny_flux()
    model.save_config(tmp_path)
    sd = flux_to_bfl(model, "")
    change(sd)
    save_file(sd, str(tmp_path / "f.safetensors"))
    with pytest.raises(UserError, match=words):
        convert_file(tmp_path / "f.safetensors", tmp_path / "out", shard_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors"]  # no temp left


def test_a_file_of_another_type_says_what_convert_reads(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(UserError) as e:
        convert_file(tmp_path / "notes.txt", tmp_path / "out")
    assert str(e.value) == (f"{tmp_path}/notes.txt is not a checkpoint: file type '.txt'; convert reads a single-file "
                            "checkpoint (.safetensors, .pth, .pt, .bin, .ckpt)")
    assert not (tmp_path / "out").exists()


def test_a_config_of_another_family_names_the_file_as_load_teacher_does(tmp_path):
    """convert's error lacked the '<path>: ' that load_teacher and run give."""
    save_file(tiny_pixart().state_dict(), str(tmp_path / "p.safetensors"))
    tiny_flux().save_config(tmp_path / "fluxcfg")
    with pytest.raises(UserError, match=rf"^{tmp_path}/p.safetensors: the checkpoint's weights are a pixart "
                                        rf"transformer while the config in {tmp_path}/fluxcfg describes a flux one"):
        convert_file(tmp_path / "p.safetensors", tmp_path / "out", config=str(tmp_path / "fluxcfg"))
