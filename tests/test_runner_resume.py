"""compress.runner_resume: --resume from resident and streamed stages; what the caches are keyed by and what
--resume compares: test_runner_resume_keys.py."""

import json
import re

import pytest
import torch

from compress.errors import UserError
from compress.io import INDEX
from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from compress.runner import Runner, build_passes
from compress.runner_resume import read_state, recipe_changes
from compress.runner_restore import restore
from tests.conftest import tiny_pixart
from tests.runner_helpers import run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _interrupted_after_first_pass(tmp_path, make, monkeypatch):
    from compress.passes import svd

    def boom(self, model, ctx):
        raise KeyboardInterrupt("simulated Ctrl-C during svd")

    monkeypatch.setattr(svd.SVDPass, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "out").run()
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, model, ctx: model)
    assert (tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json").is_file()


def test_resume_refuses_another_teacher(pixart, monkeypatch):
    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other")
    was, now = (re.escape(str(tmp_path / name)) for name in ("teacher", "other"))
    with pytest.raises(UserError, match=rf"--resume: the teacher changed since .* \(was {was}, now {now} "
                                        r"\(the same config, other weights\)\); "
                                        "rerun with --restart to start over"):
        make(tmp_path / "out", teacher=str(tmp_path / "other"), resume=True).run()
    tiny_pixart(seed=1).save_pretrained(tmp_path / "teacher")  # same path, other weights
    with pytest.raises(UserError, match=r"the teacher changed .*\(the weights of .*teacher changed since the run \(its "
                                        r"config holds the same\)\); put back the weights .*teacher had and rerun "
                                        r"with --resume, or rerun with --restart to start over"):
        make(tmp_path / "out", resume=True).run()
    tiny_pixart(seed=0).save_pretrained(tmp_path / "teacher")
    # a --teacher-config the folder teacher does not read (warned) is no other teacher: it resumes
    assert make(tmp_path / "out", teacher=str(tmp_path / "teacher"), resume=True,
                teacher_config=str(tmp_path / "teacher" / "config.json")).run().is_dir()



def test_an_older_runs_teacher_config_its_folder_teacher_does_not_read_is_no_change(pixart, monkeypatch):
    """Runs before 652e195 recorded a --teacher-config that their folder teacher does not read (now dropped
    once warned): --resume refused 'the teacher changed (--teacher-config was …, now None)', with it
    given again or not, and a plain rerun said 'for another teacher'. It is no change: --resume continues."""
    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    state = tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json"
    old = json.loads(state.read_text())
    old["teacher"]["config"] = str((tmp_path / "teacher" / "config.json").resolve())  # as the old code wrote it
    state.write_text(json.dumps(old))
    assert read_state(state.parent)["teacher"] == {**old["teacher"], "config": None}
    runner = make(tmp_path / "out", resume=True)
    runner.prepare()
    assert restore(runner)[0] == 1
    assert make(tmp_path / "out", resume=True, teacher_config=old["teacher"]["config"]).run().is_dir()


def test_resume_of_stages_that_record_no_teacher_warns(pixart, monkeypatch, capsys):
    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    state = tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json"
    old = json.loads(state.read_text())
    del old["teacher"]
    state.write_text(json.dumps(old))
    runner = make(tmp_path / "out", resume=True)
    runner.prepare()
    assert restore(runner)[0] == 1
    assert "does not record the teacher; --resume cannot check" in " ".join(capsys.readouterr().err.split())


def test_resume_from_a_streamed_stage(tmp_path):
    """Only the latest stage is kept (spills and earlier stages are deleted once it is written);
    resuming from it gives the same output."""
    text = streamed_teacher(tmp_path, "flux").format(stream="true")
    first = run_recipe(tmp_path, text, "a")
    stages = tmp_path / "run-a" / "stages"
    assert [d.name for d in stages.iterdir() if d.is_dir()] == ["1-svd"] and (stages / "1-svd" / INDEX).is_file()
    resumed = Runner(parse_recipe(text, str(tmp_path / "a.yaml")), tmp_path / "out-b",
                     tmp_path / "run-a", resume=True).run()
    a, b = load_transformer(first).state_dict(), load_transformer(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_streamed_run_stopped_between_passes_resumes_to_the_same_weights(tmp_path, monkeypatch, dtype):
    """Stopped after the first pass, --resume rebuilds the student from that stage in the compute
    dtype (it was rebuilt in float32, so a bfloat16 run failed on resume) and writes the weights
    of the run that was never stopped."""
    from compress.passes.svd import SVDPass

    text = streamed_teacher(tmp_path, "flux").replace("stream: {stream}", f"stream: {{stream}}\ncompute_dtype: {dtype}")
    text = text.format(stream="true")
    whole = run_recipe(tmp_path, text, "whole")
    calls, real = [], SVDPass.run

    def stop_second(self, model, ctx):
        calls.append(self)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, model, ctx)

    monkeypatch.setattr(SVDPass, "run", stop_second)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, text, "stopped")
    monkeypatch.setattr(SVDPass, "run", real)
    assert [d.name for d in (tmp_path / "run-stopped" / "stages").iterdir() if d.is_dir()] == ["0-svd"]
    resumed = Runner(parse_recipe(text, str(tmp_path / "stopped.yaml")), tmp_path / "out-stopped",
                     tmp_path / "run-stopped", resume=True).run()
    a, b = load_transformer(whole).state_dict(), load_transformer(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("call", [2, 7])  # during the first svd pass; during the second
def test_sigterm_mid_streamed_pass_then_resume(tmp_path, monkeypatch, call):
    """A real SIGTERM while a block is being released: no output folder, and --resume (from the
    sharded stage when the first pass had finished) gives the uninterrupted run's weights."""
    import os
    import signal

    from compress.stream import CheckpointBlocks

    text = streamed_teacher(tmp_path, "flux").format(stream="true")  # 2 + 3 blocks: 5 releases a pass
    reference = load_transformer(run_recipe(tmp_path, text, "ref")).state_dict()
    real, count = CheckpointBlocks.release, {"n": 0}

    def release(self, *args):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args)

    monkeypatch.setattr(CheckpointBlocks, "release", release)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, text, "cut")
    assert not (tmp_path / "out-cut").exists()
    assert (tmp_path / "run-cut" / "stages" / "0-svd" / "state.json").is_file() == (call > 5)
    monkeypatch.undo()
    got = load_transformer(run_recipe(tmp_path, text, "cut", resume=True)).state_dict()
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def test_a_run_folder_of_the_older_checksum_resumes_with_a_warning(pixart, monkeypatch, capsys):
    """Its checksum read a few values of each tensor, so it cannot be compared with this one: the
    same source and config resume with a warning saying so (refusing would discard its passes);
    another source is still refused."""
    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    state_file = tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json"
    state = json.loads(state_file.read_text())
    del state["teacher"]["checksum_of"]
    state["teacher"]["checksum"] = "0" * 16  # the older kind's value
    state_file.write_text(json.dumps(state))
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match=r"the teacher changed .*\(was .*teacher, now .*other\)"):
        make(tmp_path / "out", teacher=str(tmp_path / "other"), resume=True).run()
    capsys.readouterr()
    assert make(tmp_path / "out", resume=True).run().is_dir()
    said = " ".join(capsys.readouterr().err.split())
    assert "written by an older dit-compress, whose checksum of the teacher's weights read only a few values of " \
           "each tensor; --resume checks the teacher's source and --teacher-config only" in said
    assert "resuming after pass 1/2 (remove_blocks)" in said


