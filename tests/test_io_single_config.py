"""The config of a single-file teacher, given or beside it (compress/io_single_config.py): where it is, and
what a --teacher-config that holds none says."""

import pytest

from compress.errors import UserError
from compress.io_single_config import config_file


@pytest.mark.parametrize("inside", ["config.json", "transformer/config.json"])
def test_a_teacher_config_whose_config_json_is_a_folder_says_so(tmp_path, inside):
    """--teacher-config D where D/config.json (or a pipeline's D/transformer/config.json) is a folder said
    'no config.json there', though one is there: it says that one is a folder, not a file."""
    (tmp_path / "D" / inside).mkdir(parents=True)
    with pytest.raises(UserError) as e:
        config_file(tmp_path / "t.safetensors", str(tmp_path / "D"))
    assert str(e.value) == f"--teacher-config {tmp_path / 'D'}: {tmp_path / 'D' / inside} is a folder, not a file"


def test_a_teacher_config_whose_config_json_links_to_nothing_says_so(tmp_path):
    """--teacher-config D where D/config.json is a link whose target is gone said 'no config.json there'."""
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "config.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(UserError) as e:
        config_file(tmp_path / "t.safetensors", str(tmp_path / "D"))
    assert str(e.value) == (f"--teacher-config {tmp_path / 'D'}: {tmp_path / 'D' / 'config.json'} is a link to "
                            f"{tmp_path / 'gone.json'}, which is not there")


def test_a_config_json_beside_a_single_file_that_links_to_nothing_says_so(tmp_path):
    (tmp_path / "config.json").symlink_to("gone.json")
    with pytest.raises(UserError) as e:
        config_file(tmp_path / "t.safetensors", None)
    assert str(e.value) == (f"single file {tmp_path / 't.safetensors'} has no config.json beside it "
                            f"({tmp_path / 'config.json'} is a link to gone.json, which is not there); pass "
                            "--teacher-config with the diffusers config of the transformer (a folder or config.json)")
