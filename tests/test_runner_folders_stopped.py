"""Runs stopped (Ctrl-C, kill -9), then run again: Ctrl-C's note names what the run folder keeps
that a rerun reads back, a plain rerun is refused naming it, --resume says where it starts."""

import json
from pathlib import Path

from compress.cli import main


# ---- what a rerun reuses after Ctrl-C ------------------------------------------------------------
def test_ctrl_c_after_the_output_fishers_are_saved_says_a_rerun_reuses_them(pixart, monkeypatch, capsys):
    """It said 'nothing was saved yet: a rerun starts over', and the rerun read 24 Fishers back."""
    tmp_path, args = _stopped_in_svd(pixart, monkeypatch)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path / 'run'} keeps output Fishers (" in last
    assert "): a rerun of this recipe and teacher reads back those it needs" in last
    assert "starts over" not in last
    monkeypatch.undo()
    assert main(args) == 0
    assert "finds output Fishers (" in capsys.readouterr().err  # ... that an earlier run measured: it reads back


def test_ctrl_c_counts_only_the_output_fishers_this_run_reads_back(pixart, monkeypatch, capsys):
    """It counted the Fishers of every teacher and calibration the run folder had seen, though a
    rerun reads back only those of its own fingerprint (calib/<fingerprint>/...)."""
    from compress.passes.svd import SVDPass
    from compress.runner import Runner
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"))
    other = tmp_path / "run" / "calib" / "0123456789abcdef" / "blocks" / "fisher-4probes"  # an earlier teacher's
    other.mkdir(parents=True)
    for i in range(50):
        (other / f"{i}.pt").write_bytes(b"")
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Runner, "prepare", interrupt)  # before the fingerprint is known: none measured
    assert main(args) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("nothing was saved yet: a rerun starts over")
    monkeypatch.undo()
    monkeypatch.setattr(SVDPass, "_compress", interrupt)
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    (fingerprint,) = [d.name for d in (tmp_path / "run" / "calib").iterdir() if d.name != "0123456789abcdef"]
    ours = len(list((tmp_path / "run" / "calib" / fingerprint).glob("*/fisher-*/*.pt")))
    assert ours and f"output Fishers (up to {ours} file" in last


PIPELINE_RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {source: pipeline, prompts: [a 1, a 2, a 3, a 4, a 5], sample_steps: 2, timesteps: 1,
              batch_size: 4, heldout: 1}
passes:
  - svd: {targets: [mlp], ratio: 0.5, multiple: 8}
"""


def test_ctrl_c_during_pipeline_sampling_says_a_rerun_reuses_the_calls_it_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the third sampling call said 'nothing was saved yet: a rerun starts over'; the two
    finished calls were on disk and the rerun sampled only the rest."""
    import compress.calib_pipeline as cp

    calls, real = [], cp.capture

    def counted(*args, **kwargs):
        calls.append(args[2])  # the prompts of this call
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cp, "capture", counted)
    interrupt = True
    (tmp_path / "r.yaml").write_text(PIPELINE_RECIPE)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dit-compress: interrupted; {tmp_path / 'run'} keeps sampled inputs (2 sampling "
                           "calls): a rerun of this recipe and teacher reads back"), last
    interrupt = False
    assert main(args) == 0
    assert len(calls) == 3 + 3  # 5 prompts, one per call: the 3 not on disk


def _ctrl_c_at_save(monkeypatch, saved: int) -> list[str]:
    """A Ctrl-C when an svd pass saves block statistics after `saved` saves; -> the names saved."""
    from compress.calib_stats import StatsCache

    saves, real = [], StatsCache.save

    def save(self, name, stats):
        if len(saves) == saved:
            raise KeyboardInterrupt
        saves.append(name)
        return real(self, name, stats)

    monkeypatch.setattr(StatsCache, "save", save)
    return saves


