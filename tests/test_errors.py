"""compress.errors: reading the text of a file a user gave."""

import pytest

from compress.errors import UserError, read_utf8


def test_a_byte_order_mark_is_no_part_of_the_text(tmp_path):
    """A file saved as 'UTF-8 with BOM' (Windows editors) started its text with U+FEFF: the first
    prompt of a prompt file held it, silently."""
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa cat\nsnow\n")
    assert read_utf8(tmp_path / "p.txt", "p.txt", "save it as UTF-8") == "a cat\nsnow\n"


def test_text_that_is_not_utf8_after_a_byte_order_mark_names_its_line(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa cat\nsn\xffow\n")
    with pytest.raises(UserError, match=r"^p\.txt:2: not UTF-8 text \(byte 0xff\); save it as UTF-8$"):
        read_utf8(tmp_path / "p.txt", "p.txt", "save it as UTF-8")
