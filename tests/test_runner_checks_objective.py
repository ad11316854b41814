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


# ---- svd.objective auto (the default): resolved by plan and run before their checks (runner_checks_objective) --
AUTO = """\
model: pixart
teacher: toy:pixart
calibration: {calibration}
passes:
  - svd:
      targets: [attention]
      ratio: 0.5
{distill}"""
DISTILL = "  - distill: {data: teacher_samples, num_samples: 8, sample_steps: 1, batch_size: 4, steps: 1}\n"
GUIDED = ("the distill pass at line 8 follows it and its calibration holds both classifier-free-guidance branches "
          "of each input; after distillation it measured 0.94-0.99x branches' conditional and guided errors on the "
          "toy recipes")
NO_DISTILL = ("no distill pass follows it; right after the svd passes guided_compensation measured 1.15-1.47x "
              "branches' conditional error on the toy recipes")


def _auto(calibration: str = "{}", distill: str = DISTILL, path: str = "rec/a.yaml"):
    return parse_recipe(AUTO.format(calibration=calibration, distill=distill), path)


@pytest.mark.parametrize("calibration, distill, runs_as, why", [
    ("{}", DISTILL, "guided_compensation", GUIDED),
    ("{}", "", "branches", NO_DISTILL),
    ("{cfg_branches: false}", DISTILL, "branches",
     "calibration.cfg_branches is false (the inputs hold the prompt's branch alone)"),
    ("{source: synthetic}", DISTILL, "branches", "calibration.source synthetic draws random inputs, no such pairs"),
    ("{num_prompts: 6, timesteps: 2, batch_size: 5}", DISTILL, "branches",
     "calibration.batch_size 5 is odd (a batch would split an input's two branches)"),
    ("{source: pipeline, pipeline: 'toy:pixart', prompts: [a, b], guidance_scale: 1}", DISTILL, "branches",
     "calibration.guidance_scale 1 turns classifier-free guidance off"),
    ("{source: pipeline, pipeline: 'toy:pixart', prompts: [a, b]}", DISTILL, "guided_compensation", GUIDED),
])
def test_plan_resolves_auto_on_each_side_and_says_why(calibration, distill, runs_as, why, capsys):
    """Where an explicit guided_compensation would be refused (no pairs), auto is branches, never a refusal."""
    from compress.plan_words import print_plan

    plan = make_plan(_auto(calibration, distill))
    assert plan["passes"][0]["objective"] == {"given": "auto", "runs_as": runs_as, "why": why}
    capsys.readouterr()
    print_plan(plan)
    said = " ".join(capsys.readouterr().out.split())
    assert f"objective auto runs as {runs_as}: {why}" in said, said


def test_an_explicit_objective_is_not_resolved_nor_said():
    plan = make_plan(parse_recipe(RECIPE.format(calibration="{}", objective="branches"), "rec/o.yaml"))
    assert "objective" not in plan["passes"][1]


def test_a_pipeline_that_runs_one_branch_resolves_auto_to_branches():
    from compress.runner_checks_objective import resolve_objectives

    recipe = _auto()
    passes = build_passes(recipe)
    resolve_objectives(passes, recipe.passes, "pipeline", recipe.calibration, True, False)
    assert passes[0].config.__dict__["_objective"][0] == "branches"
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, True)  # stream: true
    assert passes[0].config.__dict__["_objective"] == ("branches", "stream: true (the prediction's Fisher needs "
                                                                   "the whole model)")


def _resolved(recipe):
    from compress.runner_checks_objective import resolve_objectives

    passes = build_passes(recipe)
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, recipe.stream)
    return passes[0].config.__dict__.get("_objective", (passes[0].config.objective, ""))[0]


def test_saved_recipes_keep_the_objective_they_ran_with(tmp_path):
    """An output's recipe.yaml: one saved since svd.objective existed writes `objective: branches  # default`,
    read as branches (the default it marks is no longer auto's); one saved before writes no objective key, and
    its run weighed by branches: it stays branches. One saved now writes `objective: auto  # default` and
    resolves as the recipe it was dumped from."""
    from compress.recipe_dump import dump_recipe

    dumped = dump_recipe(_auto())
    assert "    objective: auto  # default\n" in dumped, dumped
    assert _resolved(parse_recipe(dumped, "out/recipe.yaml")) == "guided_compensation"
    older = dumped.replace("objective: auto  # default", "objective: branches  # default")
    assert _resolved(parse_recipe(older, "out/recipe.yaml")) == "branches"
    before = dumped.replace("    objective: auto  # default\n", "")
    assert "objective" not in before
    recipe = parse_recipe(before, "out/recipe.yaml")
    assert _resolved(recipe) == "branches"
    unmarked = "\n".join(ln.split("  # default")[0] for ln in before.splitlines() if not ln.startswith("#"))
    assert _resolved(parse_recipe(unmarked, "out/recipe.yaml")) == "branches"  # saved before the marks
    assert _resolved(_auto()) == "guided_compensation"  # a recipe of the user's without the key: auto


