"""tools/bench_caches.py: its settings load on the shipped recipe, and the bytes it prints are counted
as it says (files alone, or with folder entries as `du -sb`; a note's figure read back)."""

import os

from compress.recipe import load_recipe
from tools import bench_caches as tool


def test_the_calls_settings_are_a_pipeline_calibration_of_eight_prompts_one_held_out():
    recipe = load_recipe(tool.RECIPE, tool.SHORT + tool.PIPELINE + tool.prompts(tool.DIGITS))
    calib = recipe.calibration
    assert calib.source == "pipeline" and calib.prompts == [f"a handwritten {w}" for w in tool.DIGITS]
    assert not calib.given("num_prompts") and calib.timesteps == 2 and calib.sample_steps == 2
    assert calib.heldout == 2 * 2 * 1  # one prompt: 2 timesteps x 2 branches
    assert recipe.passes[4].config.steps == 20 and recipe.passes[tool.SVD].name == "svd"


def test_folder_bytes_counts_files_and_with_entries_folders_too(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.pt").write_bytes(b"1" * 10)
    (tmp_path / "a" / "b" / "y.pt").write_bytes(b"1" * 5)
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "x.pt")
    folders = sum(os.lstat(p).st_size for p in (tmp_path / "a", tmp_path / "a" / "b"))
    assert tool.folder_bytes(tmp_path / "a") == 15
    assert tool.folder_bytes(tmp_path / "a", entries=True) == 15 + folders
    assert tool.folder_bytes(tmp_path / "a" / "x.pt", entries=True) == 10
    assert tool.folder_bytes(tmp_path / "gone") == 0


def test_freed_in_note_reads_the_removal_notes_only():
    assert tool.freed_in_note(["remove_blocks: a close call"]) is None
    assert tool.freed_in_note(["removed caches in /r that no run of this recipe reads (calib/x): 15.8 MiB freed",
                               "removed caches in /r that no run of this recipe reads (a): 512 bytes freed"]) == \
        round(15.8 * 2**20) + 512


def test_logged_bytes_after_the_lines_read_before_and_in_one_folder(tmp_path):
    (tmp_path / tool.REMOVED_LOG).write_text("t\tcalib/a\t100\nt\tinputs/x/1.pt\t7\nt\tinputs/x/2.pt\t5\n"
                                            "t\tinputs/xy/3.pt\t9\nt\tinputs\t1\n")
    assert tool.logged_bytes(tmp_path, 0) == (122, 5)
    assert tool.logged_bytes(tmp_path, 1) == (22, 5)
    assert tool.logged_bytes(tmp_path, 0, tool.Path("inputs/x"))[0] == 12
    assert tool.logged_bytes(tmp_path, 0, tool.Path("inputs"))[0] == 22
    assert tool.logged_bytes(tmp_path, 0, tool.Path("."))[0] == 122
    assert tool.logged_bytes(tmp_path / "none", 0) == (0, 0)
