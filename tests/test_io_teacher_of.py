"""compress.io_teacher_of: the teacher a compressed model is compared with, checked once, of its architecture."""

import pytest

from compress.errors import UserError
from tests.conftest import tiny_flux, tiny_pixart


def test_the_teacher_to_compare_with_is_checked_once(tmp_path, monkeypatch):
    """eval and bench: the family from its config, then its weights, without checking it again."""
    from compress.io_teacher_of import load_teacher_of
    from tests.test_io_source import _counting

    tiny_pixart().save_pretrained(tmp_path / "t")
    checked, _ = _counting(monkeypatch)
    load_teacher_of(tiny_pixart(), str(tmp_path / "t"))
    assert checked == [str(tmp_path / "t")]


def test_a_teacher_with_more_blocks_is_the_same_architecture():
    """Removed blocks change only the block counts, which check_same_architecture leaves out."""
    from compress.io_teacher_of import check_same_architecture

    check_same_architecture(tiny_flux(num_layers=1, num_single_layers=2), tiny_flux(), "teacher")
    with pytest.raises(UserError, match="num_attention_heads 2 .the model's: 4."):
        check_same_architecture(tiny_flux(num_attention_heads=4), tiny_flux(), "teacher")
