"""Stages a run saves and --resume restores (compress/runner_stages.py)."""

import pytest

from compress.cli import main
from tests.runner_helpers import pixart_runner


def test_a_resumed_run_names_the_blocks_its_restored_removal_took(tmp_path, monkeypatch, capsys):
    """A run resumed after its remove_blocks pass said nothing of the blocks it removed (the pass does
    not run again): it says the restored pass's line, as the run that removed them did."""
    from compress.passes import svd

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]

    def stop(self, model, ctx):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(svd.SVDPass, "run", stop)
        main(argv)
    first = [line for line in capsys.readouterr().err.splitlines() if line.startswith("remove_blocks: removed")]
    assert first == ["remove_blocks: removed transformer_blocks [0] (teacher indices; listed in the recipe)"]
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err.splitlines()
    kept = ["remove_blocks (pass 1, kept): removed transformer_blocks [0] (teacher indices; listed in the recipe)"]
    assert [line for line in err if line.startswith("remove_blocks")] == kept  # not as if it ran again
    assert err.index(kept[0]) == next(i for i, line in enumerate(err) if line.startswith("resuming")) + 1


def _stopped_after_two_statistics(argv: list[str], monkeypatch, capsys) -> None:
    """`dit-compress ARGV` stopped by a Ctrl-C once its svd pass saved two block statistics; its output
    read away."""
    from compress.calib_stats import StatsCache

    real, saved = StatsCache.save, []

    def save_then_stop(self, name, stats):
        real(self, name, stats)
        saved.append(name)
        if len(saved) == 2:
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(StatsCache, "save", save_then_stop)
        assert main(argv) == 130
    capsys.readouterr()


def test_a_resumed_svd_pass_says_once_how_many_statistics_it_reads_back(tmp_path, monkeypatch, capsys):
    """An svd pass interrupted after measuring some blocks: its resumed run says how many of the
    block statistics it kept the pass reads back, as many as the pass then finds in its cache."""
    import json

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    _stopped_after_two_statistics(argv, monkeypatch, capsys)
    assert main(argv + ["--resume"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "reads back" in line]
    hits = json.loads((tmp_path / "out" / "report.json").read_text())["svd"]["cache_hits"]
    assert len(hits) == 2
    assert said == ["  pass 2 (svd) finds block statistics (2 files), output Fishers (12 files) that an "
                    "earlier run measured: it reads back those of its targets, blocks, inputs and ranks as they are now, and says "
                    "how many when it ends"]  # interrupted, or
    # finished and resumed after a recipe change


def test_every_rerun_says_what_each_svd_pass_reads_back(tmp_path, monkeypatch, capsys):
    """A --restart after an interrupted (streamed) svd pass, and a plain rerun of the finished run, read
    back the statistics the earlier run measured, as --resume does: each said, one line per svd pass
    that reads back (they were said on --resume alone), as many as the passes then find in their caches."""
    import json
    import re

    from tests.runner_helpers import streamed_teacher

    (tmp_path / "r.yaml").write_text(streamed_teacher(tmp_path, "pixart").format(stream="true"))
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    _stopped_after_two_statistics(argv, monkeypatch, capsys)

    def said_and_hits(extra: list[str]) -> tuple[list[str], list[int]]:
        assert main(argv + extra) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "reads back" in line]
        passes = json.loads((tmp_path / "out" / "report.json").read_text())["svd"]["passes"]
        return said, [len(p["cache_hits"]) for p in passes]
    said, hits = said_and_hits(["--restart"])
    assert hits[0] == 2 and hits[1] == 0
    assert said == ["  pass 1 (svd) finds block statistics (2 files) that an earlier run measured: it reads back those "
                    "of its targets, blocks, inputs and ranks as they are now, and says how many when it ends"]
    said, hits = said_and_hits(["--overwrite"])  # a plain rerun of the finished run: it starts over
    assert hits[0] > 2 and hits[1] > 0
    found = [re.fullmatch(r"  pass (\d) \(svd\) finds block statistics \((\d+) files?\) that an earlier run "
                          r"measured: it reads back those of its targets, blocks, inputs and ranks as they are now, and says how many "
                          r"when it ends", line) for line in said]
    assert all(found) and [(int(m[1]), int(m[2])) for m in found] == [(1, hits[0]), (2, hits[1])], said


