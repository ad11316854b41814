"""save_compressed as called from Python: its arguments refused in load_transformer's words."""

import pytest
import torch

from compress import load_transformer, save_compressed
from compress.errors import UserError
from tests.conftest import tiny_pixart


@pytest.mark.parametrize("dtype", [torch.int8, "int8", "float61"])
def test_a_dtype_save_compressed_cannot_write_is_refused_before_anything_is_written(tmp_path, dtype):
    with pytest.raises(UserError, match=r"^save_compressed: dtype must be a floating torch dtype or one of "
                                        r"'float32', 'float16', 'bfloat16', got "):
        save_compressed(tiny_pixart(), tmp_path / "out", dtype=dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["bfloat16", "torch.float16"])
def test_save_compressed_takes_a_dtypes_name_as_load_transformer_does(tmp_path, name):
    out = save_compressed(tiny_pixart(), tmp_path / "out", dtype=name)
    assert load_transformer(out).dtype == getattr(torch, name.removeprefix("torch."))