def test_resume_of_an_older_run_folder_keeps_a_branches_stage_only_where_auto_runs_it_so():
    """A stage saved before auto records objective: branches (0.1.0's default); the same recipe now reads auto:
    the recipes compare equal (runner_resume_older: a moved default, not the user's change), and check_resumed
    keeps the stage where auto runs the pass as branches, else refuses naming the moved default (no distill
    follows the svd pass here: kept; test_runner_resume_older runs both)."""
    from compress.runner_checks_objective import check_resumed, resolve_objectives
    from compress.runner_resume import STATISTICS, reusable_stage, statistics_version

    recipe = _auto()
    now, stats = recipe.raw, {STATISTICS: statistics_version()}
    before = {**now, "passes": [{"svd": {**now["passes"][0]["svd"], "objective": "branches"}}, now["passes"][1]]}
    passes = build_passes(recipe)
    assert reusable_stage([(0, {"recipe": before, **stats})], now, passes) == (0, [])
    assert reusable_stage([(0, {"recipe": now, **stats})], now, passes)[0] == 0
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, False)
    older = {"report": {"svd": {"passes": [{"objective": "branches"}]}}}  # 0.1.0's summary: no objective_given
    with pytest.raises(UserError) as e:
        check_resumed(passes, recipe.passes, older, 0)
    assert str(e.value) == (
        "--resume: pass 1 was saved by dit-compress 0.1.0, whose svd.objective default was branches (0.2.0's is "
        f"auto, which runs passes.0.svd (line 5) as guided_compensation: {GUIDED}); to keep them, add "
        "`objective: branches` to that svd pass and rerun with --resume; to recompute them, rerun with --restart")
    given = {"report": {"svd": {"passes": [{"objective": "branches", "objective_given": "branches"}]}}}
    with pytest.raises(UserError) as e:  # a stage of 0.2.0 whose recipe set branches, a recipe without it now
        check_resumed(passes, recipe.passes, given, 0)
    assert str(e.value).startswith("--resume: pass 1 was saved with passes.0.svd (line 5) run as branches, which "
                                   "its recipe set; this recipe leaves svd.objective to auto, which runs it as "
                                   f"guided_compensation: {GUIDED}; to keep them, add `objective: branches`"), e.value
    recipe = _auto(distill="")
    passes = build_passes(recipe)
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, False)
    check_resumed(passes, recipe.passes, older, 0)  # auto runs it as branches: kept


def test_resume_refuses_a_saved_auto_stage_that_auto_would_run_otherwise_now():
    """The passes after a saved stage are not compared by --resume, but decide what auto runs an svd pass as: a
    stage of auto run as guided_compensation (a distill followed) resumed by a recipe whose distill is gone
    would keep a model a rerun does not make."""
    from compress.runner_checks_objective import check_resumed, resolve_objectives

    recipe = _auto(distill="")
    passes = build_passes(recipe)
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, False)
    state = {"report": {"svd": {"passes": [{"objective": "guided_compensation", "objective_given": "auto"}]}}}
    with pytest.raises(UserError) as e:
        check_resumed(passes, recipe.passes, state, 0)
    assert str(e.value) == ("--resume: passes.0.svd (line 5) ran as guided_compensation under svd.objective auto, "
                            f"and auto runs it as branches now ({NO_DISTILL}): the passes after an svd pass decide "
                            "what auto runs it as; undo the change to resume, or rerun with --restart to start over")
    state["report"]["svd"]["passes"][0]["objective"] = "branches"
    check_resumed(passes, recipe.passes, state, 0)
    check_resumed(passes, recipe.passes, {}, 0)  # an older stage's report: the recipe comparison decided


@pytest.mark.parametrize("distill, ran", [(DISTILL, "guided_compensation"), ("", "branches")])
def test_a_toy_run_records_what_auto_ran_as(tmp_path, distill, ran):
    import json

    from compress.runner import Runner

    recipe = _auto("{num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4}", distill, str(tmp_path / "r.yaml"))
    out = Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    svd = json.loads((out / "report.json").read_text())["svd"]
    assert (svd["objective"], svd["objective_given"]) == (ran, "auto")
    assert "objective: auto  # default" in (out / "recipe.yaml").read_text()


def test_a_run_of_an_output_recipe_saved_before_the_key_says_it_runs_branches(tmp_path, capsys):
    """An output's recipe.yaml of 0.1.0 before svd.objective existed (1b7225c, 2c1a451: no objective line) runs
    branches, as its run did; plan said so in its pass's lines, run said nothing. Now run says it in one note; a
    user's own recipe without the key (auto) has none."""
    from compress.recipe_dump import dump_recipe
    from compress.runner import Runner

    older = dump_recipe(_auto("{num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4}")).replace(
        "    objective: auto  # default\n", "")
    (tmp_path / "recipe.yaml").write_text(older)
    recipe = parse_recipe(older, str(tmp_path / "recipe.yaml"))
    capsys.readouterr()
    Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    said = " ".join("".join(capsys.readouterr()).split())
    line = older.splitlines().index("- svd:") + 1
    assert (f"note: svd.objective auto runs passes.0.svd (line {line}) as branches: a saved recipe written before "
            "svd.objective existed (it has no objective key), whose run weighed by branches") in said, said
    assert said.count("svd.objective auto runs") == 1, said
    from compress.runner_checks_objective import resolve_objectives, saved_before_notes

    recipe = _auto()
    passes = build_passes(recipe)
    resolve_objectives(passes, recipe.passes, "toy", recipe.calibration, False, False)
    assert saved_before_notes(passes, recipe.passes) == []
