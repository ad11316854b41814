"""compress.recipe_where: where the user gave a recipe's value (file:line, --set), as the recipe
recorded it while it loaded."""

import json
import os

import pytest

from compress.recipe import load_recipe
from compress.recipe_where import recipe_where
from tests.test_io_source import _recipe


def test_recipe_where_finds_nested_keys_and_says_when_the_file_does_not_hold_the_value(tmp_path):
    recipe = _recipe(tmp_path)
    assert recipe_where(recipe, "calibration.prompt_file", "prompts.txt") == f"{recipe.path}:3"
    assert recipe_where(recipe, "calibration.prompt_file", "other.txt") == \
        f"{recipe.path} (--set calibration.prompt_file)"
    os.remove(recipe.path)  # where each key is was recorded as the recipe loaded: the file is not read again
    assert recipe_where(recipe, "teacher", "toy:pixart") == f"{recipe.path}:2"
    assert json.dumps(recipe.teacher)  # the recipe itself is untouched


def test_recipe_where_reads_numbers_as_the_recipe_does(tmp_path):
    """guidance_scale: 7 holds the float 7.0; it was put down to a --set."""
    path = tmp_path / "r.yaml"
    path.write_text("model: pixart\nteacher: toy:pixart\ncalibration:\n  guidance_scale: 7\n  sample_steps: 0x14\n"
                    "passes:\n  - distill: {steps: 1}\n")
    recipe = load_recipe(path)
    assert recipe_where(recipe, "calibration.guidance_scale", 7.0) == f"{path}:4"
    assert recipe_where(recipe, "calibration.sample_steps", 20) == f"{path}:5"
    assert recipe_where(recipe, "calibration.guidance_scale", 3.5) == f"{path} (--set calibration.guidance_scale)"


@pytest.mark.parametrize("overrides, where", [
    (["calibration.prompt_file=prompts.txt"], "r.yaml (--set calibration.prompt_file)"),  # the file's value
    (["calibration={source: pipeline, prompt_file: prompts.txt}"], "r.yaml (--set calibration.prompt_file)"),
    ([], "r.yaml:3"),
])
def test_recipe_where_knows_a_set_that_gives_the_files_own_value(tmp_path, overrides, where):
    """The recipe records where each key was given as it loads: a --set of the value the file has is
    still the --set (comparing values put it down to the file's line), and the file is not read again."""
    recipe = _recipe(tmp_path, overrides=overrides)
    os.remove(recipe.path)
    assert recipe_where(recipe, "calibration.prompt_file", "prompts.txt") == f"{tmp_path}/{where}"
    if overrides:
        recipe = _recipe(tmp_path, overrides=["teacher=toy:pixart"])
        assert recipe_where(recipe, "teacher", "toy:pixart") == f"{recipe.path} (--set teacher)"
