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
    save_compressed(tiny_pixart(), tmp_path / "out")
    with pytest.raises(UserError, match="is a dit-compress output"):
        checkpoint_of(str(tmp_path / "out"))


def test_a_folder_without_weights_says_so_in_words_fit_for_every_reader(tmp_path):
    """weight_map serves streaming and a DoRA's teacher: its error names the folder and what is
    missing, not streaming."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as e:
        weight_map(tmp_path)
    assert str(e.value) == (f"{tmp_path} has neither diffusion_pytorch_model.safetensors nor "
                            "diffusion_pytorch_model.safetensors.index.json: no diffusers weights to read there")
