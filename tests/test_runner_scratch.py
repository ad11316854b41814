"""The run folder's scratch folders (runner_stream.SCRATCH: a streamed student's spilled blocks in
stream/, svd's spilled activations in activations/, global allocation's factors in sensitivity/, the
Fishers an svd pass does not keep in fisher/) are not left behind empty, by a finished run or
a stopped one; what a resume reads from them stays."""

import os

import pytest

from compress.runner_stream import SCRATCH, tidy_scratch
from tests.runner_helpers import SIMPLE, run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

SPILLED = SIMPLE.replace("heldout: 4}}", "heldout: 4, spill_activations: true}}").format(
    teacher="toy:pixart", passes="  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n")


def test_only_empty_scratch_folders_are_removed(tmp_path):
    for name in SCRATCH:
        (tmp_path / name).mkdir()
    (tmp_path / "stream" / "pending-stage").mkdir()  # what --resume reads: kept
    (tmp_path / "activations" / f"{os.getpid()}-0-0.pt").write_bytes(b"")  # this process's spill: removed
    (tmp_path / "other").mkdir()
    tidy_scratch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "stream"]
    (tmp_path / "activations").mkdir()
    (tmp_path / "activations" / "1-0-0.pt").write_bytes(b"")  # another process's: not this one's to remove
    tidy_scratch(tmp_path)
    assert [p.name for p in (tmp_path / "activations").iterdir()] == ["1-0-0.pt"]
    tidy_scratch(tmp_path / "missing")  # nothing there: nothing to do


def test_a_run_that_spilled_activations_leaves_no_empty_folder(tmp_path):
    out = run_recipe(tmp_path, SPILLED, "r")
    assert (out / "config.json").is_file()
    run_dir = tmp_path / "run-r"
    assert (run_dir / "stages").is_dir()
    assert not [name for name in SCRATCH if (run_dir / name).exists()]


def test_a_global_allocation_leaves_no_empty_sensitivity_folder(tmp_path, monkeypatch):
    """svd's global allocation spills its factors in sensitivity/ (svd_global), emptied as it ends."""
    from compress import calib_spill

    text = SIMPLE.format(teacher="toy:pixart", passes="  - svd: {targets: [attention, cross_attention, mlp], "
                         "allocation: global, ratio: 0.6, multiple: 8}\n")
    spilled = []
    real = calib_spill.Spilled.append
    monkeypatch.setattr(calib_spill.Spilled, "append", lambda self, item: (spilled.append(self.folder),
                                                                           real(self, item))[1])
    run_recipe(tmp_path, text, "g")
    run_dir = tmp_path / "run-g"
    assert run_dir / "sensitivity" in spilled  # it did spill there
    assert sorted(p.name for p in run_dir.iterdir()) == ["calib", "stages"]


def test_a_run_stopped_while_it_spills_activations_leaves_no_empty_folder(tmp_path, monkeypatch):
    from compress import calib_spill

    spilled = []
    real = calib_spill.Spilled.append

    def append_then_stop(self, item):
        real(self, item)
        spilled.append(self.folder)
        if len(spilled) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(calib_spill.Spilled, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, SPILLED, "r")
    assert spilled[0] == tmp_path / "run-r" / "activations"  # it did spill there
    assert not (tmp_path / "run-r" / "activations").exists()


def test_a_streamed_run_leaves_no_empty_stream_folder(tmp_path):
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    text = text.replace("  - svd: {targets: [modulation], fisher: none, ranks: {modulation: 4}}\n", "")
    assert text.count("- svd") == 1
    run_recipe(tmp_path, text, "s")
    run_dir = tmp_path / "run-s"
    assert any((run_dir / "stages").glob("0-svd/*.safetensors"))  # the student's one copy
    assert not (run_dir / "stream").exists()
