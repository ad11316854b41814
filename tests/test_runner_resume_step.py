"""The step of the distill checkpoint --resume continues from (compress/runner_resume_step.py): that of the
distill pass it runs next, in its own folder, not the latest of any distill folder."""

import shutil

import pytest

from compress.errors import UserError
from compress.passes import build_passes
from compress.runner import Runner
from compress.runner_resume import interrupted_run
from compress.runner_resume_step import pass_folder, resumed_step

pytestmark = pytest.mark.usefixtures("one_thread")

DISTILL = "  - distill: {steps: 2, warmup_steps: 0, batch_size: 2, checkpoint_every: 1, progress: false}\n"


def test_the_step_said_is_the_next_distill_pass_s_not_an_earlier_pass_s(pixart, monkeypatch):
    """Passes (remove_blocks, svd, distill, distill) stopped once pass 3's stage was saved, before its
    checkpoints were removed (kill -9 there): a plain rerun said '3 of 4 passes done, a distill checkpoint at
    step 2', and an error's note '--resume continues from pass 4's checkpoint', though those were pass 3's
    (--resume removes them; pass 4 trains from its start). Now no step is said; with a checkpoint of pass 4
    (RUN/distill-2) at step 1 beside them, step 1, not 2."""
    from compress.passes.distill import DistillPass
    from compress.recipe import parse_recipe
    from compress.runner_resume import resume_note

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + DISTILL + DISTILL
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))

    def stop(self):
        raise KeyboardInterrupt("simulated stop once the stage was saved")
    with monkeypatch.context() as m:
        m.setattr(DistillPass, "stage_saved", stop)
        with pytest.raises(KeyboardInterrupt):
            Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    run_dir = tmp_path / "run"
    steps = sorted((run_dir / "distill" / "checkpoints").glob("step-*"))
    assert [int(p.name.removeprefix("step-")) for p in steps] == [1, 2]
    with pytest.raises(UserError) as refused:  # a plain rerun
        Runner(recipe, tmp_path / "out", run_dir).run()
    assert "(3 of 4 passes done): add --resume to continue" in str(refused.value)
    note = resume_note(run_dir, recipe, build_passes(recipe))  # (what an error that stopped the run says)
    assert note.endswith("(3 of 4 passes done): --resume continues from pass 4 (whose keys may change)")
    shutil.copytree(steps[0], run_dir / "distill-2" / "checkpoints" / steps[0].name)
    assert interrupted_run(run_dir)["step"] == 1


@pytest.mark.parametrize("done, names, folder", [
    (0, ["distill"], "distill"), (2, ["svd", "distill", "distill"], "distill-2"), (1, ["distill", "svd"], None),
    (3, ["svd", "distill", "distill"], None), (0, None, "distill"), (2, None, "distill*")])
def test_pass_folder(done, names, folder):
    assert pass_folder(done, names) == folder


def test_resumed_step_reads_complete_checkpoints_of_that_pass_alone(tmp_path):
    for folder, step, whole in (("distill", 7, True), ("distill-2", 3, True), ("distill-2", 5, False)):
        checkpoint = tmp_path / folder / "checkpoints" / f"step-{step}"
        checkpoint.mkdir(parents=True)
        if whole:
            (checkpoint / "meta.json").write_text("{}")
    assert resumed_step(tmp_path, 2, ["svd", "distill", "distill"]) == 3  # step-5 holds no meta.json
    assert resumed_step(tmp_path, 1, ["svd", "distill", "distill"]) == 7
    assert resumed_step(tmp_path, 0, ["svd", "distill", "distill"]) is None
    assert resumed_step(tmp_path, 4, None) == 7  # which pass left them not known: the latest of any