def test_ctrl_c_after_block_statistics_are_saved_says_a_rerun_reuses_them(pixart, monkeypatch, capsys):
    """Ctrl-C in an svd pass after it saved the statistics of two blocks (calib/<fingerprint>/...)
    said nothing of them, though a rerun reads them back instead of calibrating those blocks again."""
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    # multiple 1: at the default 16 the tiny model's mlp stays dense, and such a pass calibrates nothing (5176809)
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [mlp], fisher: none, ratio: 0.5, multiple: 1}\n"))
    saves = _ctrl_c_at_save(monkeypatch, 2)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path / 'run'} keeps block statistics (up to 2 files): a rerun" in last, last
    monkeypatch.undo()
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saves) <= set(report["svd"]["cache_hits"]), report["svd"]["cache_hits"]


def test_ctrl_c_in_an_svd_pass_after_a_saved_pass_names_its_block_statistics(pixart, monkeypatch, capsys):
    """Ctrl-C in the svd pass after remove_blocks was saved said only '1 of 2 passes done', though the
    run folder kept the block statistics and output Fishers the svd pass had saved, which --resume reads back."""
    tmp_path, make, loads = pixart  # r.yaml: remove_blocks, then svd
    saves = _ctrl_c_at_save(monkeypatch, 1)  # of its 2 blocks
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"dit-compress: interrupted; {tmp_path / 'run'} keeps its work (1 of 2 passes done, block "
                    "statistics (up to 1 file), output Fishers (up to 12 files) to read back): rerun with --resume to "
                    "continue"), last
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saves) <= set(report["svd"]["cache_hits"]), report["svd"]["cache_hits"]


KILLED_IN_A_STAGE_SAVE = """\
import os, signal, sys
import compress.io_export as io_export
real = io_export.save_file
def killed(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)
    if "1-svd" in path:  # the stage written whole in its temp folder, never renamed in
        os.kill(os.getpid(), signal.SIGKILL)
io_export.save_file = killed
from compress.cli import main
main(sys.argv[1:])
"""


def test_a_resumed_run_leaves_nothing_of_a_stage_save_killed_hard(pixart):
    """kill -9 in a stage save left stages/.1-svd.tmp-* (a model copy) through every resume and the
    finished run."""
    import subprocess
    import sys

    tmp_path, _, _ = pixart
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    child = subprocess.run([sys.executable, "-c", KILLED_IN_A_STAGE_SAVE, *argv], cwd=Path(__file__).parents[1],
                           capture_output=True)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    assert [p.name[:11] for p in (tmp_path / "run" / "stages").glob(".*")] == [".1-svd.tmp-"]
    assert main(argv + ["--resume"]) == 0
    assert [p.name for p in (tmp_path / "run" / "stages").glob(".*")] == []
    assert sorted(p.name for p in tmp_path.glob(".out*")) == []


