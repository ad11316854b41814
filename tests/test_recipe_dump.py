"""A recipe dumped (recipe_dump.dump_recipe: an output's recipe.yaml) reads back as it was: the header of the
--set values it was run with, the '# default' marks of the keys the recipe left out, a recipe saved
before the marks and every shipped recipe's output. Strict recipes: tests/test_recipe.py."""

import re
from pathlib import Path

import pytest
import yaml

from compress.recipe import load_recipe, parse_recipe
from compress.recipe_dump import dump_recipe
from compress.recipe_yaml import MARKS_HEADER
from tests.test_recipe import GOOD


def test_a_dumped_recipe_without_a_set_has_no_sets_header_and_one_with_sets_names_each_once():
    text = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5}\n"
    first, second = dump_recipe(parse_recipe(text, "r.yaml")).splitlines()[:2]
    assert first == MARKS_HEADER and not second.startswith("#")  # the marks' line alone
    sets = ["passes.0.svd.ratio=0.4", "calibration={num_prompts: 4, timesteps: 2}"]
    dumped = dump_recipe(parse_recipe(text, "r.yaml", sets))
    header = [line for line in dumped.splitlines() if line.startswith("#   --set ")]
    assert sorted(header) == sorted(f"#   --set {s}" for s in sets)  # the mapping's two keys: one line
    assert "comes first" not in dumped  # no ranks pattern was set
    again = parse_recipe(dumped, "again.yaml")
    assert again.passes[0].config.ratio == 0.4 and again.calibration.num_prompts == 4


def test_a_dumped_recipe_marks_the_keys_the_defaults_filled_in_and_reads_them_back():
    """An output's recipe.yaml writes every key: '# default' ends the line of each the recipe left out,
    under a first line saying so; read back, those are not written keys (the config's `_given`), the
    resolved recipe (what --resume compares) is the same, and a dump of it is the same file."""
    text = ("model: pixart\nteacher: toy:pixart\nstream: false\ncalibration: {seed: 3}\n"
            "passes:\n  - svd: {ratio: 0.5, targets: [attention]}\n  - importance\n")
    recipe = parse_recipe(text, "r.yaml")
    dumped = dump_recipe(recipe)
    lines = dumped.splitlines()
    assert lines[0] == MARKS_HEADER
    for line in ("version: 1  # default", "stream: false", "device: auto  # default", "  seed: 3",
                 "  timesteps: 8  # default", "    ratio: 0.5", "    targets:", "    center:  # default",
                 "    ranks: {}  # default", "    buckets: 3  # default", "  dtype: float32  # default"):
        assert line in lines, line
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert again.raw == recipe.raw and dump_recipe(again) == dumped
    svd = again.passes[0].config
    assert svd._given == {"ratio", "targets"} and "energy" in svd._filled
    assert again.calibration._given == {"seed"} and again.passes[1].config._given == set()
    assert yaml.safe_load(dumped) == recipe.raw  # a plain YAML reader sees no marks


def test_a_saved_recipes_calibration_keys_marked_default_are_not_given():
    """calibration.num_prompts filled in by its default (marked) is not the recipe's: a pipeline source
    of an edited saved recipe reads all its prompts, as the recipe that left it out did."""
    saved = parse_recipe(dump_recipe(parse_recipe(GOOD.replace("  num_prompts: 4\n", ""), "r.yaml")), "o.yaml")
    assert not saved.calibration.given("num_prompts") and saved.calibration.given("timesteps")
    assert parse_recipe(dump_recipe(parse_recipe(GOOD, "r.yaml")), "o.yaml").calibration.given("num_prompts")