def test_a_run_without_resume_never_discards_an_interrupted_runs_passes(pixart, monkeypatch, capsys):
    """Rerunning the command without --resume used to start over and delete the completed stages:
    it refuses, saying what the run folder holds (of this recipe or another); --restart starts
    over; a finished run's folder is started over without either."""
    from compress.cli import main

    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    stage = tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json"
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dit-compress run: error: {tmp_path / 'run'} holds an interrupted run of this recipe (1 of 2 "
                   "passes done): add --resume to continue, or --restart to start over")
    assert main(argv + ["--set", "passes.0.remove_blocks.blocks.blocks=[1]"]) == 2
    assert "interrupted run of another recipe (it differs in passes.0.remove_blocks.blocks.blocks.0; 1 of 2 " \
           "passes done): add --restart to discard it" in capsys.readouterr().err
    assert stage.is_file() and len(loads) == 1  # refused before loading the teacher
    assert main(argv + ["--restart"]) == 0
    assert main(argv + ["--overwrite"]) == 0  # finished: started over
    (tmp_path / "run" / "stages" / "finished.json").unlink()  # as an older dit-compress left a finished run
    assert main(argv + ["--overwrite"]) == 2
    assert "holds a run of this recipe whose 2 passes are all done but whose output was not marked written " \
           "(its export was cut short, or an older dit-compress wrote it): add --resume to write the output" \
           in " ".join(capsys.readouterr().err.split())
    assert main(argv + ["--overwrite", "--resume"]) == 0


