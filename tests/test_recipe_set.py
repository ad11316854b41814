"""compress.recipe_set: where a --set goes in a recipe's tree, and what it says where it cannot go."""

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe

RECIPE = """\
model: pixart
teacher: toy:pixart
passes:
  - svd: {targets: [attention, mlp], ignore: []}
  - svd: {targets: [modulation]}
  - distill: {steps: 2}
"""


@pytest.mark.parametrize("override, words", [
    ("passes.9.svd.ratio=0.4", "'9' is not an index of that list (passes has 3 items: 0–2)"),
    ("passes.x.svd.ratio=0.4", "'x' is not an index of that list (passes has 3 items: 0–2)"),
    ("passes.0.svd.targets.2=mlp", "'2' is not an index of that list (passes.0.svd.targets has 2 items: 0–1)"),
    ("passes.1.svd.targets.1=mlp", "'1' is not an index of that list (passes.1.svd.targets has 1 item: 0)"),
    ("passes.0.svd.ignore.0=mlp", "'0' is not an index of that list (passes.0.svd.ignore is empty)"),
])
def test_an_index_past_a_list_says_the_indices_it_has(override, words):
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == f"--set {override.partition('=')[0]}: {words}"
