"""A run folder's saved stages calibrated on other prompts than the recipe reads now: a plain rerun's
refusal and Ctrl-C's note offer --resume only as far as --resume would keep them (it refuses a stage
of other prompts)."""

import json
import shutil

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import Runner

TEXT = ("model: pixart\nteacher: toy:pixart\n"
        "calibration: {{source: pipeline, {prompts}, sample_steps: 2, timesteps: 2, heldout: 1}}\n"
        "passes:\n  - remove_blocks: {{blocks: {{blocks: [0]}}}}\n")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run folder of a finished toy pipeline-calibration run on the prompts 'a 1', 'a 2' (a prompt
    file's lines; num_prompts given), and a function making a Runner of other prompts into it."""
    tmp_path = tmp_path_factory.mktemp("prompts")
    (tmp_path / "p.txt").write_text("a 1\na 2\na 3\n")

    def runner(prompts: str, out: str, **kw) -> Runner:
        recipe = parse_recipe(TEXT.format(prompts=prompts), str(tmp_path / "r.yaml"))
        return Runner(recipe, tmp_path / out, tmp_path / "run", **kw)

    runner("prompt_file: p.txt, num_prompts: 2", "out-a").run()
    return tmp_path, runner


def _refusal(runner) -> str:
    with pytest.raises(UserError) as e:
        runner.prepare()
    return " ".join(str(e.value).split())


def test_a_rerun_refused_offers_resume_only_for_the_same_prompts(finished):
    """With stages/finished.json gone (an export cut short), a rerun on other prompts was told 'whose 1
    passes are all done ... add --resume to write the output', and --resume then refused it (the
    calibration prompts changed): it says that the stage was calibrated on other prompts, and to undo
    the change for --resume; the same prompts (inline now, as the file's first two lines) are offered
    --resume as before, which then writes the output."""
    tmp_path, runner = finished
    (tmp_path / "run" / "stages" / "finished.json").unlink()
    said = _refusal(runner("prompts: [a 3, a 4], num_prompts: 2", "out-b"))
    assert "whose 1 passes" not in said and "whose one pass is done" in said
    assert said.endswith("(its export was cut short, or an older dit-compress wrote it), and the calibration "
                         "prompts changed (calibration.prompts, the first 2 (calibration.num_prompts)) since it "
                         "ran: add --restart to start over, or undo the change and add --resume to write the output "
                         "from it")
    with pytest.raises(UserError, match=r"the calibration prompts changed \(calibration.prompts, the first 2 "
                       r"\(calibration.num_prompts\)\) since"):
        runner("prompts: [a 3, a 4], num_prompts: 2", "out-b", resume=True).run()
    (tmp_path / "q.txt").write_text("a 3\na 4\n")  # a prompt file alone: its lines named, no calibration.prompts
    said = _refusal(runner("prompt_file: q.txt, num_prompts: 2", "out-b"))
    assert ("the calibration prompts changed (the lines calibration.prompt_file q.txt holds, the first 2 "
            "(calibration.num_prompts)) since it ran") in said
    said = _refusal(runner("prompts: [a 1, a 2], num_prompts: 2", "out-c"))
    assert "changed" not in said and said.endswith(
        "whose one pass is done but whose output was not marked written (its export was cut short, or an older "
        "dit-compress wrote it): add --resume to write the output from it, or --restart to start over")
    assert "(Ctrl-C" not in said
    assert not (tmp_path / "out-c").exists()


def test_ctrl_c_offers_resume_only_for_the_same_prompts(finished):
    """A Ctrl-C before a rerun's start discards a finished run's stages said 'rerun with --resume to keep
    its first 1 pass' though the rerun's prompts changed, which --resume refuses; and so, for an
    interrupted run, 'rerun with --resume to continue'."""
    tmp_path, runner = finished
    done = tmp_path / "run" / "stages" / "finished.json"
    if not done.exists():
        done.write_text('{"written_by": "dit-compress"}')
    said = " ".join(runner("prompts: [a 3, a 4], num_prompts: 2", "out-d").interrupt_note().split())
    assert said.endswith("still holds the finished run's stages, but the calibration prompts changed "
                         "(calibration.prompts, the first 2 (calibration.num_prompts)) since it ran: a rerun "
                         "starts over (undo the change and add --resume to keep them)")
    said = " ".join(runner("prompt_file: p.txt, num_prompts: 2", "out-d").interrupt_note().split())
    assert said.endswith("still holds the finished run's stages: rerun with --resume to keep its one pass "
                         "(with the same teacher)")
    done.unlink()  # an interrupted run
    said = " ".join(runner("prompts: [a 3, a 4], num_prompts: 2", "out-d").interrupt_note().split())
    assert "rerun with --resume to continue" not in said
    assert said.endswith("(the one pass done): the calibration prompts changed (calibration.prompts, the first 2 "
                         "(calibration.num_prompts)) since it ran, so rerun with --restart to start over, or "
                         "undo the change and add --resume")
    said = " ".join(runner("prompts: [a 1, a 2], num_prompts: 2", "out-d").interrupt_note().split())
    assert said.endswith("(the one pass done): rerun with --resume to continue")


@pytest.mark.parametrize("other", [None, "prompts", "pipeline"])
def test_another_recipes_passes_kept_only_for_the_same_inputs(tmp_path, other):
    """A run of another recipe (its second pass differs) refused with '--resume keeps its first 1 pass',
    though that stage was calibrated on other prompts, or in a pipeline whose parts changed since, which
    --resume refuses: said only for the same; a rerun of this recipe is told what changed."""
    from compress.io_signature import pipeline_signature
    from compress.runner import build_passes
    from compress.runner_folders import check_run_folder, interrupt_note
    from compress.runner_prompts import prompts_digest

    pipe = tmp_path / "pipe"
    (pipe / "scheduler").mkdir(parents=True)
    (pipe / "model_index.json").write_text('{"scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}')
    (pipe / "scheduler" / "scheduler_config.json").write_text('{"beta_end": 0.02}')
    text = (TEXT.format(prompts=f"prompts: [a 1, a 2], pipeline: {pipe}") +
            "  - svd: {targets: [mlp], ratio: 0.5}\n")
    before, now = parse_recipe(text, "r.yaml"), parse_recipe(text, "r.yaml", ["passes.1.svd.ratio=0.25"])
    sampled = parse_recipe(text, "r.yaml", ["calibration.prompts=[a 3, a 4]"]) if other == "prompts" else now
    inputs = {"prompts": prompts_digest(sampled), "pipeline": pipeline_signature(str(pipe))}
    for stage in ("0-remove_blocks", "1-svd"):
        (tmp_path / "run" / "stages" / stage).mkdir(parents=True)
        (tmp_path / "run" / "stages" / stage / "state.json").write_text(
            json.dumps({"recipe": before.raw, "inputs": inputs}))
    if other == "pipeline":
        (pipe / "scheduler" / "scheduler_config.json").write_text('{"beta_end": 0.012}')
    run = tmp_path / "run"
    with pytest.raises(UserError) as e:
        check_run_folder(run, now.raw, build_passes(now), {"source": "toy:pixart"}, now)
    note = interrupt_note(run, False, now.raw, build_passes(now), recipe=now, source="toy:pixart")
    offered = "--resume keeps its first 1 pass (with the same teacher) and runs the rest"
    assert (offered in str(e.value)) is (offered in note) is (other is None)
    assert str(e.value).endswith("add --restart to discard it and start over, or choose another --run-dir")
    shutil.rmtree(run / "stages" / "1-svd")  # interrupted in its svd pass
    with pytest.raises(UserError) as e:
        check_run_folder(run, before.raw, build_passes(before), {"source": "toy:pixart"}, before)
    changed = {None: "", "prompts": "the calibration prompts changed (calibration.prompts)",
               "pipeline": f"the calibration pipeline changed ({pipe}/scheduler/scheduler_config.json differs)"}
    said = " ".join(str(e.value).split())
    assert said.endswith(f"and {changed[other]} since it ran: add --restart to start over, or undo the change and "
                         "add --resume to continue" if other else ": add --resume to continue, or --restart to "
                         "start over")