def test_export_keys_and_the_passes_still_to_run_may_change_on_resume(pixart, monkeypatch):
    """export.dtype changes no pass's result: after a float16 export is refused, the advice
    (export it as bfloat16) is followed with --resume; so may the keys of passes not yet run
    (a smaller batch after running out of memory), but not those of the passes kept."""
    tmp_path, make, loads = pixart
    _interrupted_after_first_pass(tmp_path, make, monkeypatch)
    text = (tmp_path / "r.yaml").read_text()

    def runner(*edits):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / "out",
                      tmp_path / "run", resume=True)

    with pytest.raises(UserError, match=r"the recipe changed .*\(passes\.0\.remove_blocks\.blocks\.blocks\.0\); "
                                        "undo the change to resume, or rerun with --restart"):
        runner("passes.0.remove_blocks.blocks.blocks=[1]", "export.dtype=bfloat16").run()
    out = runner("export.dtype=bfloat16", "passes.1.svd.ratio=0.4").run()
    assert json.loads((out / "config.json").read_text())["compression"]["dtype"] == "bfloat16"
    before = parse_recipe(text, "r.yaml")
    passes = build_passes(before)
    now = parse_recipe(text, "r.yaml", ["export.dtype=float16", "passes.1.svd.ratio=0.4"])
    assert recipe_changes(before.raw, now.raw, passes) == ["passes.1.svd.ratio"]
    assert recipe_changes(before.raw, now.raw, passes, done=1) == []


def test_a_float16_export_refused_at_the_end_is_written_as_bfloat16_with_resume(pixart, monkeypatch, capsys):
    """The end-of-run advice 'export it as bfloat16 (export.dtype)' followed with --resume was
    refused as a recipe change, so all compute was redone: now the passes are not run again. The
    weight no pass changes is warned about before compute."""
    from compress.errors import NumericError
    from compress.passes.remove_blocks import RemoveBlocksPass
    from compress.passes.svd import SVDPass

    tmp_path, make, loads = pixart
    teacher = tiny_pixart()
    teacher.proj_out.weight.data[0, 0] = 1e5  # no pass of the recipe changes proj_out
    teacher.save_pretrained(tmp_path / "teacher")
    text = (tmp_path / "r.yaml").read_text()

    def runner(dtype, **kw):
        recipe = parse_recipe(text, str(tmp_path / "r.yaml"), [f"export.dtype={dtype}"])
        return Runner(recipe, tmp_path / "out", tmp_path / "run", **kw)

    with pytest.raises(NumericError, match=r"export: proj_out\.weight holds values up to 1e\+05.*export it as bfloat16"):
        runner("float16").run()
    assert "the teacher's proj_out.weight holds values up to 1e+05" in " ".join(capsys.readouterr().err.split())
    for cls in (RemoveBlocksPass, SVDPass):
        monkeypatch.setattr(cls, "run", lambda self, model, ctx: pytest.fail("a pass ran again"))
    out = runner("bfloat16", resume=True).run()
    assert json.loads((out / "config.json").read_text())["compression"]["dtype"] == "bfloat16"


def test_resume_says_which_pass_it_continues_after_numbered_from_one():
    """Said 'resuming after pass 0 (remove_blocks)' before 'pass 2/2: svd'; once all passes were done,
    runner_restore.resuming_words says so (tests/test_runner_stages.py)."""
    from compress.runner_resume import resumed_in_words

    assert resumed_in_words(1, ["remove_blocks", "svd"]) == "after pass 1/2 (remove_blocks)"
    assert resumed_in_words(2, ["remove_blocks", "svd", "distill"]) == "after pass 2/3 (svd)"


