"""`convert` of a dit-compress output's weight file that is not in its output folder (io_convert.check_not_output)."""

import shutil

import pytest

from compress.errors import UserError
from compress.io_convert import convert_file
from tests.conftest import tiny_pixart


def test_an_outputs_weight_file_copied_out_of_its_folder_names_no_folder_it_is_not_in(tmp_path, monkeypatch):
    """`cp out/a/diffusion_pytorch_model.safetensors a_single.safetensors; convert a_single...` said
    the file was 'a weight file of the dit-compress output .' (the header records the compression,
    the folder was taken as the output). It says the file was copied out of its output folder and to
    use that folder; a file in its output folder (or linked to one) still names that folder."""
    from compress import save_compressed
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], 4), tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    shutil.copy(out / "diffusion_pytorch_model.safetensors", "a_single.safetensors")
    with pytest.raises(UserError) as e:
        convert_file(tmp_path / "a_single.safetensors", tmp_path / "conv")
    assert str(e.value) == (f"{tmp_path / 'a_single.safetensors'} is the weight file of a dit-compress output, "
                            "copied out of its folder: an output is already a diffusers folder, nothing to convert; "
                            "use the output folder it came from (load it with load_transformer, or give it to eval / "
                            "bench / lora)")
    shutil.copy(out / "diffusion_pytorch_model.safetensors", out / "backup.safetensors")  # no file of the output's
    with pytest.raises(UserError, match=r"backup.safetensors is the weight file of a dit-compress output, copied out"):
        convert_file(out / "backup.safetensors", tmp_path / "conv")
    (tmp_path / "linked.safetensors").symlink_to(out / "diffusion_pytorch_model.safetensors")
    for path in (out / "diffusion_pytorch_model.safetensors", tmp_path / "linked.safetensors"):
        with pytest.raises(UserError, match=rf"is a weight file of the dit-compress output {out}, which is already"):
            convert_file(path, tmp_path / "conv")
    assert not (tmp_path / "conv").exists()
