"""An output's recipe.yaml run again (recipe_dump.dump_recipe, runner_resume): it reads the prompts the run
read, --resume takes it for the recipe it was saved from and its calibration statistics are keyed
alike (the fingerprint); '# default' marks the prompt keys the recipe left out."""

import hashlib
import json
from pathlib import Path

import pytest

from compress.calib_prompts import read_prompts
from compress.recipe import load_recipe, parse_recipe
from compress.recipe_dump import dump_recipe
from compress.runner import build_passes
from compress.runner_resume import fingerprint, inputs_change, recipe_changes

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))

PIPELINE = """\
model: pixart
teacher: some/pipeline
calibration:
  source: pipeline
{calibration}passes:
  - svd: {{targets: [mlp], ratio: 0.5}}
"""

# (the recipe's calibration keys, the prompt file's lines or None)
SOURCES = {
    "inline": ("  prompts: [a red fox, a blue car, a green tree]\n", None),
    "inline, num_prompts cuts": ("  prompts: [a red fox, a blue car, a green tree]\n  num_prompts: 2\n", None),
    "inline, num_prompts above": ("  prompts: [a red fox, a blue car]\n  num_prompts: 10\n", None),
    "prompt_file": ("  prompt_file: p.txt\n", "a red fox\na blue car\na green tree\n"),
    "both, num_prompts cuts": ("  prompts: [a cat]\n  prompt_file: p.txt\n  num_prompts: 3\n",
                               "a red fox\na blue car\na green tree\n"),
}


def _inputs(prompts: list[str] | None) -> dict | None:
    """A pipeline source's inputs identity (calib_pipeline.inputs_identity) of `prompts`; None: none read."""
    if prompts is None:
        return None
    return {"prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16], "pipeline": None}


def _saved_and_rerun(recipe, prompts, folder: Path):
    """The output's recipe.yaml of a run of `recipe` whose source read `prompts`, loaded back from
    another folder (the prompt file is not beside it)."""
    out = folder / "out"
    out.mkdir(exist_ok=True)
    (out / "recipe.yaml").write_text(dump_recipe(recipe, prompts))
    return load_recipe(out / "recipe.yaml")


def _same_run(recipe, saved, prompts):
    """The saved recipe reads the prompts the run read, --resume finds no change, the same fingerprint."""
    again = read_prompts(saved.calibration) if prompts is not None else None
    assert again == prompts
    assert recipe_changes(recipe.raw, saved.raw, build_passes(recipe)) == []
    assert fingerprint("t", "w", saved, _inputs(again)) == fingerprint("t", "w", recipe, _inputs(prompts))


@pytest.mark.parametrize("recipe_path", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_recipes_saved_recipe_is_the_same_run(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    pipeline = not recipe.teacher.startswith("toy:")
    prompts = read_prompts(recipe.calibration, recipe_path.parent) if pipeline else None
    _same_run(recipe, _saved_and_rerun(recipe, prompts, tmp_path), prompts)


@pytest.mark.parametrize("name", SOURCES)
def test_a_pipeline_recipes_saved_recipe_is_the_same_run(name, tmp_path):
    """Its prompts (a prompt file's lines too, cut to num_prompts where the recipe sets it) written
    inline: `dit-compress run OUT/recipe.yaml --resume` in the run folder was refused ('the recipe
    changed since RUN was written (calibration.num_prompts)'), and the statistics were keyed anew."""
    calibration, lines = SOURCES[name]
    if lines is not None:
        (tmp_path / "p.txt").write_text(lines)
    recipe = parse_recipe(PIPELINE.format(calibration=calibration), str(tmp_path / "r.yaml"))
    prompts = read_prompts(recipe.calibration, tmp_path)
    saved = _saved_and_rerun(recipe, prompts, tmp_path)
    _same_run(recipe, saved, prompts)
    assert saved.calibration.given("num_prompts") == ("num_prompts" in calibration)


def test_the_saved_recipes_prompt_keys_the_recipe_left_out_are_marked_default(tmp_path):
    """num_prompts and prompt_file: null, which the recipe did not write, end in '# default' (they were
    written unmarked, as if the recipe had); a prompt added to the saved recipe is used (num_prompts
    was its prompt count, which cut the added one off)."""
    (tmp_path / "p.txt").write_text("a red fox\na blue car\n")
    recipe = parse_recipe(PIPELINE.format(calibration="  prompt_file: p.txt\n"), str(tmp_path / "r.yaml"))
    dumped = dump_recipe(recipe, read_prompts(recipe.calibration, tmp_path))
    assert "  num_prompts: 10  # default\n" in dumped and "  prompt_file: null  # default\n" in dumped
    assert "  prompts:\n  - a red fox\n  - a blue car\n" in dumped  # the dump wrote them: unmarked
    added = parse_recipe(dumped.replace("  - a blue car\n", "  - a blue car\n  - a green tree\n"), "o.yaml")
    assert read_prompts(added.calibration) == ["a red fox", "a blue car", "a green tree"]


def test_other_prompts_are_still_a_change_for_resume():
    """The prompts read are compared apart from the recipe's keys (a stage's inputs): another prompt
    there is a change --resume names, and another fingerprint."""
    recipe = parse_recipe(PIPELINE.format(calibration="  prompts: [a, b]\n"), "r.yaml")
    was, now = _inputs(["a", "b"]), _inputs(["a", "c"])
    assert "calibration prompts changed" in inputs_change(was, now, "p")
    assert fingerprint("t", "w", recipe, was) != fingerprint("t", "w", recipe, now)
    other = parse_recipe(PIPELINE.format(calibration="  prompts: [a, b]\n  num_prompts: 1\n"), "r.yaml")
    assert recipe_changes(recipe.raw, other.raw, build_passes(recipe)) == ["calibration.num_prompts"]


def test_a_toy_sources_fingerprint_still_holds_its_prompt_keys():
    """The toy and synthetic sources read no prompts and record no inputs: their fingerprint is the one
    older runs gave (their calibration caches kept), every result-bearing key in it, prompts too."""
    toy = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp]}\n"
    assert fingerprint("t", "w", parse_recipe(toy, "r.yaml")) != \
        fingerprint("t", "w", parse_recipe(toy, "r.yaml", ["calibration.prompts=[a]"]))


def test_a_stage_that_records_no_inputs_compares_the_prompt_keys():
    """A stage of a run folder written before the prompts read were recorded (no `inputs`) cannot have
    them compared apart: there --resume compares the recipe's prompts, as it did."""
    from compress.calib_stats import STATS_VERSION
    from compress.runner_resume import reusable_stage

    recipe = parse_recipe(PIPELINE.format(calibration="  prompts: [a, b]\n"), "r.yaml")
    other = parse_recipe(PIPELINE.format(calibration="  prompts: [a, c]\n"), "r.yaml")
    passes = build_passes(recipe)
    recorded = {"recipe": recipe.raw, "inputs": _inputs(["a", "b"]), "statistics": STATS_VERSION}
    assert reusable_stage([(0, recorded)], other.raw, passes) == (0, [])  # inputs_change names it
    older = {"recipe": recipe.raw}
    assert reusable_stage([(0, older)], other.raw, passes) == (None, [(0, ["calibration.prompts.1"])])
