import json
import shutil

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

from compress.errors import UserError
from compress.toy.weights import WEIGHTS_DIR, load_toy_teacher, toy_files


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
    with pytest.raises(UserError, match=r"^unknown toy teacher 'toy:sdxl' \(the toy teachers: toy:pixart, toy:flux\)"):
        load_toy_teacher("sdxl")
    with pytest.raises(UserError, match=r"^unknown toy teacher 'toy:pixar'; did you mean 'toy:pixart'\? \(the"):
        load_toy_teacher("pixar")


@pytest.fixture()
def copied_with_checksums(copied):
    shutil.copy(WEIGHTS_DIR / "checksums.json", copied / "checksums.json")
    return copied


def test_shipped_files_match_their_checksums():
    from compress.toy.weights import CHECKSUMS_FILE, verify_checksum

    listed = json.loads((WEIGHTS_DIR / CHECKSUMS_FILE).read_text())
    shipped = {p.name for p in WEIGHTS_DIR.iterdir() if p.suffix in (".json", ".safetensors")} - {CHECKSUMS_FILE}
    assert set(listed) == shipped
    for name in listed:
        verify_checksum(WEIGHTS_DIR / name)


def test_flipped_bit_in_weights_is_caught(copied_with_checksums):
    """Same size, valid header, one tensor value changed: only the checksum can tell."""
    path = copied_with_checksums / "pixart.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupted: .*pixart\.safetensors.*SHA-256") as info:
        load_toy_teacher("pixart", weights_dir=copied_with_checksums)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"corrupted: .*pixart\.safetensors"):
        toy_files("pixart", weights_dir=copied_with_checksums)  # what a streamed run reads


def test_edited_config_and_text_encoder_are_caught(copied_with_checksums):
    from compress.toy.weights import load_text_encoder

    config = copied_with_checksums / "pixart.json"
    config.write_text(config.read_text().replace('"norm_eps": 1e-06', '"norm_eps": 1e-05'))
    with pytest.raises(UserError, match=r"corrupted: .*pixart\.json"):
        load_toy_teacher("pixart", weights_dir=copied_with_checksums)
    encoder = copied_with_checksums / "text_encoder.safetensors"
    data = bytearray(encoder.read_bytes())
    data[-4] ^= 0x40
    encoder.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupted: .*text_encoder\.safetensors"):
        load_text_encoder(copied_with_checksums)


def test_saving_records_checksums(tmp_path):
    from compress.toy.pixart import new_transformer
    from compress.toy.text import ToyTextEncoder
    from compress.toy.weights import CHECKSUMS_FILE, save_text_encoder, save_toy_teacher

    save_toy_teacher(new_transformer(seed=1), "pixart", tmp_path)
    save_text_encoder(ToyTextEncoder.from_seed(), tmp_path)
    listed = json.loads((tmp_path / CHECKSUMS_FILE).read_text())
    assert set(listed) == {"pixart.json", "pixart.safetensors", "text_encoder.safetensors"}
    load_toy_teacher("pixart", weights_dir=tmp_path)
    save_toy_teacher(new_transformer(seed=2), "pixart", tmp_path)  # rewritten: the entry follows
    load_toy_teacher("pixart", weights_dir=tmp_path)
