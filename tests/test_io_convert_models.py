"""`dit-compress convert` of a folder of another model (compress.io_convert.check_folder_model): a VAE's,
a UNet's, a transformers text encoder's folder is said to be what it is, in the words run --teacher has
for the same folder (io.supported_class), before convert says what a folder of weights is."""

import json

import pytest
import torch
from safetensors.torch import save_file

from compress.cli import main
from compress.errors import UserError
from compress.io_convert import convert_file
from tests.conftest import tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = "model: pixart\nteacher: toy:pixart\ncalibration: {source: synthetic}\npasses:\n  - svd: {ratio: 0.5}\n"


def _vae(folder, **kw):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",)).save_pretrained(folder, **kw)


def _unet(folder):
    from diffusers import UNet2DModel

    UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, sample_size=8, layers_per_block=1,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).save_pretrained(folder)


def _t5(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"], "model_type": "t5"}))
    save_file({"shared.weight": torch.zeros(4, 16)}, str(folder / "model.safetensors"))


def _errors(capsys) -> list[str]:
    return [s for s in capsys.readouterr().err.splitlines() if s.startswith(("dit-compress convert: error: ", "dit-compress plan: error: "))]


@pytest.mark.parametrize(("make", "what"), [
    (_vae, "an AutoencoderKL"), (lambda f: _vae(f, safe_serialization=False), "an AutoencoderKL"),
    (_unet, "a UNet2DModel"), (_t5, "a transformers T5EncoderModel")])
def test_convert_of_another_models_folder_says_what_it_holds_as_run_does(tmp_path, make, what, capsys):
    """convert of a VAE's folder said 'T/vae: a folder; convert reads a single-file checkpoint (a folder is
    already what stream: true reads)' (a VAE is no teacher to stream), a text encoder's 'give the file in it,
    T/textenc/model.safetensors', a VAE's .bin folder 'holds no PixArt or Flux transformer: cannot tell the
    model family from the checkpoint keys (first: [...])', where run --teacher said 'T/vae holds an
    AutoencoderKL (not a PixArt or Flux transformer): give the pipeline folder or its transformer/ folder'.
    Now convert says run's words; nothing is written."""
    folder = tmp_path / "model"
    make(folder)
    words = f"{folder} holds {what} (not a PixArt or Flux transformer): give the pipeline folder or its transformer/ folder"
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 2
    assert _errors(capsys) == [f"dit-compress convert: error: {words}"]
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert main(["plan", str(tmp_path / "r.yaml"), "--teacher", str(folder)]) == 2
    assert _errors(capsys) == [f"dit-compress plan: error: --teacher: {words}"]
    with pytest.raises(UserError) as e:  # the API alike
        convert_file(folder, tmp_path / "out")
    assert str(e.value) == words
    assert not (tmp_path / "out").exists()


def test_convert_of_a_transformers_folder_is_still_what_stream_reads(tmp_path, capsys):
    """A PixArt transformer's safetensors folder, and a pipeline folder holding it, are still said to be what
    stream: true reads already; its .bin folder converts."""
    tiny_pixart().save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(
        {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    for folder in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):
        assert main(["convert", str(folder), str(tmp_path / "out")]) == 2
        assert _errors(capsys) == [f"dit-compress convert: error: {folder}: a folder; convert reads a single-file checkpoint "
                                   "(a folder is already what stream: true reads)"]
    tiny_pixart().save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert main(["convert", str(tmp_path / "bin"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()
