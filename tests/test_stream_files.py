import os
import re
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.io_export import save_compressed
from compress.stream_files import checkpoint_of, weight_map
from tests.conftest import tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_index_naming_a_missing_shard_is_a_user_error(tmp_path):
    """An incomplete download: one line naming the shard, not FileNotFoundError when it is read."""
    tiny_pixart().save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    shard = sorted((tmp_path / "ckpt").glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=rf"lists 1 shard\(s\) not in .*: {shard.name} \(an incomplete"):
        weight_map(tmp_path / "ckpt")


@pytest.mark.parametrize("held", ['[1, 2]', '{"weight_map": {"a": null}}'])
def test_a_damaged_index_is_one_line_naming_it_as_load_transformer_says_it(tmp_path, held):
    """A shard of null was a TypeError (PosixPath / NoneType); an index that is a list: 'has no weight_map'."""
    tiny_pixart().save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    index = tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(held)
    why = (" is not a weight index (a JSON object with a weight_map); it holds a list" if held.startswith("[") else
           "'s weight_map gives the tensor 'a' the shard null, not a file name")
    with pytest.raises(UserError) as e:
        weight_map(tmp_path / "ckpt")
    assert str(e.value) == f"{index}{why}"


@pytest.mark.parametrize("size", [5, 200, -10])  # header cut, header cut at its end, data cut short
def test_a_truncated_shard_is_refused_when_the_index_is_read(tmp_path, size):
    """Every shard opens when the index is read (headers only), so a damaged one is one line naming
    it before any block is computed, not a SafetensorError when its block is reached."""
    tiny_pixart().save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    shard = sorted((tmp_path / "ckpt").glob("*.safetensors"))[-1]
    os.truncate(shard, size if size > 0 else shard.stat().st_size + size)
    with pytest.raises(UserError, match=rf"^{re.escape(str(shard))} is not a readable safetensors file \(.*\); "
                                        "it may be truncated or corrupted$"):
        weight_map(tmp_path / "ckpt")
    with pytest.raises(UserError, match=re.escape(str(shard))):
        checkpoint_of(str(tmp_path / "ckpt"))


def test_checkpoint_of_each_streamable_layout(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="40KB")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    config, files = checkpoint_of(str(tmp_path / "pipe"))  # a pipeline folder: its transformer/
    assert config["_class_name"] == "PixArtTransformer2DModel"
    assert set(files) == set(tiny_pixart().state_dict()) and len(set(files.values())) > 1
    config, files = checkpoint_of("toy:flux")
    assert config["_class_name"] == "FluxTransformer2DModel" and len(set(files.values())) == 1
    with pytest.raises(UserError, match="not found"):
        checkpoint_of(str(tmp_path / "nothing-here"))


def test_a_compressed_output_is_not_a_teacher_to_stream(tmp_path):
    """Refused, saying what to do instead (it said 'stream a teacher checkpoint', which the user had
    not got) and why: plan as run."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    save_compressed(tiny_pixart(), tmp_path / "out")
    said = (f"{tmp_path / 'out'} is a dit-compress output: its factorized layers (down and up factors) are not the "
            "dense per-block tensors stream: true reads a block at a time; compress it further resident (stream: "
            "false in the recipe, or --set stream=false)")
    with pytest.raises(UserError, match=f"^{re.escape(said)}$"):
        checkpoint_of(str(tmp_path / "out"))
    recipe = parse_recipe(f"model: pixart\nteacher: {tmp_path / 'out'}\nstream: true\ncalibration: {{source: synthetic}}\n"
                          "passes: [{svd: {targets: [mlp], ratio: 0.5, fisher: block}}]\n", str(tmp_path / "r.yaml"))
    with pytest.raises(UserError, match=re.escape(said)):
        make_plan(recipe)


def test_a_folder_without_weights_says_so_in_words_fit_for_every_reader(tmp_path):
    """weight_map serves streaming and a DoRA's teacher: its error names the folder and what is
    missing, not streaming."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as e:
        weight_map(tmp_path)
    assert str(e.value) == (f"{tmp_path} has neither diffusion_pytorch_model.safetensors nor "
                            "diffusion_pytorch_model.safetensors.index.json: no diffusers weights to read there")



