"""save_compressed as called from Python: its arguments refused in load_transformer's words."""

from pathlib import Path

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


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def interrupted_at_line(call, n: int, files=("io_export.py", "io_atomic.py"), after: str | None = None,
                        stop=_raise_interrupt) -> int:
    """`call()` with `stop()` (a KeyboardInterrupt raised) once, at the n-th line run in modules named
    `files`, counted from the call of their function named `after` on, where given; the lines counted."""
    import sys

    count = [0 if after is None else -1]

    def trace(frame, event, arg):
        if not frame.f_code.co_filename.endswith(files):
            return None
        if event == "call" and frame.f_code.co_name == after:
            count[0] = max(count[0], 0)
        if event == "line" and count[0] >= 0:
            count[0] += 1
            if count[0] == n:
                stop()
        return trace

    sys.settrace(trace)
    try:
        call()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return count[0]


def test_an_interrupt_at_any_line_of_save_compressed_leaves_the_output_whole_or_nothing_beside_it(tmp_path):
    """An interrupt just after the temp folder was made, before the try that removes it, left a stray
    .out.tmp-XXXXXXXX beside the output."""
    model = tiny_pixart()
    lines = interrupted_at_line(lambda: save_compressed(model, tmp_path / "whole" / "out"), 0)
    for n in range(1, lines + 1):
        folder = tmp_path / str(n)
        interrupted_at_line(lambda: save_compressed(model, folder / "out"), n)
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert left in ([], ["out"]), (n, left)
        if left:
            load_transformer(folder / "out")


def test_a_model_save_compressed_cannot_write_or_no_folder_for_load_transformer_is_one_line(tmp_path):
    """save_compressed(nn.Linear(2, 2), d) raised AttributeError 'Linear' object has no attribute 'config';
    load_transformer(None) pathlib's 'TypeError: expected str, bytes or os.PathLike object, not NoneType'."""
    with pytest.raises(TypeError, match=r"^save_compressed: model must be a diffusers transformer .*, got Linear$"):
        save_compressed(torch.nn.Linear(2, 2), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match=r"^load_transformer: out must be the output folder \(a str or a path\), "
                                       r"got None$"):
        load_transformer(None)


def test_an_existing_folder_is_refused_in_the_callers_words(tmp_path):
    """save_compressed onto an existing output said 'output folder OUT exists; pass --overwrite to replace
    it', the run's option, to a Python caller, who passes overwrite=True; so did its refusal of a folder
    that is no output. Now a Python caller is told overwrite=True; the run (overwrite_flag) --overwrite."""
    out = save_compressed(tiny_pixart(), tmp_path / "out")
    with pytest.raises(UserError, match=rf"^output folder {out} exists; pass overwrite=True to replace it$"):
        save_compressed(tiny_pixart(), out)
    with pytest.raises(UserError, match=rf"^output folder {out} exists; pass --overwrite to replace it$"):
        save_compressed(tiny_pixart(), out, overwrite_flag="--overwrite")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(UserError, match=r"section\); overwrite=True replaces only an earlier output or an empty "):
        save_compressed(tiny_pixart(), tmp_path / "notes", overwrite=True)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchanged", "set aside"])
def test_a_ctrl_c_during_the_earlier_outputs_removal_comes_after_the_new_one_is_recorded(tmp_path, monkeypatch,
                                                                                          exchange):
    """--overwrite of a large output: its removal can take long, and a second Ctrl-C is raised at once (the first
    held): it must land after the new output is in place and recorded (on_written), the earlier one removed even
    so (R3 stop 50: the removal ran inside the hold, before on_written, so such a press left the output whole
    yet unrecorded: the run said 'interrupted ... --resume')."""
    import shutil

    import compress.io_atomic as io_atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"compression": {"format": 1}}')
    (out / "README.md").write_text("old")
    real, pressed = shutil.rmtree, []

    def pressed_during(path, *args, **kwargs):
        readme = Path(path) / "README.md"
        if not pressed and readme.is_file() and readme.read_text() == "old":
            pressed.append(path)
            raise KeyboardInterrupt  # (a second press: not held)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(io_atomic.shutil, "rmtree", pressed_during)
    if not exchange:
        monkeypatch.setattr(io_atomic, "exchange", lambda a, b: False)
    written = []
    with pytest.raises(KeyboardInterrupt):
        with io_atomic.atomic_folder(out, overwrite=True, on_written=written.append) as tmp:
            (tmp / "config.json").write_text('{"compression": {"format": 1}}')
            (tmp / "README.md").write_text("new")
    assert pressed and written == [out]
    assert (out / "README.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the earlier output removed all the same
