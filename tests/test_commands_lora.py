"""`lora` (compress/commands_lora.py) through the CLI: its options checked in one line before anything
loads. What it merges is tested in test_lora*.py."""

from compress.cli import main


def test_lora_scale_given_no_number_is_a_one_line_error(tmp_path, capsys):
    """`dit-compress lora OUT LORA NEW --scale=--` was a traceback (argparse hands over [])."""
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "out"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale=--"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scale needs a number" in err and not (tmp_path / "new").exists()
