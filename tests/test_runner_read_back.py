"""What an svd pass says it read back of an earlier run's block statistics (compress/runner_read_back.py),
where some of those files are damaged."""

import pytest

from compress.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_rerun_computes_damaged_block_statistics_again_and_says_so_once(pixart, capsys):
    """A block-statistics file of the run folder cut short or overwritten (RUN/calib/.../<name>.pt) was a
    traceback in a rerun (UnpicklingError 'Weights only load failed ...'); the statistics cache's files of
    older code are computed again. A damaged one is too, written anew, said in one note, and the pass's end
    line counts it as damaged, not as 'not of its targets, blocks, inputs and ranks'."""
    import json
    import shutil

    tmp_path, make, loads = pixart
    run = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(run) == 0
    error = json.loads((tmp_path / "out" / "report.json").read_text())["heldout"]
    stats = sorted((tmp_path / "run" / "calib").rglob("*.pt"))
    assert len(stats) == 2
    stats[0].write_bytes(stats[0].read_bytes()[:100])
    shutil.rmtree(tmp_path / "out")
    shutil.rmtree(tmp_path / "run" / "stages")  # the pass runs again, on the statistics kept
    capsys.readouterr()
    assert main(run) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("note: the run folder's file ") == 1 and "Traceback" not in err, err
    assert (f"note: the run folder's file {stats[0]} is damaged (not as torch.save wrote it: cut short or "
            "overwritten since?): computed again, as is any other damaged file in its folder") in err, err
    assert (f"pass 2 (svd) read back {len(stats) - 1} of the {len(stats)} files an earlier run measured: 1 is "
            "damaged (computed again)") in err, err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["heldout"] == error
    capsys.readouterr()
    shutil.rmtree(tmp_path / "out")
    shutil.rmtree(tmp_path / "run" / "stages")
    assert main(run) == 0  # written anew: all read back
    assert f"pass 2 (svd) read back all {len(stats)} files an earlier run measured" in capsys.readouterr().err


def test_the_end_line_counts_damaged_files_apart():
    from compress.runner_kept import read_back_at_end_in_words

    assert read_back_at_end_in_words(0, 12, damaged=12) == \
        "read back none of the 12 files an earlier run measured: 12 are damaged (computed again)"
    assert read_back_at_end_in_words(3, 5, damaged=1) == (
        "read back 3 of the 5 files an earlier run measured: 1 is damaged (computed again), 1 is not of its "
        "targets, blocks, inputs and ranks as they are now")
    assert read_back_at_end_in_words(3, 5) == ("read back 3 of the 5 files an earlier run measured (the others "
                                               "are not of its targets, blocks, inputs and ranks as they are now)")