def test_a_rerun_refused_after_ctrl_c_in_teacher_sampling_names_the_samples_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C while distill sampled the teacher said the run folder kept '1 of 2 passes done, teacher
    samples (2 of 4 shards)'; a rerun without --resume was refused with only '(1 of 2 passes done)',
    though --resume reads those samples back: it names them as the stop did."""
    import compress.distill_data as distill_data

    (tmp_path / "r.yaml").write_text(
        "model: pixart\nteacher: toy:pixart\ncalibration: {num_prompts: 2, timesteps: 2, batch_size: 4}\n"
        "passes:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
        "  - distill: {data: teacher_samples, num_samples: 8, sample_steps: 1, batch_size: 2, steps: 1}\n")
    sampled, real = [], distill_data._sample_shard

    def sample(*args, **kwargs):
        if len(sampled) == 2:
            raise KeyboardInterrupt
        sampled.append(real(*args, **kwargs))

    monkeypatch.setattr(distill_data, "_sample_shard", sample)
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    assert main(args) == 130
    kept = "1 of 2 passes done, teacher samples (2 of 4 shards) to read back"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dit-compress: interrupted; {run} keeps its work ({kept}): rerun with --resume to continue")
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dit-compress run: error: {run} holds an interrupted run of this recipe ({kept}): add --resume to continue, "
        "or --restart to start over")


def test_a_rerun_refused_after_ctrl_c_in_an_svd_pass_names_its_block_statistics(pixart, monkeypatch, capsys):
    """Ctrl-C in the svd pass after remove_blocks was saved kept its block statistics and output
    Fishers for --resume, and said so; a rerun without --resume, refused, said only '1 of 2 passes done'.
    They are those of the fingerprint the run recorded: a cache of another teacher's run written later
    (a copy, a touch) is not named, as it was when the newest file's cache was taken for the run's."""
    import os
    import time

    tmp_path, make, loads = pixart  # r.yaml: remove_blocks, then svd
    _ctrl_c_at_save(monkeypatch, 1)
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    assert main(args) == 130
    capsys.readouterr()
    refused = (f"dit-compress run: error: {run} holds an interrupted run of this recipe (1 of 2 passes done, block "
               "statistics (up to 1 file), output Fishers (up to 12 files) to read back): add --resume to continue, or "
               "--restart to start over")
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refused
    other = run / "calib" / "0123456789abcdef" / "fedcba9876543210"  # another teacher's cache, newer
    other.mkdir(parents=True)
    later = time.time() + 60
    for name in ("blocks-0.pt", "blocks-1.pt", "stage-0.pt"):
        (other / name).write_bytes(b"")
        os.utime(other / name, (later, later))
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refused


def test_resume_with_nothing_saved_says_it_starts_from_the_first_pass(pixart, capsys):
    """`run --resume` on a run folder holding no saved pass nor checkpoint (or on none at all) ran from
    scratch silently; it says so in one line. A run folder whose passes are saved is resumed without it."""
    tmp_path, make, loads = pixart
    nothing = "nothing was saved in {} to resume from (no pass saved, no distill checkpoint): starting from the first pass"
    for run in (tmp_path / "missing", tmp_path / "empty"):
        if run.name == "empty":
            (run / "calib").mkdir(parents=True)
        capsys.readouterr()
        assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / f"out-{run.name}"), "--run-dir",
                     str(run), "--resume"]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "--resume:" in line]
        if run.name == "missing":  # it said 'nothing was saved in MISSING'
            assert said == [f"note: --resume: there is no folder {run} (a mistyped --run-dir?): starting from "
                            "the first pass"], said
        else:
            assert said == [f"note: --resume: {nothing.format(run)}"], said
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out-again"), "--run-dir",
                 str(tmp_path / "empty"), "--resume"]) == 0  # its passes saved by the run before
    assert "nothing was saved" not in capsys.readouterr().err


def test_resume_after_a_ctrl_c_in_pass_1_names_what_was_measured(pixart, monkeypatch, capsys):
    """Ctrl-C in pass 1 (its statistics measured, no pass saved), then --resume: it said 'nothing was
    saved in RUN to resume from' and then that pass 1 reads back block statistics an earlier run measured."""
    tmp_path, args = _stopped_in_svd(pixart, monkeypatch)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "--resume:" in line]
    assert len(said) == 1 and "nothing was saved" not in said[0], said
    assert said[0].startswith(f"note: --resume: no pass was saved in {tmp_path / 'run'} (no distill checkpoint): "
                              "starting from the first pass, reading back what an earlier run measured there ("), said
    assert "output Fishers (" in said[0], said


