"""compress.runner_checks.check_objective: svd.objective guided (or a part of it) where the recipe tells that
its calibration inputs hold no input's two classifier-free-guidance rows, refused by the checks before any
pass runs (plan's and run's), not when the svd pass starts after the passes before it."""

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.plan import make_plan
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_pixart

RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {calibration}
passes:
  - importance: {{}}
  - svd:
      targets: [attention]
      ratio: 0.5
      objective: {objective}
"""
NEEDS = ("svd.objective {objective} needs calibration inputs holding both classifier-free-guidance branches of "
         "each input, and ")
NO_BRANCHES = ("calibration.cfg_branches is false (the inputs hold the prompt's branch alone): set "
               "calibration.cfg_branches: true, or svd.objective: branches")


def _recipe(calibration: str, objective: str = "guided_compensation"):
    return parse_recipe(RECIPE.format(calibration=calibration, objective=objective), "rec/o.yaml")


def test_plan_refuses_a_guided_objective_on_inputs_without_cfg_branches():
    """A toy recipe with calibration.cfg_branches: false: the svd pass refused it only when it started,
    after importance (and any removal) ran, and plan said nothing."""
    with pytest.raises(UserError) as e:
        make_plan(_recipe("{cfg_branches: false}"))
    assert str(e.value) == "rec/o.yaml:9: " + NEEDS.format(objective="guided_compensation") + NO_BRANCHES


def test_a_run_refuses_it_before_its_first_pass(tmp_path, monkeypatch):
    from compress.passes.importance import ImportancePass
    from compress.runner import Runner

    monkeypatch.setattr(ImportancePass, "run", lambda *a, **k: pytest.fail("a pass ran before the refusal"))
    with pytest.raises(UserError, match=r"^rec/o\.yaml:9: svd\.objective guided_compensation needs calibration"):
        Runner(_recipe("{cfg_branches: false}"), tmp_path / "out", tmp_path / "run").run()


@pytest.mark.parametrize("calibration, why", [
    ("{source: synthetic}", "calibration.source synthetic draws random inputs, no such pairs: set svd.objective: "
                            "branches"),
    ("{source: pipeline, pipeline: 'toy:pixart', prompts: [a, b], guidance_scale: 1}",
     "calibration.guidance_scale 1 turns classifier-free guidance off: set calibration.guidance_scale above 1, "
     "or svd.objective: branches"),
    ("{source: pipeline, pipeline: 'toy:pixart', prompts: [a, b], cfg_branches: false}", NO_BRANCHES),
])
def test_each_source_that_draws_no_pairs_is_refused_by_plan(calibration, why):
    with pytest.raises(UserError) as e:
        make_plan(_recipe(calibration, "guided"))
    assert str(e.value) == "rec/o.yaml:9: " + NEEDS.format(objective="guided") + why


def test_a_pipeline_that_runs_one_branch_is_refused_and_the_sets_are_named():
    """FluxPipeline samples one branch whatever the recipe says (`single`); the --set that chose the
    objective, or the calibration key's that took the branches away, is named with the line."""
    teacher = tiny_pixart()
    recipe = parse_recipe(RECIPE.format(calibration="{}", objective="branches"), "rec/o.yaml",
                          overrides=["passes.1.svd.objective=guided_fisher"])
    with pytest.raises(UserError) as e:
        check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "pipeline",
                     recipe.calibration, single=True)
    assert str(e.value) == ("rec/o.yaml (--set passes.1.svd.objective=guided_fisher): "
                            + NEEDS.format(objective="guided_fisher") + "FluxPipeline runs one branch per step "
                            "(FLUX.1-dev takes guidance as an input, FLUX.1-schnell samples unguided): set "
                            "svd.objective: branches")
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "pipeline",
                 recipe.calibration, single=False)  # PixArt's pipeline samples both: its records tell
    recipe = parse_recipe(RECIPE.format(calibration="{}", objective="guided"), "rec/o.yaml",
                          overrides=["calibration.cfg_branches=false"])
    with pytest.raises(UserError) as e:
        check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "toy", recipe.calibration)
    assert str(e.value) == ("rec/o.yaml:9 (with --set calibration.cfg_branches=false): "
                            + NEEDS.format(objective="guided") + NO_BRANCHES)


def test_both_branches_or_the_default_objective_plan(capsys):
    assert make_plan(_recipe("{}"))["passes"][1]["pass"] == "svd"
    assert make_plan(_recipe("{cfg_branches: false}", "branches"))["passes"][1]["pass"] == "svd"


def test_an_odd_toy_batch_size_that_splits_the_pairs_is_refused_by_plan():
    """calibration.batch_size 5 with cfg_branches: true passed plan; the run refused at the svd pass, after the
    passes before it, telling the user to set calibration.cfg_branches: true, which was set: the toy source cuts
    its interleaved rows u0, c0, u1, c1, … into batches of 5, splitting an input's two branches."""
    with pytest.raises(UserError) as e:
        make_plan(_recipe("{num_prompts: 6, timesteps: 2, batch_size: 5}"))
    assert str(e.value) == ("rec/o.yaml:9: " + NEEDS.format(objective="guided_compensation")
                            + "calibration.batch_size 5 is odd (a batch would split an input's two branches): set "
                              "an even calibration.batch_size, or svd.objective: branches")
    assert make_plan(_recipe("{num_prompts: 6, timesteps: 2, batch_size: 4}"))["passes"][1]["pass"] == "svd"
    assert make_plan(_recipe("{num_prompts: 1, timesteps: 2, batch_size: 5}"))["passes"][1]["pass"] == "svd"
    assert make_plan(_recipe("{num_prompts: 6, timesteps: 2, batch_size: 5}", "branches"))
