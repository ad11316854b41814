import argparse
import pickle

import pytest
import torch

from compress.errors import UserError
from compress.io_tensors import read_state_dict


@pytest.mark.parametrize("name, data", [("notes.bin", b"hello\n"), ("w.pth", b"\x85\xec+L" * 100)])
def test_a_file_torch_save_did_not_write_says_what_was_expected(tmp_path, name, data):
    """torch.load's own error there is a bare `KeyError: 101` or `IndexError`."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as e:
        read_state_dict(tmp_path / name)
    assert str(e.value) == (f"{tmp_path / name} is not a readable checkpoint: expected a .safetensors file or one "
                            "torch.save wrote (.pth, .pt, .bin, .ckpt: a zip archive or a pickle), and it is neither")


def test_a_damaged_torch_save_file_says_why_it_fails(tmp_path):
    torch.save({"w": torch.zeros(100)}, tmp_path / "w.pth")
    (tmp_path / "w.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:300])
    with pytest.raises(UserError, match=r"a zip archive or a pickle\); this one fails to load \(\w+: .*\); it may be "
                                        "truncated or corrupted"):
        read_state_dict(tmp_path / "w.pth")


class _Hparams:
    lr = 1


@pytest.mark.parametrize("extra", [argparse.Namespace(lr=1), _Hparams()], ids=["namespace", "own class"])
def test_a_checkpoint_holding_an_object_is_refused_as_code_not_as_damaged(tmp_path, extra):
    """torch 2.6 on words it "Weights only load failed ..." on its first line (with terminal escapes):
    the file was read as truncated or corrupted."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hparams": extra}, tmp_path / "m.ckpt")
    with pytest.raises(UserError) as e:
        read_state_dict(tmp_path / "m.ckpt")
    assert str(e.value) == (f"{tmp_path / 'm.ckpt'} needs arbitrary code to unpickle and was refused; checkpoints are "
                            "data, never code: convert it to safetensors")


def test_torch_errors_are_quoted_without_terminal_escapes():
    from compress.io_tensors import one_line

    e = pickle.UnpicklingError("Weights only load failed. \x1b[1mdo those steps\x1b[0m.\n\t(1) advice")
    assert one_line(e) == "Weights only load failed. do those steps."


def _cut_in_a_class_name(path):
    """torch.save's legacy format cut inside the name of torch's tensor rebuilder: the weights-only
    unpickler refuses 'GLOBAL torch._u' as a class, as it refuses a Namespace."""
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"torch._utils") + 8])


def _zip_cut_to_two_bytes(path):
    torch.save({"w": torch.zeros(3)}, path)
    path.write_bytes(path.read_bytes()[:2])


@pytest.mark.parametrize("cut", [_cut_in_a_class_name, _zip_cut_to_two_bytes], ids=["legacy", "zip"])
def test_a_cut_torch_save_file_is_said_truncated_not_refused_as_code(tmp_path, cut):
    cut(tmp_path / "m.pt")
    with pytest.raises(UserError) as e:
        read_state_dict(tmp_path / "m.pt")
    assert str(e.value) == (f"{tmp_path / 'm.pt'} is not a readable checkpoint: expected a .safetensors file or one "
                            "torch.save wrote (.pth, .pt, .bin, .ckpt: a zip archive or a pickle); this one fails to "
                            "load (it ends early); it may be truncated or corrupted")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_torch_save_file_cut_anywhere_in_its_first_bytes_is_said_truncated(tmp_path, legacy):
    """Where its pickles are (a legacy file's are at its start), and at a few points further on."""
    torch.save({"state_dict": {f"b{i}.w": torch.zeros(8) for i in range(4)}}, tmp_path / "m.ckpt",
               _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "m.ckpt").read_bytes()
    for n in [*range(1, 600), *(len(data) * k // 10 for k in range(6, 10))]:
        (tmp_path / "m.ckpt").write_bytes(data[:n])
        with pytest.raises(UserError, match="; it may be truncated or corrupted$"):
            read_state_dict(tmp_path / "m.ckpt")


def test_a_whole_legacy_torch_save_file_holding_an_object_is_still_refused_as_code(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hparams": argparse.Namespace(lr=1)}, tmp_path / "m.ckpt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="needs arbitrary code to unpickle"):
        read_state_dict(tmp_path / "m.ckpt")


def test_a_checkpoint_holding_an_ema_beside_its_state_dict_says_which_it_read_once_and_how_to_read_the_other(tmp_path, capsys):
    """A training checkpoint {"state_dict": ..., "state_dict_ema": ...} (PixArt's own layout) loaded its
    state_dict without a word of the EMA copy passed over. Now a note, once a file: which was read,
    which passed over, and the command that saves the other alone (no recipe key picks one); that
    command's file reads the EMA. An optimizer's state or a step count beside it is no weight dict."""
    import shlex
    import subprocess
    import sys

    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.zeros(2, 3)}, "state_dict_ema": {"w": torch.ones(2, 3)},
                "optimizer": {"state": {}, "param_groups": []}, "step": 3}, path)
    assert torch.equal(read_state_dict(path)["w"], torch.zeros(2, 3))
    read_state_dict(path, mmap=True)
    err = capsys.readouterr().err
    said = (f"note: {path} holds 2 weight dicts: 'state_dict' is read, 'state_dict_ema' passed over; to compress "
            "'state_dict_ema' instead, save it alone and give that file as the teacher: python -c ")
    assert " ".join(err.split()).startswith(said) and err.count("note:") == 1
    command = shlex.split(" ".join(err.split())[len("note: "):].split("as the teacher: ", 1)[1])
    assert command[0] == "python"
    subprocess.run([sys.executable, *command[1:]], check=True)
    assert torch.equal(read_state_dict(tmp_path / "ckpt-state_dict_ema.pth")["w"], torch.ones(2, 3))

    torch.save({"state_dict": {"w": torch.zeros(2, 3)}, "step": 3}, tmp_path / "plain.pth")
    read_state_dict(tmp_path / "plain.pth")
    assert "note:" not in capsys.readouterr().err
