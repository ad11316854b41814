"""compress.runner_resume_older: --resume of a run folder an older dit-compress saved reads its stages' recipe as
that dit-compress ran it: a key it did not write (svd.objective, distill.kd_teacher) holds the value it ran, and
svd.objective's old default (branches, 0.1.0's) is no change of the user's. Where auto runs the pass as that
stage did, the stage is kept; where not, --resume is refused in one line naming the moved default, before the run
folder is touched."""

from __future__ import annotations

import hashlib
import json

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import build_passes

RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {{num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd:
      targets: [attention]
      ratio: 0.5
{objective}{distill}"""
DISTILL = ("  - distill: {data: teacher_samples, num_samples: 8, sample_steps: 1, batch_size: 4, steps: 4, "
           "warmup_steps: 0, checkpoint_every: 1}\n")
STOPPED = DISTILL.replace("}", ", max_steps_this_run: 2}")  # a run that stops at step 2: a distill checkpoint
BRANCHES = "      objective: branches\n"


def _recipe(path, objective: str = "", distill: str = DISTILL):
    return parse_recipe(RECIPE.format(objective=objective, distill=distill), str(path))


def _as_older(state: dict) -> dict:
    """A stage's state.json as 0.1.0 wrote it before svd.objective existed (1b7225c, 2c1a451): no objective
    key in its svd pass, no kd_teacher in its distill pass, and its svd summaries without objective_given."""
    for spec in state["recipe"]["passes"]:
        spec.get("svd", {}).pop("objective", None)
        spec.get("distill", {}).pop("kd_teacher", None)
    svd = state["report"].get("svd") or {}
    for summary in [svd, *svd.get("passes", [])]:
        summary.pop("objective_given", None)
    return state


def test_a_stage_recipe_without_the_keys_added_since_is_this_recipes():
    """A 1b7225c stage's recipe (no svd.objective, no distill.kd_teacher) against the same recipe now was
    'the saved passes 1, 2 were of another recipe (it differs in passes.0.svd.objective,
    passes.1.distill.kd_teacher): not kept'; now kept, and so is one of 0.1.0's default (objective: branches).
    A user's own change still counts (kd_teacher base, ratio)."""
    from compress.runner_resume import STATISTICS, reusable_stage, statistics_version

    recipe = _recipe("rec/a.yaml")
    passes, now = build_passes(recipe), recipe.raw
    state = lambda recipe: {"recipe": recipe, STATISTICS: statistics_version()}  # noqa: E731
    before = json.loads(json.dumps(now))
    del before["passes"][0]["svd"]["objective"], before["passes"][1]["distill"]["kd_teacher"]
    assert reusable_stage([(1, state(before))], now, passes) == (1, [])
    before["passes"][0]["svd"]["objective"] = "branches"
    assert reusable_stage([(1, state(before))], now, passes) == (1, [])
    before["passes"][1]["distill"]["kd_teacher"], before["passes"][0]["svd"]["ratio"] = "base", 0.4
    assert reusable_stage([(1, state(before))], now, passes) == \
        (None, [(1, ["passes.0.svd.ratio", "passes.1.distill.kd_teacher"])])
    guided = dict(now, passes=[{"svd": dict(now["passes"][0]["svd"], objective="guided")}, now["passes"][1]])
    assert reusable_stage([(1, state(guided))], now, passes) == (None, [(1, ["passes.0.svd.objective"])])


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _older_run(tmp_path, distill: str):
    """A run folder (and output, where it finished) of the recipe with objective: branches, its stages made to
    read as 0.1.0 saved them (`_as_older`)."""
    from compress.passes.distill_trainer import StepLimitReached
    from compress.runner import Runner

    try:
        Runner(_recipe(tmp_path / "r.yaml", BRANCHES, distill), tmp_path / "out", tmp_path / "run").run()
    except StepLimitReached:  # STOPPED: its checkpoint at step 2 kept
        pass
    for state in (tmp_path / "run" / "stages").glob("*/state.json"):
        state.write_text(json.dumps(_as_older(json.loads(state.read_text()))))
    return tmp_path / "run"


def _resume(tmp_path, objective: str, distill: str):
    from compress.runner import Runner

    return Runner(_recipe(tmp_path / "r.yaml", objective, distill), tmp_path / "out", tmp_path / "run",
                  resume=True, overwrite=True).run()


def test_resume_of_an_older_run_folder_that_auto_runs_as_it_did_keeps_its_stages(tmp_path, capsys):
    """No distill pass follows the svd pass: auto runs it as branches, as 0.1.0 did. Was 'the saved pass 1
    was of another recipe (it differs in passes.0.svd.objective): not kept' and the pass ran again."""
    _older_run(tmp_path, "")
    capsys.readouterr()
    _resume(tmp_path, "", "")
    said = " ".join("".join(capsys.readouterr()).split())
    assert "its only pass (svd) was done: writing the output again" in said, said
    assert "not kept" not in said, said


@pytest.mark.parametrize("stopped, saved, kept", [
    (False, "passes 1-2 were", "all 2 passes were done (svd, distill): writing the output again"),
    (True, "pass 1 was", "from its checkpoint at step 2"),
])
def test_resume_of_an_older_run_folder_that_auto_runs_otherwise_is_refused_untouched(tmp_path, capsys, stopped,
                                                                                      saved, kept):
    """A distill pass follows: auto runs the svd pass as guided_compensation, 0.1.0 ran it as branches. Was
    'the saved passes 1, 2 were of another recipe (it differs in passes.0.svd.objective, ...): not kept', the
    passes rerun and what the run measured removed (a stopped run's distill checkpoints set aside, 'undo the
    change'); now refused in one line naming the moved default, the run folder as it was; with objective:
    branches added, kept (a stopped run goes on from its checkpoint)."""
    run = _older_run(tmp_path, STOPPED if stopped else DISTILL)
    before = _files(run)
    assert any("checkpoints/step-00000002" in name for name in before) == stopped
    capsys.readouterr()
    with pytest.raises(UserError) as e:
        _resume(tmp_path, "", DISTILL)
    assert str(e.value) == (
        f"--resume: {saved} saved by dit-compress 0.1.0, whose svd.objective default was branches (0.2.0's is "
        "auto, which runs passes.0.svd (line 5) as guided_compensation: the distill pass at line 8 follows it and "
        "its calibration holds both classifier-free-guidance branches of each input; after distillation it "
        "measured 0.94-0.99x branches' conditional and guided errors on the toy recipes); to keep them, add "
        "`objective: branches` to that svd pass and rerun with --resume; to recompute them, rerun with --restart")
    assert _files(run) == before
    capsys.readouterr()
    _resume(tmp_path, BRANCHES, DISTILL)
    said = " ".join("".join(capsys.readouterr()).split())
    assert kept in said, said
    assert "not kept" not in said, said


def test_a_stage_that_auto_ran_as_branches_is_kept_by_an_explicit_branches():
    """A 0.2.0 stage saved under svd.objective auto, which ran as branches (its report's svd summary), resumed
    by the same recipe with `objective: branches` added: was 'the saved pass 1 was of another recipe (it
    differs in passes.0.svd.objective): not kept' and the pass ran again, though it makes the same model. Auto
    run as guided_compensation against an explicit branches still differs; so does auto against auto's report
    without a record (an older report)."""
    from compress.runner_resume import STATISTICS, reusable_stage, statistics_version

    recipe = _recipe("rec/a.yaml", BRANCHES, "")
    passes, now = build_passes(recipe), recipe.raw
    saved = json.loads(json.dumps(now))
    saved["passes"][0]["svd"]["objective"] = "auto"
    report = lambda ran: {"svd": {"objective": ran, "objective_given": "auto",  # noqa: E731
                                  "passes": [{"objective": ran, "objective_given": "auto"}]}}
    state = lambda ran: {"recipe": saved, STATISTICS: statistics_version(), "report": report(ran)}  # noqa: E731
    assert reusable_stage([(0, state("branches"))], now, passes) == (0, [])
    assert reusable_stage([(0, state("guided_compensation"))], now, passes) == \
        (None, [(0, ["passes.0.svd.objective"])])
    assert reusable_stage([(0, {**state("branches"), "report": {}})], now, passes) == \
        (None, [(0, ["passes.0.svd.objective"])])


@pytest.mark.parametrize("distill, kept", [("", True), (DISTILL, False)])
def test_resume_of_an_auto_run_with_the_objective_it_ran_as_set_keeps_its_stages(tmp_path, capsys, distill, kept):
    """A toy run under auto (no distill follows: branches; a distill follows: guided_compensation), resumed with
    `objective: branches` added to its svd pass (and the distill pass, where there was one, dropped so the svd
    stage is the one compared): kept where auto ran it as branches (was refused: 'the recipe changed since RUN
    was written (passes.0.svd.objective)'), still refused where it ran as guided_compensation (a rerun makes
    another model)."""
    from compress.runner import Runner

    Runner(_recipe(tmp_path / "r.yaml", "", distill), tmp_path / "out", tmp_path / "run").run()
    ran = json.loads((tmp_path / "out" / "report.json").read_text())["svd"]["objective"]
    assert ran == ("branches" if kept else "guided_compensation")
    capsys.readouterr()
    if not kept:
        with pytest.raises(UserError, match=r"^--resume: the recipe changed since .* was written "
                                            r"\(passes\.0\.svd\.objective\); undo the change"):
            _resume(tmp_path, BRANCHES, "")
        return
    _resume(tmp_path, BRANCHES, "")
    said = " ".join("".join(capsys.readouterr()).split())
    assert "its only pass (svd) was done: writing the output again" in said, said
    assert "not kept" not in said, said