def _stopped_in_svd(pixart, monkeypatch) -> tuple:
    """(tmp_path, the run's arguments) of a one-svd-pass recipe run to a Ctrl-C as the pass compresses
    (its statistics and output Fishers measured, no pass saved)."""
    from compress.passes.svd import SVDPass
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"))

    def compress(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(SVDPass, "_compress", compress)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    return tmp_path, args


def test_a_rerun_with_another_calibration_counts_what_the_interrupted_run_kept(pixart, monkeypatch, capsys):
    """Ctrl-C in pass 2 (its first block's statistics saved): 'keeps its work (1 of 2 passes done, block
    statistics (1 file) measured so far)'. A plain rerun with another calibration.seed was refused naming
    pass 1's statistics too ('block statistics (N+1 files)'), though the run's --resume keeps pass 1 and
    never reads them: counted as that --resume reads them back, as its stop did."""
    from compress.calib_stats import StatsCache
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=(
        "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2, fisher: none}\n"
        "  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n")))
    folders, real = [], StatsCache.save

    def save(self, name, stats):
        folders.append(self.directory) if self.directory not in folders else None
        real(self, name, stats)
        if len(folders) == 2:  # pass 2's first statistics written, then Ctrl-C
            raise KeyboardInterrupt
    monkeypatch.setattr(StatsCache, "save", save)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    kept = "1 of 2 passes done, block statistics (up to 1 file) to read back"
    assert f"keeps its work ({kept})" in capsys.readouterr().err
    assert sum(1 for _ in folders[0].glob("*.pt")) > 0
    assert main(args + ["--set", "calibration.seed=1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"holds an interrupted run of another recipe (it differs in calibration.seed; {kept})" in last, last


def test_a_rerun_whose_unsaved_pass_changed_is_refused_naming_the_change(tmp_path, monkeypatch, capsys):
    """Two svd passes stopped by Ctrl-C in pass 2 (pass 1 saved), rerun with pass 2's modulation rank changed:
    refused as 'RUN holds an interrupted run of this recipe (1 of 2 passes done): add --resume to continue',
    though the run ran pass 2 with the rank it had (--resume keeps pass 1 and runs pass 2 as it is now). Now
    'of another recipe (it differs in passes.1.svd.ranks.modulation; ...)', as a change of a saved pass is said,
    with what --resume keeps. Unchanged: a rerun of the recipe as it ran, or with a result-free key of pass 2
    changed ('of this recipe'); after a --resume with the change stopped in pass 2, the changed recipe is its."""
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import STREAM_RECIPE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(STREAM_RECIPE.format(family="pixart", teacher=tmp_path / "teacher", stream="false"))
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    rank = ["--set", "passes.1.svd.ranks.modulation=2"]
    real = SVDPass._compress

    def stopped_in_pass_2(self, *a, **k):
        if list(self.config.targets) == ["modulation"]:  # pass 2's
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SVDPass, "_compress", stopped_in_pass_2)
    assert main(args) == 130
    capsys.readouterr()
    this = f"dit-compress run: error: {run} holds an interrupted run of this recipe (1 of 2 passes done): add --resume"
    for more in ([], ["--set", "passes.1.svd.progress=false"]):
        assert main([*args, *more]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(this)
    assert main([*args, *rank]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dit-compress run: error: {run} holds an interrupted run of another recipe (it differs in "
        "passes.1.svd.ranks.modulation; 1 of 2 passes done): --resume keeps its first 1 pass (with the same teacher) "
        "and runs the rest; add --restart to discard it and start over, or choose another --run-dir")
    assert main([*args, *rank, "--resume"]) == 130  # stopped in pass 2 again, as it is now
    capsys.readouterr()
    assert main([*args, *rank]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(this)
    assert main(args) == 2
    assert "(it differs in passes.1.svd.ranks.modulation; 1 of 2" in capsys.readouterr().err


THREE_PASSES = """\
model: pixart
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [attention], fisher: block, ratio: 0.5, multiple: 2}}
  - svd: {{targets: [modulation], fisher: none, ranks: {{modulation: 4}}}}
  - svd: {{targets: [mlp], fisher: none, ratio: 0.5, multiple: 2}}
"""


def test_a_rerun_that_changed_only_a_pass_never_run_is_of_this_recipe(tmp_path, monkeypatch, capsys):
    """Three svd passes stopped by Ctrl-C in pass 2 (pass 1 saved), rerun with pass 3's ratio changed: pass 3
    never ran (--resume runs it as it is now), yet the refusal said 'an interrupted run of another recipe (it
    differs in passes.2.svd.ratio; ...)'. Now 'of this recipe', as a change of a pass still to run is; pass 2's
    change is still named."""
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(THREE_PASSES.format(teacher=tmp_path / "teacher"))
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    real = SVDPass._compress

    def stopped_in_pass_2(self, *a, **k):
        if list(self.config.targets) == ["modulation"]:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SVDPass, "_compress", stopped_in_pass_2)
    assert main(args) == 130
    capsys.readouterr()
    assert main([*args, "--set", "passes.2.svd.ratio=0.25"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dit-compress run: error: {run} holds an interrupted run of this recipe (1 of 3 passes "
                           "done): add --resume"), last
    assert main([*args, "--set", "passes.1.svd.ranks.modulation=2"]) == 2
    assert "of another recipe (it differs in passes.1.svd.ranks.modulation; 1 of 3" in capsys.readouterr().err
