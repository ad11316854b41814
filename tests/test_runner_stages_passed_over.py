"""compress.runner_restore: what --resume does with a distill checkpoint once an earlier pass changed
(`_discard_passed_over`): set aside, not deleted, and taken back as its line says."""

import pytest

from compress.recipe import parse_recipe
from compress.runner import Runner

pytestmark = pytest.mark.usefixtures("one_thread")

DISTILL = "  - distill: {steps: 4, warmup_steps: 0, batch_size: 2, checkpoint_every: 1, progress: false}\n"


def _files(folder):
    """{relative path: bytes} of the files under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stopped_at_step_2(pixart):
    """(a Runner factory of RECIPE + DISTILL taking --set edits, RUN/distill/checkpoints, checkpoints.discarded
    beside it, the checkpoints' files) once a run stopped in its distill pass at step 2."""
    from compress.passes.distill_trainer import StepLimitReached

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + DISTILL

    def runner(*edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / "out", tmp_path / "run",
                      **kw)

    with pytest.raises(StepLimitReached):
        runner("passes.2.distill.max_steps_this_run=2").run()
    checkpoints = tmp_path / "run" / "distill" / "checkpoints"
    return runner, checkpoints, checkpoints.with_name("checkpoints.discarded"), _files(checkpoints)


def _set_of(aside):
    """The folder under `aside` (or `aside`) holding the set whose newest checkpoint is step 2."""
    (folder,) = {meta.parent.parent for meta in aside.rglob("step-00000002/meta.json")}
    return folder


def test_resume_after_an_earlier_pass_changed_sets_the_distill_checkpoints_aside(pixart, monkeypatch, capsys):
    """A run stopped in its distill pass (pass 3, a checkpoint at step 2), then --resume with pass 2's svd
    ratio changed by mistake: it deleted RUN/distill/checkpoints ('its distill checkpoint is discarded too'),
    hours of training on a real model. Now they are set aside in checkpoints.discarded (by their fingerprint), in
    words that say how to take them back (another --resume leaves them there); the change undone, --resume
    takes them back and continues the training at step 2."""
    from compress.passes import svd

    runner, checkpoints, aside, trained = _stopped_at_step_2(pixart)
    assert "step-00000002/meta.json" in trained
    capsys.readouterr()
    real = svd.SVDPass.run

    def stopped(self, model, ctx):
        raise KeyboardInterrupt("simulated Ctrl-C during the svd pass run again")

    monkeypatch.setattr(svd.SVDPass, "run", stopped)
    with pytest.raises(KeyboardInterrupt):
        runner("passes.1.svd.ratio=0.4", resume=True).run()
    said = " ".join(capsys.readouterr().err.split())
    kept = _set_of(aside)  # (named by the fingerprint its checkpoints record)
    assert ("the saved pass 2 was of another recipe (it differs in passes.1.svd.ratio): not kept; its distill "
            f"checkpoints are set aside ({checkpoints} moved to {kept}); to take them back, undo the change and "
            "rerun with --resume (they are kept past this run's pass 3/3 (distill), until a later one with other "
            "settings ends)") in said, said
    assert not checkpoints.exists() and _files(kept) == trained  # byte for byte
    with pytest.raises(KeyboardInterrupt):  # stopped again, with yet another ratio: nothing more to set aside
        runner("passes.1.svd.ratio=0.3", resume=True).run()
    assert _files(kept) == trained
    monkeypatch.setattr(svd.SVDPass, "run", real)

    runner(resume=True).run()  # the change undone, as the line says
    said = " ".join(capsys.readouterr().err.split())
    assert "resuming after pass 1/3 (remove_blocks)" in said, said
    assert f"distill: --resume takes back {kept}, trained with these settings (step 2)" in said, said
    assert "continuing from its checkpoint at step 2/4" in said, said
    assert not checkpoints.exists() and not aside.exists()  # the pass's stage saved: both gone


@pytest.mark.parametrize("left", [False, True], ids=["as set aside", "an older swap stopped"])
def test_a_resume_that_undoes_an_earlier_change_takes_back_the_checkpoints_trained_before_it(pixart, capsys, left):
    """Stopped at distill step 2; --resume with pass 2's ratio changed by mistake (its checkpoints set aside,
    the pass trained 1 step from the other student, stopped); --resume with the ratio undone set that pass's
    checkpoints aside, replacing the first ones (one set kept), and trained from step 0: the first training
    lost by the rerun that undid the mistake. Now each set is kept by its fingerprint and the pass takes back
    the one trained from its student. `left`: the first set where an older dit-compress's swap stopped left it
    (checkpoints.swapping, step-N inside), which that --resume deleted or read as the pass's: filed first."""
    from compress.passes.distill_trainer import StepLimitReached

    runner, checkpoints, aside, trained = _stopped_at_step_2(pixart)
    with pytest.raises(StepLimitReached):
        runner("passes.1.svd.ratio=0.25", "passes.2.distill.max_steps_this_run=1", resume=True).run()
    first = _set_of(aside)
    assert _files(first) == trained  # byte for byte
    if left:
        first.rename(checkpoints.with_name("checkpoints.swapping"))
        if aside.is_dir() and not any(aside.iterdir()):
            aside.rmdir()
    capsys.readouterr()
    runner(resume=True).run()
    said = " ".join(capsys.readouterr().err.split())
    assert "its distill checkpoints are set aside" in said, said
    assert f"distill: --resume takes back {first}, trained with these settings (step 2)" in said, said
    assert "continuing from its checkpoint at step 2/4" in said, said


def test_resume_without_the_distill_pass_notes_its_checkpoints_left(pixart, capsys):
    """A run stopped in its distill pass, then --resume of the recipe without that pass: the run finished
    without a word of RUN/distill/checkpoints (nor, set aside, of checkpoints.discarded), which no pass
    resumes or removes: they stayed until a run without --resume. Now each --resume names them and their
    bytes in a note (runner_caches.note_stranded_checkpoints), and leaves them for a --resume of the recipe
    with the pass; a run without --resume removes them, as before."""
    import re

    from compress.passes.distill_trainer import StepLimitReached

    tmp_path, _, _ = pixart
    base = (tmp_path / "r.yaml").read_text()

    def runner(text, *edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / "out", tmp_path / "run",
                      **kw)

    with pytest.raises(StepLimitReached):
        runner(base + DISTILL, "passes.2.distill.max_steps_this_run=2").run()
    checkpoints = tmp_path / "run" / "distill" / "checkpoints"
    trained = _files(checkpoints)
    capsys.readouterr()
    runner(base, resume=True).run()
    said = " ".join(capsys.readouterr().err.split())
    run = tmp_path / "run"
    assert re.search(rf"note: {re.escape(str(run))} holds [0-9.]+ KiB of distill checkpoints of a distill pass this "
                     r"recipe does not have \(distill/checkpoints\); a run without --resume removes them", said), said
    assert _files(checkpoints) == trained
    aside = checkpoints.with_name("checkpoints.discarded")
    checkpoints.rename(aside)  # as --resume sets them aside
    runner(base, resume=True, overwrite=True).run()
    said = " ".join(capsys.readouterr().err.split())
    assert "of distill checkpoints of a distill pass this recipe does not have (distill/checkpoints.discarded)" in said
    runner(base, overwrite=True).run()  # without --resume: gone
    assert "distill checkpoints" not in capsys.readouterr().err and not aside.exists()


def test_a_fresh_run_removes_what_an_older_swap_left(pixart):
    """A run without --resume removed RUN/distill/checkpoints and checkpoints.discarded but left
    checkpoints.swapping, a set of checkpoints an older dit-compress's stopped swap left: now it goes too."""
    tmp_path, make, _ = pixart
    folder = tmp_path / "run" / "distill"
    for name in ("checkpoints.swapping/step-00000002", "checkpoints.discarded/" + "a" * 16 + "/step-00000001"):
        (folder / name).mkdir(parents=True)
        (folder / name / "meta.json").write_text("{}")
    make(tmp_path / "out").run()
    assert list(folder.iterdir()) == []


class _Killed(BaseException):
    """kill -9: nothing holds it, nothing after it runs."""


def test_checkpoints_a_kill_left_half_removed_are_neither_set_aside_nor_taken_back(pixart, monkeypatch, capsys):
    """kill -9 as the distill pass's saved stage removed its checkpoints (the removal past their weights,
    not yet at each step's meta.json), then --resume with pass 2's ratio changed: the half-removed folder
    was set aside as a set of checkpoints ('its distill checkpoints are set aside'), for a --resume undoing
    the change to take back and fail to read. Now each meta.json goes first: what the kill leaves reads as
    no checkpoint, is removed, not set aside, and the --resume that undoes the change trains the pass anew."""
    from pathlib import Path
    from types import SimpleNamespace

    import compress.passes.distill_checkpoint_folders as distill_checkpoint_folders
    from compress.passes import svd

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + DISTILL

    def runner(*edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / "out", tmp_path / "run",
                      **kw)

    real = distill_checkpoint_folders.shutil.rmtree

    def killed_midway(folder, ignore_errors=False):
        folder = Path(folder)
        if folder.name != "checkpoints" or not folder.exists():  # (the training's own removals)
            return real(folder, ignore_errors=ignore_errors)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json"):
            file.unlink()  # the kill lands before the removal reaches the meta.json files
        raise _Killed

    with monkeypatch.context() as m, pytest.raises(_Killed):
        m.setattr(distill_checkpoint_folders, "shutil", SimpleNamespace(rmtree=killed_midway))
        runner().run()
    checkpoints = tmp_path / "run" / "distill" / "checkpoints"
    assert any(checkpoints.glob("step-*"))  # half removed
    capsys.readouterr()
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(svd.SVDPass, "run", lambda self, model, ctx: (_ for _ in ()).throw(KeyboardInterrupt()))
        runner("passes.1.svd.ratio=0.4", resume=True).run()
    said = " ".join(capsys.readouterr().err.split())
    assert "the saved passes 2, 3 were of another recipe (it differs in passes.1.svd.ratio): not kept" in said, said
    assert "set aside" not in said, said
    assert not checkpoints.exists() and not checkpoints.with_name("checkpoints.discarded").exists()

    runner(resume=True).run()  # the change undone: the pass trains from its start
    said = " ".join(capsys.readouterr().err.split())
    assert "takes back" not in said and "damaged" not in said and "continuing from" not in said, said
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_stage_a_kill_left_half_removed_is_not_resumed_from(pixart, monkeypatch, capsys):
    """kill -9 as --resume (pass 2's ratio changed) removed the stages it passed over, in the last one's
    files, not yet at its state.json; --resume with the change undone took that stage as saved ('resuming
    after pass 3/3') and failed to read its student ('RUN/stages/2-distill is not a dit-compress output
    folder (needs config.json and ...)'). Now its state.json goes first: what the kill leaves is
    no stage, and the rerun resumes after pass 1."""
    import shutil
    from pathlib import Path

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + DISTILL

    def runner(*edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / "out", tmp_path / "run",
                      **kw)

    runner().run()
    real = shutil.rmtree

    def killed_midway(folder, *args, **kw):
        folder = Path(folder)
        if folder.name != "2-distill" or folder.parent.name != "stages":
            return real(folder, *args, **kw)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json"):
            file.unlink()  # the kill lands before the removal reaches state.json
        raise _Killed

    with monkeypatch.context() as m, pytest.raises(_Killed):
        m.setattr(shutil, "rmtree", killed_midway)
        runner("passes.1.svd.ratio=0.4", resume=True, overwrite=True).run()
    capsys.readouterr()
    runner(resume=True, overwrite=True).run()  # the change undone
    said = " ".join(capsys.readouterr().err.split())
    assert "resuming after pass 1/3 (remove_blocks)" in said, said
    assert (tmp_path / "out" / "config.json").is_file()


def test_the_checkpoints_set_aside_outlive_the_mistaken_runs_distill_stage(pixart, capsys):
    """Stopped at distill step 2; --resume with pass 2's ratio changed by mistake ran to its end: the distill
    pass's saved stage removed the checkpoints set aside, so the --resume that undid the change then trained
    the pass from step 0. Now they are kept past that stage (said in a line, with their size) and taken back;
    the stage of a third ratio, saved after, removes them."""
    runner, checkpoints, aside, trained = _stopped_at_step_2(pixart)
    runner("passes.1.svd.ratio=0.25", resume=True).run()  # the mistake, run to its end
    said = " ".join(capsys.readouterr().err.split())
    kept = _set_of(aside)
    assert (f"distill: keeps the checkpoints set aside ({kept}; ") in said, said
    assert ("past this saved stage: a --resume that undoes the change that set them aside takes them back; this "
            "pass's next stage saved with other settings removes them, as does a run that starts over") in said, said
    assert {k: v for k, v in _files(kept).items() if k in trained} == trained  # byte for byte (and its mark)
    runner(resume=True, overwrite=True).run()  # the change undone
    said = " ".join(capsys.readouterr().err.split())
    assert f"distill: --resume takes back {kept}, trained with these settings (step 2)" in said, said
    assert "continuing from its checkpoint at step 2/4" in said, said
    assert not checkpoints.exists() and not aside.exists()


def test_a_second_distill_stage_of_other_settings_removes_the_checkpoints_set_aside(pixart, capsys):
    """The sets aside kept past the mistaken run's distill stage go with the next one saved with other
    settings (a third ratio), as their line says."""
    runner, checkpoints, aside, _ = _stopped_at_step_2(pixart)
    runner("passes.1.svd.ratio=0.25", resume=True).run()
    assert _set_of(aside).is_dir()
    runner("passes.1.svd.ratio=0.75", resume=True, overwrite=True).run()
    assert not checkpoints.exists() and not aside.exists()