def test_a_run_stopped_during_a_held_out_check_keeps_its_pass(tmp_path, monkeypatch, capsys):
    """SIGTERM during the held-out check that follows the svd pass (whole-model forwards: minutes on a
    big model): the pass's stage is kept, --resume does not run the pass again but measures its error,
    and the output and report are an uninterrupted run's."""
    import json
    import os
    import signal

    import compress.runner_heldout
    from compress.passes import svd

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd

    def argv(name):
        return ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / f"out-{name}"),
                "--run-dir", str(tmp_path / f"run-{name}")]
    assert main(argv("ref")) == 0
    real_run, real_error, runs, checks = svd.SVDPass.run, compress.runner_heldout.relative_error, [], []
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, model, ctx: (runs.append(1), real_run(self, model, ctx))[1])

    def check_then_stop(*args, **kwargs):
        checks.append(1)
        if len(checks) == 2:  # pass 2's
            os.kill(os.getpid(), signal.SIGTERM)
        return real_error(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(compress.runner_heldout, "relative_error", check_then_stop)
        assert main(argv("cut")) == 143  # SIGTERM: 128 + 15 (b79feee)
    capsys.readouterr()
    assert main(argv("cut") + ["--resume"]) == 0
    assert len(runs) == 1  # the svd pass ran once, before the stop
    err = capsys.readouterr().err.splitlines()
    assert "  pass 2/2 (svd, kept) was stopped during its held-out check: measuring it now" in err
    weights = "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "out-cut" / weights).read_bytes() == (tmp_path / "out-ref" / weights).read_bytes()

    def stages(name):
        report = json.loads((tmp_path / f"out-{name}" / "report.json").read_text())
        return [{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]]
    assert stages("cut") == stages("ref")


def test_resuming_words_once_every_pass_was_done():
    """It said 'resuming all 2 passes done (svd, svd): the output is written again'."""
    from compress.runner_restore import resuming_words

    assert resuming_words(1, ["svd", "svd"], True) == "[bold]resuming[/] after pass 1/2 (svd)"
    assert resuming_words(2, ["svd", "svd"], True) == "all 2 passes were done (svd, svd): writing the output again"
    assert resuming_words(2, ["svd", "svd"], False) == "all 2 passes were done (svd, svd): writing the output"
    assert resuming_words(1, ["svd"], True) == "its only pass (svd) was done: writing the output again"


@pytest.mark.parametrize("probes", [None, 2])
def test_a_resumed_svd_pass_says_in_one_line_the_output_fishers_it_reads_back(tmp_path, monkeypatch, capsys, probes):
    """An svd pass stopped once its output Fishers were measured: its --resume said them twice, the
    runner's line ('finds ..., output Fishers (12 files) that an earlier run measured') then the pass's
    ('output Fishers: 12 of 12 read back from an earlier run'); one line now. With another
    fisher_probes the pass reads none of them back (they are another estimate), and the line named them.
    (Stopped as the pass compresses: its block statistics are measured then, so none are kept.)"""
    from compress.passes.svd import SVDPass

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    with monkeypatch.context() as m:
        m.setattr(SVDPass, "_compress", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(argv) == 130
    capsys.readouterr()
    fishers = len(list((tmp_path / "run" / "calib").glob("*/*/fisher-4probes/*.pt")))  # fisher_probes' default
    assert fishers > 0
    other = ["--set", f"passes.1.svd.fisher_probes={probes}"] if probes else []
    assert main(argv + ["--resume", *other]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "earlier run" in line]
    if probes:  # nothing that pass reads back: no line (the statistics come as the pass compresses)
        assert said == []
    else:
        assert said == [f"  pass 2 (svd) finds output Fishers ({fishers} files) that an earlier run measured: it "
                        "reads back those of its targets, blocks, inputs and ranks as they are now, and says how many when it ends",
                        f"  pass 2 (svd) read back all {fishers} files an earlier run measured"]


def test_the_run_record_is_written_atomically_an_error_mid_write_leaves_the_old_one(tmp_path, monkeypatch):
    """stages/run.json, which the followers of a launch read for the key of the caches, was written in
    place: a write cut off (a full disk, a kill) left half a record, which a follower reading it, and any
    rerun, took for another (or no) fingerprint. Now a temp file beside it is renamed over it."""
    import json
    import pathlib
    from types import SimpleNamespace

    from compress.runner_stages import record_run

    record = tmp_path / "stages" / "run.json"
    record.parent.mkdir()
    record.write_text('{"written_by": "dit-compress", "fingerprint": "old"}\n')
    runner = SimpleNamespace(ctx=SimpleNamespace(fingerprint="new"), run_dir=tmp_path, identity={"source": "t"})
    real = pathlib.Path.write_text

    def cut_off(path, text, *a, **k):
        real(path, text[:len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", cut_off)
    with pytest.raises(OSError):
        record_run(runner)
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    assert json.loads(record.read_text())["fingerprint"] == "old"
    assert [p.name for p in record.parent.iterdir()] == ["run.json"]  # no temp file left
    record_run(runner)
    assert json.loads(record.read_text())["fingerprint"] == "new"
    assert [p.name for p in record.parent.iterdir()] == ["run.json"]


def test_an_svd_pass_says_at_its_end_how_many_of_the_files_it_found_it_read_back(tmp_path, capsys):
    """The count as an svd pass starts is of every file an earlier run measured for the same student;
    which of them it reads is known only as it runs (their names hash its blocks' inputs and ranks), so
    its end says how many it read: none for a pass of other targets, some after a ratio change (a new
    user's run said it finds 6 files for a pass of the top-level modulation alone, which read none, and 5
    after a ratio change, of which it read 1: the others were removed as the run ended)."""
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    attention = "  - svd: {{targets: [attention], allocation: global, ratio: {ratio}, multiple: 2}}\n"
    recipes = {"attention": attention.format(ratio=0.5), "ratio": attention.format(ratio=0.3),
               "modulation": "  - svd: {targets: [modulation], fisher: none, ranks: {modulation: 4}}\n"}

    def rerun(name: str) -> tuple[list[str], int, int]:
        """(its lines on what it reads back, the files of statistics there before it, those of them left
        after it: the ones it read, as the run removes the others as it ends)"""
        files = lambda: {p.name for p in (tmp_path / "run" / "calib").glob("*/*/*.pt")}  # noqa: E731
        before = files() if (tmp_path / "run").is_dir() else set()
        (tmp_path / f"{name}.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=recipes[name]))
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / "out"), "--run-dir",
                     str(tmp_path / "run"), "--overwrite"]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "read back" in line or "reads back" in line]
        return said, len(before), len(before & files())
    assert rerun("attention") == ([], 0, 0)
    said, offered, read = rerun("ratio")
    assert 0 < read < offered and f"finds block statistics ({offered} files)" in said[0]
    assert said[1] == (f"  pass 1 (svd) read back {read} of the {offered} files an earlier run measured (the "
                       "others are not of its targets, blocks, inputs and ranks as they are now)")
    said, offered, read = rerun("modulation")
    assert read == 0 and f"finds block statistics ({offered} files)" in said[0]
    assert said[1] == (f"  pass 1 (svd) read back none of the {offered} files an earlier run measured: they are "
                       "not of its targets, blocks, inputs and ranks as they are now")


@pytest.mark.parametrize("second", ["output", "modulation"])
def test_what_an_earlier_pass_of_the_same_run_measured_is_said_to_be_its(tmp_path, capsys, second):
    """A new user's fresh run folder: an svd pass of the modulation that changed nothing (dense at its
    multiple), then an svd pass of the output, which said it 'finds block statistics (1 file) that an
    earlier run measured' and ended 'read back none of the 1 file an earlier run measured': the file was
    the first pass's, of the same student (the cache is keyed by the student, not the targets). Now
    'pass 1 of this run'; where the second pass is of the same targets it reads that file back."""
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    targets = {"output": "[output], allocation: per_role, ratios: {output: 0.5}, method: asvd, alpha: 0.5",
               "modulation": "[modulation], allocation: energy, energy: 0.95"}
    passes = "".join(f"  - svd: {{targets: {targets[t]}}}\n" for t in ("modulation", second))
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes))
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "read back" in line or "reads back" in line]
    end = ("read back the file pass 1 of this run measured" if second == "modulation" else
           "read back none of the 1 file pass 1 of this run measured: it is not of its targets, blocks, inputs "
           "and ranks as they are now")
    assert said == ["  pass 2 (svd) finds block statistics (1 file) that pass 1 of this run measured: it reads back "
                    "those of its targets, blocks, inputs and ranks as they are now, and says how many when it ends",
                    f"  pass 2 (svd) {end}"], said
    assert main(argv + ["--overwrite"]) == 0  # a rerun: pass 1 reads it back, and pass 2 finds an earlier run's
    said = [line for line in capsys.readouterr().err.splitlines() if "(svd) finds" in line]
    assert [line.split(" that ")[1].split(":")[0] for line in said] == ["an earlier run measured"] * 2, said


