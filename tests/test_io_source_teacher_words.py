"""What a teacher of the wrong form is told (stop 51 T2's findings): a folder of another model, a config
naming no _class_name, one shard of a sharded checkpoint, a single file against a config of other
numbers (a FLUX.1-schnell file against a dev config), convert of a file of no transformer, a file:// URL,
and the recipe's file:line on a folder of two weight variants and on a Hub id not fetched offline."""

import json

import pytest
import torch
from safetensors.torch import save_file

from compress.errors import UserError
from compress.io_source import check_source, no_checkpoint_file
from compress.io_source_config import TeacherSource, source_family
from tests.conftest import tiny_flux, tiny_pixart


def _folder(path, config: dict):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("config, words", [
    ({"_class_name": "AutoencoderKL", "in_channels": 3},
     "{p} holds an AutoencoderKL (not a PixArt or Flux transformer): give the pipeline folder or its "
     "transformer/ folder"),
    ({"_class_name": "UNet2DModel"}, "{p} holds a UNet2DModel (not a PixArt or Flux transformer)"),
    ({"architectures": ["T5EncoderModel"], "model_type": "t5"},
     "{p} holds a transformers T5EncoderModel (not a PixArt or Flux transformer)"),
])
def test_a_folder_of_another_model_names_the_folder_and_what_it_holds(tmp_path, config, words):
    """It said "unsupported model class 'AutoencoderKL'; supported: ..." ('<missing _class_name>' for a
    transformers config), naming no path where --teacher gave it."""
    folder = _folder(tmp_path / "vae", config)
    with pytest.raises(UserError) as e:
        source_family(str(folder), where="--teacher: ")
    assert str(e.value).startswith("--teacher: " + words.format(p=folder))


def test_a_folder_of_another_model_is_refused_in_the_same_words_as_it_loads(tmp_path):
    from compress.io import load_teacher

    folder = _folder(tmp_path / "unet", {"_class_name": "UNet2DModel"})
    with pytest.raises(UserError, match=f"^{folder} holds a UNet2DModel "):
        load_teacher(str(folder))


def test_a_config_naming_no_class_says_the_class_to_add_where_its_keys_tell_it(tmp_path):
    config = dict(tiny_pixart().config)  # the class's numbers, no _class_name
    folder = _folder(tmp_path / "p", {k: v for k, v in config.items() if not k.startswith("_")})
    with pytest.raises(UserError, match=f'^{folder / "config.json"} names no _class_name: add '
                                        '"_class_name": "PixArtTransformer2DModel"'):
        source_family(str(folder))
    bare = _folder(tmp_path / "q", {"in_channels": 4})
    with pytest.raises(UserError, match=f"^{bare / 'config.json'} names no _class_name and its keys are no PixArt "
                                        "or Flux transformer's"):
        source_family(str(bare))


def _shards(folder, total=3):
    folder.mkdir()
    names = [f"diffusion_pytorch_model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
    for i, name in enumerate(names):
        save_file({f"w{i}": torch.zeros(2)}, str(folder / name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"w{i}": n for i, n in enumerate(names)}}))
    return folder / names[0]


def test_one_shard_given_as_the_teacher_names_the_folder_to_give(tmp_path):
    """It said 'the weights do not match config.json: missing ...' (the shard's tensors against the whole model)."""
    shard = _shards(tmp_path / "t")
    with pytest.raises(UserError, match=rf"^r.yaml:3: {shard} is shard 1 of 3 of the checkpoint in {tmp_path / 't'}, "
                                        rf"not a checkpoint of its own: give the folder {tmp_path / 't'}$"):
        check_source(str(shard), "r.yaml:3: ")