def test_reusable_stage_is_the_latest_saved_for_this_recipe():
    """--resume continues from the latest stage whose recipe agrees as far as its passes go, passing
    over later stages of another recipe (with what differs); an unreadable state is passed over."""
    from compress.calib_stats import STATS_VERSION
    from compress.runner_resume import passed_over_in_words, reusable_stage

    base = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - svd: {targets: [attention], ratio: 0.5}\n  - distill: {steps: 4}\n")
    then = parse_recipe(base, "r.yaml")
    now = parse_recipe(base, "r.yaml", ["passes.1.svd.ratio=0.4"])
    passes = build_passes(now)
    stages = [(i, {"recipe": then.raw, "statistics": STATS_VERSION}) for i in range(3)]
    assert reusable_stage(stages, then.raw, passes) == (2, [])
    k, skipped = reusable_stage(stages, now.raw, passes)
    assert k == 0 and [i for i, _ in skipped] == [2, 1]
    assert skipped[-1][1] == ["passes.1.svd.ratio"]
    assert passed_over_in_words(skipped) == ("the saved passes 2, 3 were of another recipe (it differs in "
                                             "passes.1.svd.ratio): not kept")
    assert reusable_stage([(0, None), (1, {"recipe": then.raw})], now.raw, passes) == \
        (None, [(1, ["passes.1.svd.ratio"])])  # an unreadable state is neither
    shorter = parse_recipe(base.rsplit("  - distill", 1)[0], "r.yaml")  # the last pass dropped
    assert reusable_stage(stages, shorter.raw, build_passes(shorter))[0] == 1


def test_resume_after_changing_the_last_pass_keeps_the_earlier_ones(pixart, monkeypatch, capsys):
    """A finished run, then the last pass changed: --resume was refused ('the recipe changed'), so
    every pass ran again; now it continues from the last stage saved for this recipe, discards the
    later one, and writes what a fresh run of the changed recipe writes. Without --resume a note
    says what it would keep; the refusal for an interrupted run of another recipe offers it."""
    tmp_path, make, loads = pixart
    text = (tmp_path / "r.yaml").read_text()

    def runner(run_dir, out, *edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / out,
                      tmp_path / run_dir, **kw)

    runner("run", "out-a").run()
    capsys.readouterr()
    calls = []
    from compress.passes import remove_blocks

    real = remove_blocks.RemoveBlocksPass.run
    monkeypatch.setattr(remove_blocks.RemoveBlocksPass, "run", lambda *a: (calls.append(1), real(*a))[1])
    stale = tmp_path / "run" / "distill" / "checkpoints" / "step-1"  # as a later distill pass would leave
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text(json.dumps({"settings": {"steps": 6}}))
    with_distill = text + "  - distill: {steps: 8}\n"  # checkpoint of other settings, passed over: no refusal
    over = Runner(parse_recipe(with_distill, str(tmp_path / "r.yaml"), ["passes.1.svd.ratio=0.4"]),
                  tmp_path / "out-b", tmp_path / "run", resume=True)
    over.prepare()
    assert over.resumes_from[1:] == (0, [(1, ["passes.1.svd.ratio"])])
    resumed = runner("run", "out-b", "passes.1.svd.ratio=0.4", resume=True).run()
    err = " ".join(capsys.readouterr().err.split())
    assert "resuming after pass 1/2 (remove_blocks)" in err
    checkpoints = stale.parent
    assert ("the saved pass 2 was of another recipe (it differs in passes.1.svd.ratio): not kept; its distill "
            f"checkpoints are set aside ({checkpoints} moved to {checkpoints}.discarded/") in err  # (/its fingerprint)
    assert not stale.exists()
    assert calls == []  # the first pass was not run again
    fresh = runner("run-fresh", "out-c", "passes.1.svd.ratio=0.4").run()
    assert calls == [1]
    a, b = load_transformer(resumed).state_dict(), load_transformer(fresh).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    runner("run", "out-d", "passes.1.svd.ratio=0.3").prepare()  # a fresh start of a finished run: noted
    assert ("holds a finished run that shares its first 1 pass with this recipe: starting over (Ctrl-C now "
            "and add --resume to keep them, with the same teacher)") in " ".join(capsys.readouterr().err.split())
    from compress.runner_folders import interrupt_note  # Ctrl-C before its stages are discarded: still there

    assert interrupt_note(tmp_path / "run", False, parse_recipe(text, "r.yaml", ["passes.1.svd.ratio=0.3"]).raw,
                          build_passes(parse_recipe(text, "r.yaml"))) == \
        (f"; {tmp_path / 'run'} still holds the finished run's stages: rerun with --resume to keep its first 1 "
         "pass (with the same teacher)")
    (tmp_path / "run" / "stages" / "finished.json").unlink()  # as if its export were cut short
    with pytest.raises(UserError, match=r"another recipe \(it differs in passes\.1\.svd\.ratio; 2 of 2 passes "
                                        r"done, block statistics \(up to 2 files\) to read back\): --resume keeps its first 1 pass \(with the same teacher\) and "
                                        r"runs the rest; add --restart"):
        runner("run", "out-d", "passes.1.svd.ratio=0.3").prepare()
