"""compress/recipe_yaml.py: how recipes and --set values read YAML (the parts not tested through
tests/test_recipe.py)."""

import pytest
import yaml

from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.recipe_yaml import RecipeLoader

FLUX = """\
model: flux
teacher: toy:flux
calibration: {num_prompts: 2, timesteps: 2}
passes:
  - remove_blocks: COUNT
"""


def _error(text: str, overrides=()) -> str:
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(overrides))
    return str(e.value)


@pytest.mark.parametrize("written, key, meant", [
    ("{count: {double:1}}", "double:1", "double: 1"),
    ("{count:1}", "count:1", "count: 1"),
    ("{count: {double: 1, single:2}}", "single:2", "single: 2"),
])
def test_a_key_without_a_space_after_its_colon_is_named_with_the_spelling_meant(written, key, meant):
    """count: {double:1} read as the key 'double:1' with the value null: 'count.double:1 must be an
    integer, not null' (or 'unknown key count:1') said nothing of the missing space (a tester's finding)."""
    said = f"no space after ':' in '{key}', which YAML reads as the key '{key}' without a value; write '{meant}'"
    assert _error(FLUX.replace("COUNT", written)) == f"r.yaml:5: malformed YAML ({said})"
    set_error = _error(FLUX.replace("COUNT", "{count: 1}"), [f"passes.0.remove_blocks={written}"])
    assert set_error.startswith(f"r.yaml (--set passes.0.remove_blocks={written}): ") and said in set_error


def test_a_text_where_a_mapping_was_wanted_hints_the_space_it_lacks():
    """count: single:1 (or a block mapping's line without its space) is a string: the union's error
    says how to write the mapping meant; a quoted one was meant as text, and gets no hint."""
    error = _error(FLUX.replace("COUNT", "{count: 1}"), ["passes.0.remove_blocks.count=single:1"])
    assert error.endswith("not 'single:1' (a mapping needs a space after ':': write {single: 1}); count is over "
                          "all blocks or per block group: count: 1, count: {blocks: 1} (PixArt) or "
                          "count: {double: 1, single: 1} (Flux)")
    block = _error(FLUX.replace("COUNT", "\n      count:\n        double:1"))
    assert block.startswith("r.yaml:7: ") and "not 'double:1' (a mapping needs a space after ':': write {double: 1})" in block
    quoted = _error(FLUX.replace("COUNT", "{count: 1}"), ["passes.0.remove_blocks.count='single:1'"])
    assert "not 'single:1'; count is over" in quoted


def test_keys_with_a_colon_are_still_read_where_they_are_quoted_or_hold_a_value():
    assert yaml.load("{'a:1': null, b:2: 3, c: d:e, f: http://x}", Loader=RecipeLoader) == {
        "a:1": None, "b:2": 3, "c": "d:e", "f": "http://x"}
    assert yaml.load("teacher: toy:flux", Loader=RecipeLoader) == {"teacher": "toy:flux"}