@pytest.mark.parametrize("stopped_in", ["remove_blocks", "svd"])
def test_a_rerun_over_a_finished_run_discards_its_stages_only_as_it_saves_its_first(tmp_path, monkeypatch, capsys,
                                                                                   stopped_in):
    """A plain rerun over a finished run notes that --resume keeps its passes ('Ctrl-C now and add --resume to
    keep them'), but deleted its stages at once: a Ctrl-C a second later kept none. They go only as the rerun
    saves its first stage: a Ctrl-C in its first pass leaves the finished run as it was (--resume keeps both
    passes and runs none); one in its second pass leaves the rerun's first stage alone."""
    from compress.passes import remove_blocks, svd

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks (blocks [0]), then svd
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    stages = tmp_path / "run" / "stages"
    before = {p.name: p.stat().st_mtime_ns for p in stages.iterdir() if p.name != "run.json"}
    assert sorted(before) == ["0-remove_blocks", "1-svd", "finished.json"]
    capsys.readouterr()

    def stop(self, model, ctx):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(svd.SVDPass if stopped_in == "svd" else remove_blocks.RemoveBlocksPass, "run", stop)
        assert main(argv + ["--out", str(tmp_path / "out2")]) == 130
    said = " ".join(capsys.readouterr().err.split())
    assert "holds a finished run that shares all 2 passes with this recipe: starting over" in said
    left = {p.name: p.stat().st_mtime_ns for p in stages.iterdir() if p.name != "run.json"}
    if stopped_in == "svd":  # the rerun's own first stage saved: the finished run's are gone
        assert sorted(left) == ["0-remove_blocks"] and left["0-remove_blocks"] != before["0-remove_blocks"]
        assert "keeps its work (1 of 2 passes done, " in said
        return
    assert left == before  # as it was
    assert ("interrupted; " + str(tmp_path / "run") + " still holds the finished run's stages: rerun with --resume "
            "to keep all its 2 passes (with the same teacher)") in said
    with monkeypatch.context() as m:
        m.setattr(remove_blocks.RemoveBlocksPass, "run", stop)
        m.setattr(svd.SVDPass, "run", stop)  # neither runs again
        assert main(argv + ["--out", str(tmp_path / "out2"), "--resume"]) == 0
    assert "all 2 passes were done (remove_blocks, svd): writing the output again" in capsys.readouterr().err