def test_the_prompts_a_dump_inlines_are_not_marked_default(tmp_path):
    """The pipeline source's prompts a dump writes inline are the dump's, not defaults; num_prompts
    stays as the recipe had it (left out: marked, and read back not given: all the prompts, as run)
    and prompt_file: null is marked (tests/test_recipe_dump_resume.py)."""
    from compress.calib_pipeline import read_prompts

    (tmp_path / "p.txt").write_text("a red fox\na blue car\n")
    text = GOOD.replace("  num_prompts: 4\n", "  prompt_file: p.txt\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    dumped = dump_recipe(recipe, read_prompts(recipe.calibration, tmp_path))
    assert "  num_prompts: 10  # default\n" in dumped and "  prompt_file: null  # default\n" in dumped
    assert "  - a blue car\n" in dumped
    assert not parse_recipe(dumped, "o.yaml").calibration.given("num_prompts")


# an output's recipe.yaml saved before the '# default' marks: no header, every svd key written
OLD_SAVED = """\
version: 1
model: pixart
teacher: toy:pixart
calibration:
  num_prompts: 4
  timesteps: 4
passes:
- svd:
    targets:
    - modulation
    ignore: []
    method: whitened
    alpha: 0.5
    allocation: uniform
    ratio: 0.5
    ratios: null
    energy: 0.99
    sensitivity: null
    sensitivity_batches: 2
    trust_region: 2.0
    multiple: 16
    ranks:
      modulation: 8
    center:
    - modulation
    progress: true
"""


def _old_style(dumped: str) -> str:
    """A dumped recipe as an output saved before the marks wrote it: no header, no '# default'."""
    return re.sub(r"  # default$", "", dumped.replace(MARKS_HEADER + "\n", ""), flags=re.M)


def test_the_output_of_a_recipe_saved_before_the_marks_loads_again():
    """Rerunning an older output's recipe.yaml wrote it back under the marks' header without a mark:
    every key counted as written, and its energy: 0.99 under allocation: uniform was refused ('svd.energy
    is only read by allocation: energy') by plan, eval and run of the new output. Its svd pass, judged
    by its values, is dumped with each key at its default marked, so read back it is judged alike."""
    dumped = dump_recipe(parse_recipe(OLD_SAVED, "old/recipe.yaml"))
    lines = dumped.splitlines()
    assert lines[0] == MARKS_HEADER
    for line in ("    energy: 0.99  # default", "    ratio: 0.5  # default", "    trust_region: 2.0  # default",
                 "    allocation: uniform  # default", "  num_prompts: 4", "  seed: 0  # default"):
        assert line in lines, line
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert dump_recipe(again) == dumped and again.raw == parse_recipe(OLD_SAVED, "old/recipe.yaml").raw


@pytest.mark.parametrize("opening", ["\n", "---\n", "\n\n# edited\n---\n", "%YAML 1.2\n---\n"])
def test_a_saved_recipe_with_lines_above_its_header_is_read_for_marks(opening):
    """A blank first line or a '---' above the header made the file read as one without marks: its
    '# default' keys counted as written (num_prompts: a pipeline source read only that many prompts)."""
    dumped = dump_recipe(parse_recipe(GOOD.replace("  num_prompts: 4\n", ""), "r.yaml"))
    saved = parse_recipe(opening + dumped, "o.yaml")
    assert not saved.calibration.given("num_prompts") and saved.calibration.given("timesteps")
    assert dump_recipe(saved) == dumped


def test_the_header_below_a_key_is_no_header():
    text = "model: pixart\n" + MARKS_HEADER + "\nteacher: toy:pixart\ncalibration:\n  num_prompts: 4  # default\n" \
           "passes: [importance]\n"
    assert parse_recipe(text, "r.yaml").calibration.given("num_prompts")


SHIPPED = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipes_output_loads_again_saved_either_way(path):
    """A shipped recipe's output recipe.yaml loads; so does it written as before the marks (no header
    or marks), and the output of a rerun of that: each dump reads back to the same resolved recipe."""
    recipe = load_recipe(path)
    dumped = dump_recipe(recipe)
    for text in (dumped, _old_style(dumped), "\n" + dumped, dumped.split("\n", 1)[1]):
        again = parse_recipe(text, str(path))
        rerun = parse_recipe(dump_recipe(again), str(path))
        assert again.raw == rerun.raw == recipe.raw
