"""A teacher folder whose weights do not fit its config.json or fail to load (load_teacher): one line
naming the file or tensor, never diffusers' log. Other teacher and output loading: test_io.py."""
import json

import pytest
import torch

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import diffusers_log, forward, model_inputs, tiny_pixart


@pytest.mark.parametrize("layers", [2, 4])  # the weights hold 3 blocks
def test_config_that_does_not_match_the_weights(tmp_path, layers):
    """diffusers only logs missing or unexpected keys: a teacher would lose or never fill blocks."""
    tiny_pixart().save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps(dict(config, num_layers=layers)))
    with pytest.raises(UserError, match="do not match config.json: (missing|unexpected) transformer_blocks"):
        load_teacher(str(tmp_path / "t"))


@pytest.mark.parametrize("key, value", [("num_attention_heads", 4), ("cross_attention_dim", 8)])
def test_config_of_another_width_than_the_weights_names_the_tensor_and_both_shapes(tmp_path, key, value):
    """diffusers' own words (with advice to load random weights instead) are not passed on."""
    tiny_pixart().save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps(dict(config, **{key: value})))
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    name, weights, model = {"num_attention_heads": ("adaln_single.emb.timestep_embedder.linear_1.bias", "16,", "32,"),
                            "cross_attention_dim": ("transformer_blocks.0.attn2.to_k.weight", "16, 16", "16, 8")}[key]
    assert str(e.value) == (f"teacher {tmp_path}/t: its weights do not match its config.json: {name} is "
                            f"({weights}) in the weights but ({model}) in the PixArtTransformer2DModel the config "
                            "describes")


@pytest.mark.parametrize("config", [[1, 2], {"_class_name": "PixArtTransformer2DModel", "num_layers": "six"}])
def test_config_that_builds_no_model(tmp_path, config):
    from compress.stream import empty_transformer

    tiny_pixart().save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_teacher(str(tmp_path / "t")), lambda: empty_transformer(tmp_path / "t")):
        with pytest.raises(UserError, match="config"):
            load()


@pytest.mark.parametrize("layers", [2, 4])  # the weights hold 3 blocks
def test_weights_that_do_not_fill_the_config_are_one_line_without_diffusers_log(tmp_path, layers):
    """diffusers printed ~2 KB of tensor names and 'You should probably TRAIN this model' first."""
    tiny_pixart().save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps(dict(config, num_layers=layers)))
    with diffusers_log() as logged, pytest.raises(UserError, match="do not match config.json"):
        load_teacher(str(tmp_path / "t"))
    assert logged == []