@pytest.mark.parametrize("layout", ["transformer-only", "pipeline, one variant"])
def test_a_hub_teacher_streams_from_the_transformer_folder_load_teacher_reads(tmp_path, monkeypatch, layout):
    """stream: true of a transformer-only Hub repo fetched only model_index.json and transformer/*
    (nothing there: 'not found'); now what load_teacher fetches: the transformer folder's config and
    its one variant's files (the Hub, online, stood in for: only the files asked for are copied)."""
    import fnmatch
    import shutil

    import huggingface_hub

    from tests.test_io_hub import _pipeline_with, hub_info

    model = tiny_pixart()
    if layout == "transformer-only":
        model.save_pretrained(tmp_path / "repo", max_shard_size="40KB")
    else:
        _pipeline_with(tmp_path / "repo", lambda f: model.half().save_pretrained(f, variant="fp16"))
        model.save_pretrained(tmp_path / "repo" / "unet")  # another component: not fetched
    listed = sorted(p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*") if p.is_file())

    def snapshot_download(repo, allow_patterns):
        for name in listed:
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (tmp_path / "got" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "repo" / name, tmp_path / "got" / name)
        return str(tmp_path / "got")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout: hub_info(listed))
    def hf_hub_download(repo, name, subfolder=None):
        from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
        from huggingface_hub.errors import RemoteEntryNotFoundError

        name = f"{subfolder}/{name}" if subfolder else name
        if name not in listed:
            response = httpx.Response(404, request=httpx.Request("HEAD", f"https://huggingface.co/{repo}"))
            raise RemoteEntryNotFoundError("404", response=response)
        return str(Path(snapshot_download(repo, [name])) / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    config, files = checkpoint_of("acme/tiny")
    assert config["_class_name"] == "PixArtTransformer2DModel"
    assert set(files) == set(model.state_dict())
    assert all(".fp16" in f.name for f in files.values()) == (layout != "transformer-only")
    assert not (tmp_path / "got" / "unet").exists()


@pytest.mark.parametrize("shard", [None, "10KB"])
def test_a_streamed_snapshot_whose_weights_link_to_a_gone_blob_says_so_as_the_resident_load_does(tmp_path, shard):
    """stream: true on a cache's snapshot folder whose weight file links to a removed blob said 'has
    neither diffusion_pytorch_model.safetensors nor …' or, for a shard, '… (an incomplete download?)';
    now what the resident load says (io_errors.broken_weights): the link, and the hf download."""
    from tests.test_io_errors import gone_blob

    folder, said = gone_blob(tmp_path, shard)
    with pytest.raises(UserError) as e:
        checkpoint_of(str(folder))
    assert str(e.value) == said


@pytest.mark.parametrize("shard", [None, "30KB"], ids=["one file", "sharded"])
def test_a_folder_of_bin_weights_is_advised_a_command_that_writes_a_streamable_folder(tmp_path, monkeypatch,
                                                                                     capsys, shard):
    """stream: true with a teacher folder saved with save_pretrained(safe_serialization=False) said 'it holds
    the single file …/diffusion_pytorch_model.bin: write it once as a folder with `dit-compress convert …`',
    and, sharded, named a shard to convert (a part of the weights). Now it names diffusers' .bin weights and a
    command that works (convert of the one file, which reads the config.json beside it; shards: convert of
    the folder, which converts them whole, where it advised diffusers' from_pretrained and save_pretrained):
    run as advised, it writes a folder that streams the same tensors."""
    import shlex

    from safetensors.torch import load_file

    from compress.cli import main

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t", safe_serialization=False, **({"max_shard_size": shard} if shard else {}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        checkpoint_of("t")
    said = str(refused.value)
    assert "it holds diffusers' .bin weights (" in said and "which stream: true does not read: write them once " \
           "as safetensors with `" in said and said.endswith("`, then stream --teacher FOLDER"), said
    command = shlex.split(re.search(r"`(.*)`", said).group(1).replace("FOLDER", "new"))
    assert command[:2] == ["dit-compress", "convert"] and command[2] == ("t" if shard else "t/diffusion_pytorch_model.bin")
    capsys.readouterr()
    assert main(command[1:]) == 0, capsys.readouterr().err
    config, files = checkpoint_of("new")
    assert config["_class_name"] == type(model).__name__
    streamed = {k: v for f in set(files.values()) for k, v in load_file(f).items()}
    expected = model.state_dict()
    assert streamed.keys() == expected.keys() and all(streamed[k].equal(expected[k]) for k in expected)
