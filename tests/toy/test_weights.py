import shutil

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

from compress.errors import UserError
from compress.toy.weights import WEIGHTS_DIR, load_toy_teacher


def test_shipped_teachers_load(teachers):
    assert isinstance(teachers["pixart"], PixArtTransformer2DModel)
    assert isinstance(teachers["flux"], FluxTransformer2DModel)
    assert teachers["pixart"].config.num_layers >= 6
    assert teachers["flux"].config.num_layers >= 2 and teachers["flux"].config.num_single_layers >= 4
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert size < 21 * 2**20


def test_dtype_argument():
    model = load_toy_teacher("flux", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.fixture()
def copied(tmp_path):
    for name in ("pixart.json", "pixart.safetensors", "text_encoder.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    return tmp_path


def test_missing_weights_name_the_file(copied):
    (copied / "pixart.safetensors").unlink()
    with pytest.raises(UserError, match=r"missing: .*pixart\.safetensors"):
        load_toy_teacher("pixart", weights_dir=copied)


def test_truncated_weights_name_the_file(copied):
    path = copied / "pixart.safetensors"
    path.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(UserError, match=r"corrupted: .*pixart\.safetensors") as info:
        load_toy_teacher("pixart", weights_dir=copied)
    assert "\n" not in str(info.value)


def test_garbage_weights_name_the_file(copied):
    (copied / "pixart.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"pixart\.safetensors"):
        load_toy_teacher("pixart", weights_dir=copied)


def test_mismatched_weights_name_the_file(copied):
    shutil.copy(WEIGHTS_DIR / "flux.safetensors", copied / "pixart.safetensors")
    with pytest.raises(UserError, match=r"does not match .*pixart\.safetensors"):
        load_toy_teacher("pixart", weights_dir=copied)


def test_corrupted_config_names_the_file(copied):
    (copied / "pixart.json").write_text("{not json")
    with pytest.raises(UserError, match=r"pixart\.json"):
        load_toy_teacher("pixart", weights_dir=copied)


def test_unknown_family():
    with pytest.raises(UserError, match="pixart, flux"):
        load_toy_teacher("sdxl")