def test_a_teacher_folder_without_its_weights_is_one_line(tmp_path):
    """diffusers said 'An error occurred while trying to fetch', 'Defaulting to unsafe serialization'
    and then that it found no .bin."""
    model = tiny_pixart()
    model.save_config(tmp_path / "t")
    with diffusers_log() as logged, pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    assert logged == []
    assert str(e.value) == (f"{tmp_path}/t has config.json but no weights: no diffusion_pytorch_model.safetensors, "
                            "diffusion_pytorch_model.safetensors.index.json or a variant or .bin of them (the folder "
                            "holds nothing else)")
    model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    (tmp_path / "s" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    n = len(list((tmp_path / "s").glob("*.safetensors")))
    with diffusers_log() as logged, pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "s"))
    assert logged == []
    assert str(e.value) == (f"{tmp_path}/s/diffusion_pytorch_model.safetensors.index.json is missing: the teacher's "
                            f"weights are in {n} shards (diffusion_pytorch_model-00001-of-0000{n}.safetensors …) and "
                            "the index says which tensor is in which; copy the folder again")


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_a_teacher_folder_of_bin_weights_loads_as_data_without_diffusers_warning(tmp_path, shard):
    """It printed 'Defaulting to unsafe serialization'; diffusers' .bin shards did not load at all.
    The pickle is read with weights_only=True: one naming a class is refused, in one line."""
    import argparse

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t", safe_serialization=False, **({"max_shard_size": shard} if shard else {}))
    inputs = model_inputs(model)
    with diffusers_log() as logged:
        assert torch.equal(forward(load_teacher(str(tmp_path / "t")), inputs), forward(model.eval(), inputs))
    assert logged == []
    first = sorted((tmp_path / "t").glob("*.bin"))[0]
    torch.save({**torch.load(first, weights_only=True), "hparams": argparse.Namespace(lr=1)}, first)
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    assert str(e.value) == (f"{tmp_path}/t: its weights need arbitrary code to unpickle and were refused; checkpoints "
                            "are data, never code: convert them to safetensors")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_teacher_folder_whose_bin_weights_are_cut_says_so(tmp_path, legacy):
    """A .bin cut short in a teacher folder said "its weights need arbitrary code to unpickle" (a legacy
    file cut inside a class name) or only diffusers' "Unable to load weights" (a zip cut in half)."""
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t", safe_serialization=False)
    weights = tmp_path / "t" / "diffusion_pytorch_model.bin"
    sd = torch.load(weights, weights_only=True)
    torch.save(sd, weights, _use_new_zipfile_serialization=not legacy)
    data = weights.read_bytes()
    weights.write_bytes(data[: data.index(b"torch._utils") + 8] if legacy else data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    assert str(e.value) == (f"{weights}: its weights fail to load (the file ends early); it may be truncated or "
                            "corrupted: copy it again")


def test_a_teacher_folder_with_a_cut_safetensors_shard_names_it_as_truncated(tmp_path):
    """Loaded resident, a shard cut short said diffusers' "Unable to load weights from checkpoint file";
    now the words a streamed load and a single file use."""
    tiny_pixart().save_pretrained(tmp_path / "t", max_shard_size="20KB")
    shard = sorted((tmp_path / "t").glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    assert str(e.value).startswith(f"{shard} is not a readable safetensors file (")
    assert str(e.value).endswith("); it may be truncated or corrupted")


@pytest.mark.parametrize("shard", [None, "20KB"])
@pytest.mark.parametrize("change, said", [({"num_layers": 4}, "missing: the weights do not match config.json: missing "),
                                          ({"num_layers": 2}, "missing: the weights do not match config.json: unexpected "),
                                          ({"cross_attention_dim": 8}, "teacher missing: its weights do not match its "
                                                                       "config.json: transformer_blocks.0.attn2.to_k.weight ")])
def test_a_bin_folders_refusals_as_it_loads_start_where_the_teacher_was_given(tmp_path, monkeypatch, shard, change, said):
    """A folder of .bin weights (diffusers' diffusion_pytorch_model.bin, or shards and their index) is checked
    against its config.json only as it loads (no header to read before): its refusals lacked the place a
    .safetensors folder's and a .pth file's have, the recipe's 'r.yaml:2: ' (run, importance) or '--teacher: '
    (run, eval, bench)."""
    from compress.io_teacher_of import load_teacher_of
    from compress.recipe import parse_recipe
    from compress.runner_setup import load_checked_teacher

    model = tiny_pixart()  # 3 blocks
    model.save_pretrained(tmp_path / "missing", safe_serialization=False, **({"max_shard_size": shard} if shard else {}))
    config = json.loads((tmp_path / "missing" / "config.json").read_text())
    (tmp_path / "missing" / "config.json").write_text(json.dumps(dict(config, **change)))
    monkeypatch.chdir(tmp_path)
    text = "model: pixart\nteacher: {}\ncalibration: {{source: synthetic}}\npasses: [svd]\n"
    with pytest.raises(UserError) as e:
        load_checked_teacher(parse_recipe(text.format("missing"), "r.yaml"))
    assert str(e.value).startswith(f"r.yaml:2: {said}")
    with pytest.raises(UserError) as e:
        load_checked_teacher(parse_recipe(text.format("toy:pixart"), "r.yaml"), teacher="missing")
    assert str(e.value).startswith(f"--teacher: {said}")
    with pytest.raises(UserError) as e:
        load_teacher_of(model, "missing", where="--teacher: ")
    assert str(e.value).startswith(f"--teacher: {said}")
