"""load_transformer(out, dtype=...) (compress/io_output.py) on an output holding values the dtype
cannot hold: refused, naming the tensor, its largest value and the dtype's range, never a model of
Inf weights; values that round into the range load."""

import pytest
import torch

from compress import load_transformer
from compress.errors import UserError
from compress.io_export import save_compressed
from tests.conftest import tiny_pixart

WEIGHT = "transformer_blocks.1.ff.net.2.weight"


def _output(tmp_path, value: float, dtype: torch.dtype):
    model = tiny_pixart()
    with torch.no_grad():
        model.get_parameter(WEIGHT).view(-1)[5] = value
    return save_compressed(model, tmp_path / "out", dtype=dtype)


def test_an_output_beyond_float16_is_refused_as_float16_not_loaded_as_inf(tmp_path):
    """An output exported as bfloat16 holding 1.6e5, loaded with dtype=torch.float16, came back with Inf
    weights and no word: its finiteness was checked before the cast."""
    out = _output(tmp_path, 1.62e5, torch.bfloat16)
    with pytest.raises(UserError) as e:
        load_transformer(out, dtype=torch.float16)
    assert str(e.value) == (f"{out / 'diffusion_pytorch_model.safetensors'}: {WEIGHT} holds values up to 1.62e+05, "
                            "beyond float16's range (max 65504): load it as bfloat16 or float32 (dtype=)")
    with pytest.raises(UserError, match="beyond float16's range"):
        load_transformer(out, torch_dtype="float16")
    for dtype in (torch.bfloat16, torch.float32, None):
        model = load_transformer(out, dtype=dtype)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_value_that_rounds_into_float16s_range_loads(tmp_path):
    """65519 rounds to float16's 65504: it is held, and loads (only what would be Inf is refused)."""
    out = _output(tmp_path, -65519.0, torch.float32)
    model = load_transformer(out, dtype=torch.float16)
    assert model.get_parameter(WEIGHT).view(-1)[5].item() == -65504.0


