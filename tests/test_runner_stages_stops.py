"""What --resume says of where a run stopped, and what it does, for stops between a pass's end and
the output: once a streamed stage was saved but before the copies it replaces were deleted, and
during the export (its output not written)."""

import json

import pytest

from compress.runner import Runner
from compress.runner_stream import StreamedModels
from tests.runner_helpers import pixart_runner, run_recipe, streamed_teacher
from tests.test_runner_stages_pending import _runs_of_svd

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_streamed_run_stopped_before_the_copies_its_last_stage_replaces_were_deleted(tmp_path, monkeypatch,
                                                                                      capsys):
    """Stopped in StreamedModels.adopt of the last pass (its stage saved; its spilled blocks and the
    earlier stage not yet deleted, a copy of the model each): --resume says so, does not run the pass
    again, and deletes those copies, which no later pass would."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    real, adopted = StreamedModels.adopt, []

    def adopt_then_stop(self, student, stage, **kw):
        adopted.append(stage.name)
        if len(adopted) == 2:  # pass 2's
            raise KeyboardInterrupt
        real(self, student, stage, **kw)
    with monkeypatch.context() as m:
        m.setattr(StreamedModels, "adopt", adopt_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "cut")
    run_dir = tmp_path / "run-cut"
    assert adopted == ["0-svd", "1-svd"]
    assert any((run_dir / "stream").iterdir()) and (run_dir / "stages" / "0-svd").is_dir()  # not deleted yet
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _runs_of_svd(m)
        run_recipe(tmp_path, text, "cut", resume=True)
    assert ran == []  # both passes kept
    said = capsys.readouterr()
    said = (said.out + said.err).replace("\n", " ")
    assert "pass 2/2 (svd, kept) was stopped after its stage was saved, before its held-out check: measuring it " \
           "now" in said
    assert "during its held-out check" not in said
    assert sorted(p.name for p in (run_dir / "stages").iterdir() if p.is_dir()) == ["1-svd"]
    assert not (run_dir / "stream").exists()


def test_a_resume_after_a_stop_during_the_export_writes_the_output_not_again(tmp_path, monkeypatch, capsys):
    tmp_path, make, _ = pixart_runner(tmp_path, monkeypatch)  # remove_blocks, then svd

    def stop(self, student, teacher_params):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(Runner, "export", stop)
        with pytest.raises(KeyboardInterrupt):
            make(tmp_path / "out").run()
    assert not (tmp_path / "out").exists()
    capsys.readouterr()

    def resumed() -> list[str]:
        make(tmp_path / "out", resume=True, overwrite=True).run()
        said = capsys.readouterr()
        return [line for line in (said.out + said.err).splitlines() if line.startswith(("resuming", "all "))]
    # it said 'resuming all 2 passes done (...): the output is written'
    assert resumed() == ["all 2 passes were done (remove_blocks, svd): writing the output"]
    assert (tmp_path / "out" / "config.json").is_file()
    # a finished run resumed: its output was written, and is written again
    assert resumed() == ["all 2 passes were done (remove_blocks, svd): writing the output again"]


DISTILL = "  - distill: {steps: 2, warmup_steps: 0, batch_size: 2, checkpoint_every: 1, progress: false}\n"


def test_a_resume_that_keeps_a_distill_stage_removes_the_checkpoints_a_stop_left(pixart, monkeypatch, capsys):
    """A run stopped once its distill pass's stage was saved, before DistillPass.stage_saved removed the
    training checkpoints (T1: kill -9 as RUN/stages/2-distill appeared): --resume kept the stage, measured
    its error and wrote the output, but RUN/distill/checkpoints (model and optimizer state, several times the
    model) stayed for good, said nowhere. Now that --resume removes them, with those set aside (as the
    saved stage would have), in one line."""
    from compress.passes.distill import DistillPass
    from compress.passes.distill_checkpoint_folders import kept_past
    from compress.passes.distill_resume import DISCARDED, KEPT_PAST, newest_meta
    from compress.recipe import parse_recipe

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + DISTILL

    def runner(**kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run", **kw)

    def stop(self):
        raise KeyboardInterrupt("simulated stop once the stage was saved")
    with monkeypatch.context() as m:
        m.setattr(DistillPass, "stage_saved", stop)
        with pytest.raises(KeyboardInterrupt):
            runner().run()
    folder = tmp_path / "run" / "distill"
    assert any((folder / "checkpoints").glob("step-*")) and (tmp_path / "run" / "stages" / "2-distill").is_dir()
    trained, _ = newest_meta(folder / "checkpoints")  # the fingerprint of the training the stage holds
    for name, by in (("a" * 16, None), ("b" * 16, "c" * 16)):  # sets --resume had set aside; b kept by a stage
        (folder / DISCARDED / name).mkdir(parents=True)       # of other settings already
        if by:
            (folder / DISCARDED / name / KEPT_PAST).write_text(json.dumps({"fingerprint": by}))
    capsys.readouterr()
    runner(resume=True).run()
    said = capsys.readouterr()
    said = (said.out + said.err).replace("\n", " ")
    assert "pass 3/3 (distill, kept) was stopped during its held-out check: measuring it now" in said
    assert (f"removed {folder / 'checkpoints'}: the training checkpoints of pass 3/3 (distill, kept), whose saved "
            "stage holds the trained student") in said
    assert (tmp_path / "out" / "config.json").is_file()
    # the sets aside get stage_saved's rule (a002237): kept past the pass's first stage saved since, marked
    # with its fingerprint (they were left unmarked, to outlive one more stage); one another stage kept: removed
    assert [p.name for p in folder.iterdir() if p.name.startswith("checkpoints")] == [DISCARDED]
    assert [p.name for p in (folder / DISCARDED).iterdir()] == ["a" * 16]
    assert kept_past(folder / DISCARDED / ("a" * 16)) == trained["fingerprint"]


def test_a_ctrl_c_as_the_checkpoints_are_removed_is_held_until_all_are_gone(tmp_path, monkeypatch, ctrl_c_raises):
    """A Ctrl-C landing in DistillPass.stage_saved's removal left a half-removed set (T1: a step-N holding
    only scheduler.bin); now it is raised once all are removed."""
    import os
    import signal
    from types import SimpleNamespace

    import compress.passes.distill_checkpoint_folders as distill_checkpoint_folders
    from compress.passes.distill import DistillPass

    folder = tmp_path / "distill"
    for name in ("checkpoints/step-00000002", "checkpoints.discarded/" + "a" * 16 + "/step-00000001"):
        (folder / name).mkdir(parents=True)
        (folder / name / "scheduler.bin").write_bytes(b"0")
    # a set aside that a stage of other settings kept already: this stage removes it (a002237's rule)
    (folder / "checkpoints.discarded" / ("a" * 16) / distill_checkpoint_folders.KEPT_PAST).write_text(
        '{"fingerprint": "%s"}' % ("c" * 16))
    real = distill_checkpoint_folders.shutil.rmtree

    def removed_then_stopped(path, **kw):
        real(path, **kw)
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after the first folder went
    monkeypatch.setattr(distill_checkpoint_folders.shutil, "rmtree", removed_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        DistillPass.stage_saved(SimpleNamespace(dir=folder, fingerprint="b" * 16))
    assert list(folder.iterdir()) == []
