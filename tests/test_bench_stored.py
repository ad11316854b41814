"""compress.bench's weight memory, as stored: the bytes of the tensors the output's and the teacher's
files hold."""

import json
import struct
from pathlib import Path

import pytest
import torch

from tests.test_bench import _output


def tensor_bytes(path: Path) -> int:
    """Bytes of the tensors a safetensors file holds (its header apart)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_weight_memory_is_the_ratio_of_the_files_tensor_bytes(tmp_path, capsys, dtype):
    """PixArt's sincos pos_embed table (a non-persistent buffer, rebuilt on loading) is in neither
    file, yet bench counted it in both: 0.650 for an output whose files' tensors are 0.580 of the
    teacher's (params 0.580). Now what the files store, and nothing else."""
    from compress.cli import main

    out = _output(tmp_path, dtype)
    assert main(["bench", str(out), "--json", "--repeats", "1", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    files = (tensor_bytes(out / "diffusion_pytorch_model.safetensors")
             / tensor_bytes(tmp_path / "teacher" / "diffusion_pytorch_model.safetensors"))
    assert result["weight_bytes_ratio"] == pytest.approx(files, rel=1e-12)
    if dtype is None:  # float32 both: the bytes go as the parameters
        assert result["weight_bytes_ratio"] == pytest.approx(result["params_ratio"], rel=1e-12)
