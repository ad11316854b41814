"""compress.runner_stages: what --resume does with a distill checkpoint once an earlier pass changed
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
            f"checkpoints are set aside ({checkpoints} moved to {kept}); to take them back, stop this run before "
            "pass 3/3 (distill) ends, undo the change and rerun with --resume") in said, said
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
