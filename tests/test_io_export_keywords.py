"""save_compressed as docs/OUTPUTS.md gives it (T2, stop 50): model, out and dtype by position, the rest
by keyword; a model of no weights refused in one line."""

import pytest

from compress import load_transformer, save_compressed
from compress.errors import UserError
from tests.conftest import factorize, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def out(tmp_path):
    return save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=4), tmp_path / "out")


def test_save_compressed_takes_only_model_out_and_dtype_by_position(out, tmp_path):
    """docs/OUTPUTS.md gives save_compressed(model, out, dtype=None, overwrite=False): a fourth positional
    argument was `extra`, and save_compressed(m, out, None, True) failed with "'bool' object is not a
    mapping". The rest are keyword-only now."""
    model = load_transformer(out)
    with pytest.raises(TypeError, match="positional argument"):
        save_compressed(model, out, None, True)
    assert save_compressed(model, out, None, overwrite=True) == out


def test_save_compressed_of_a_model_without_weights_says_so(out, tmp_path):
    """A model loaded with device='meta' gave a NotImplementedError traceback from torch."""
    model = load_transformer(out, device="meta")
    with pytest.raises(UserError, match="holds no weights .* device='meta'"):
        save_compressed(model, tmp_path / "again")
    assert not (tmp_path / "again").exists()