def test_a_rerun_over_a_finished_run_whose_first_pass_is_distill_is_resumed_after_its_checkpoint(tmp_path,
                                                                                                  monkeypatch, capsys):
    """A distill first pass writes checkpoints long before it saves its stage: a plain rerun stopped after
    one kept the finished run's stages, and --resume said 'all 2 passes were done (distill, svd): writing
    the output again', the OLD output over the new run's steps (R2's e2e). They go with its first checkpoint,
    and --resume continues the new run's training from it."""
    pixart_runner(tmp_path, monkeypatch)  # the tiny PixArt teacher in tmp_path/teacher
    text = ("model: pixart\nteacher: " + str(tmp_path / "teacher") + "\n"
            "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
            "passes:\n  - distill: {steps: 2, batch_size: 2, max_steps_this_run: STOP, checkpoint_every: 1, "
            "lambda_task: 0, progress: false, plot: false}\n  - svd: {targets: [mlp], ratio: 0.5}\n")
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    (tmp_path / "r.yaml").write_text(text.replace("STOP", "2"))
    assert main(argv) == 0
    (tmp_path / "r.yaml").write_text(text.replace("STOP", "1"))  # stops after step 1, its checkpoint written
    assert main(argv + ["--overwrite"]) == 75
    said = " ".join(capsys.readouterr().err.split())
    assert "holds a finished run that shares all 2 passes with this recipe: starting over" in said
    assert [p.name for p in (tmp_path / "run" / "stages").iterdir()] == ["run.json"]  # the finished run's: gone
    (tmp_path / "r.yaml").write_text(text.replace("STOP", "2"))
    assert main(argv + ["--overwrite", "--resume"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "passes were done" not in said
    assert "distill: continuing from its checkpoint at step 1/2 (" in said


def test_a_ctrl_c_in_a_rerun_s_first_distill_before_its_first_checkpoint_keeps_the_finished_run(tmp_path,
                                                                                                 monkeypatch, capsys):
    """The rerun's note says 'Ctrl-C now and add --resume to keep them', but a Ctrl-C during its distill first
    pass wrote a stop-time checkpoint, discarding the finished run's stages (R3). Before this run's first
    checkpoint a stop saves none: the finished run is kept, as the stop says, and --resume runs no pass."""
    import signal

    import compress.passes.distill_trainer as dt

    pixart_runner(tmp_path, monkeypatch)
    (tmp_path / "r.yaml").write_text(
        "model: pixart\nteacher: " + str(tmp_path / "teacher") + "\n"
        "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
        "passes:\n  - distill: {steps: 4, batch_size: 2, checkpoint_every: 100, lambda_task: 0, progress: false, "
        "plot: false}\n  - svd: {targets: [mlp], ratio: 0.5}\n")
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    stages = tmp_path / "run" / "stages"
    before = {p.name: p.stat().st_mtime_ns for p in stages.iterdir() if p.name != "run.json"}
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(dt, "agreed_stop", lambda own, taken: signal.SIGINT)  # a Ctrl-C in the first step
        assert main(argv + ["--overwrite"]) == 130
    said = " ".join(capsys.readouterr().err.split())
    assert {p.name: p.stat().st_mtime_ns for p in stages.iterdir() if p.name != "run.json"} == before
    assert not list((tmp_path / "run").glob("distill/checkpoints/step-*"))
    assert ("distill: stopped at step 1/4 on a stop signal, before its first checkpoint; " + str(tmp_path / "run")
            + " still holds the finished run's stages: rerun with --resume to keep all its 2 passes") in said
    assert main(argv + ["--overwrite", "--resume"]) == 0
    assert "all 2 passes were done (distill, svd): writing the output again" in capsys.readouterr().err