def test_a_sharded_checkpoints_index_or_a_folders_config_given_as_the_teacher_names_the_folder(tmp_path):
    """They said 'F is not a checkpoint: file type '.json'; a teacher is a folder or a checkpoint file (...)'."""
    _shards(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{}")
    for name, what in (("diffusion_pytorch_model.safetensors.index.json", "the index of the sharded checkpoint"),
                       ("config.json", "the config of the transformer")):
        with pytest.raises(UserError, match=rf"^r.yaml:3: {tmp_path / 't' / name} is {what} in {tmp_path / 't'}: "
                                            rf"give the folder {tmp_path / 't'}$"):
            check_source(str(tmp_path / "t" / name), "r.yaml:3: ")


def test_convert_of_one_shard_names_its_folder(tmp_path):
    from compress.io_convert import convert_file

    shard = _shards(tmp_path / "t", total=2)
    with pytest.raises(UserError, match=rf"^{shard} is shard 1 of 2 of the checkpoint in"):
        convert_file(shard, tmp_path / "out")


def _file(tmp_path, model, name="m.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_schnell_file_against_a_dev_config_says_guidance_embeds(tmp_path):
    """It said 'the weights do not match config.json: missing time_text_embed.guidance_embedder...', the
    config given (teacher_config) being no config.json beside the file, and no advice."""
    from compress.io_single import load_single_file

    path = _file(tmp_path, tiny_flux(guidance_embeds=False))
    tiny_flux().save_config(tmp_path / "dev")
    with pytest.raises(UserError, match=rf"^{path} has no guidance embedder, as FLUX.1-schnell's weights have none, "
                                        rf"while the config in {tmp_path / 'dev'} has guidance_embeds: true .*: give a "
                                        "config with guidance_embeds: false"):
        load_single_file(path, config=str(tmp_path / "dev"))


def test_a_single_file_against_a_config_of_other_numbers_names_that_config(tmp_path):
    from compress.io_single import load_single_file

    path = _file(tmp_path, tiny_pixart())
    tiny_pixart(num_layers=1).save_config(tmp_path / "o")
    (tmp_path / "o" / "config.json").rename(tmp_path / "other.json")
    with pytest.raises(UserError, match=rf"^{path}: the weights do not match {tmp_path / 'other.json'}: "
                                        "unexpected transformer_blocks"):
        load_single_file(path, config=str(tmp_path / "other.json"))


def test_convert_of_a_file_of_no_transformer_starts_with_its_path(tmp_path):
    """It said 'cannot tell the model family from the checkpoint keys (first: [...])', naming no file."""
    from compress.io_convert import convert_file

    path = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2), "encoder.conv_in.weight": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match=rf"^{path} holds no PixArt or Flux transformer: cannot tell the model family"):
        convert_file(path, tmp_path / "out")


def test_a_file_url_is_refused_with_the_plain_path(tmp_path):
    """It said 'teacher not found: file:///x (there is no /cwd/file:/x ...)'."""
    url = f"file://{tmp_path}/t"
    words = f"{url}: file:// URLs are not read; give the plain path {tmp_path}/t"
    with pytest.raises(UserError, match=f"^r.yaml:3: {words}$"):
        check_source(url, "r.yaml:3: ")
    assert no_checkpoint_file(url) == words


def test_a_folder_of_two_variants_is_refused_after_where_it_was_given(tmp_path):
    tiny_pixart().save_config(tmp_path / "t")
    folder = tmp_path / "t"
    for variant in ("fp16", "bf16"):
        (folder / f"diffusion_pytorch_model.{variant}.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=f"^r.yaml:3: {folder} holds the weight variants bf16, fp16 and no plain"):
        check_source(str(folder), "r.yaml:3: ")


def test_a_hub_teacher_not_fetched_is_refused_after_where_it_was_given(monkeypatch):
    import compress.io_hub as io_hub
    from compress.io import _load_hub

    def not_cached(repo_id):
        raise UserError(f"cannot fetch '{repo_id}' offline (HF_HUB_OFFLINE)")

    monkeypatch.setattr(io_hub, "hub_folder", not_cached)
    with pytest.raises(UserError, match=r"^r.yaml:3: cannot fetch 'org/model' offline"):
        _load_hub("org/model", torch.float32, "r.yaml:3: ")


def test_plan_of_a_known_hub_id_offline_and_not_cached_notes_that_run_would_refuse_it(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    src = TeacherSource(source, "hub", where="r.yaml:3: ", hub=False)
    assert src.config["_class_name"] == "PixArtTransformer2DModel"
    err = capsys.readouterr().err
    assert f"r.yaml:3: teacher {source} is planned from the config shipped with dit-compress; offline" in err
    assert "run would refuse it" in err


def test_a_folder_whose_config_is_another_familys_than_its_weights_says_to_fix_its_class_name(tmp_path):
    """It ended 'give the config of its own transformer (T/f/config.json)': the advice for a --teacher-config,
    naming the very file that is wrong."""
    folder = tmp_path / "f"
    tiny_flux().save_pretrained(folder)
    tiny_pixart().save_config(folder)  # its config.json a PixArt's
    with pytest.raises(UserError) as e:
        source_family(str(folder), where="--teacher: ")
    assert str(e.value) == (f"--teacher: {folder}: its weights are a flux transformer while its config.json describes "
                            "a pixart one (PixArtTransformer2DModel): fix its _class_name (a flux transformer's is "
                            "FluxTransformer2DModel) or give the right folder")
