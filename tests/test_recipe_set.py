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


ALIASED = """\
model: pixart
teacher: toy:pixart
passes:
  - svd: {targets: &t [attention], multiple: 8}
  - distill: &d {steps: 200, batch_size: 4}
  - svd: {targets: [mlp], ignore: *t, multiple: 8}
  - distill: *d
"""


def test_a_set_into_an_aliased_node_changes_that_place_alone():
    """`- distill: *d` shares its node with `&d`: a --set into one pass wrote into both (steps 10 on
    each distill pass, silently). The --set's path is copied; the file's lines stay its errors' lines."""
    r = parse_recipe(ALIASED, "r.yaml", ["passes.3.distill.steps=10", "passes.0.svd.targets.0=cross_attention"])
    assert [p.config.steps for p in r.passes[1::2]] == [200, 10]
    assert r.passes[0].config.targets == ["cross_attention"] and r.passes[2].config.ignore == ["attention"]
    assert r.passes[3].keys["batch_size"].where() == "r.yaml:5"  # the anchor's line, copied along
    r = parse_recipe(ALIASED, "r.yaml", ["passes.2.svd.ignore.0=mlp"])
    assert r.passes[0].config.targets == ["attention"] and r.passes[2].config.ignore == ["mlp"]
    assert parse_recipe(ALIASED, "r.yaml").passes[3].config.steps == 200


def test_an_option_set_without_its_pass_name_points_at_the_passes_that_have_it():
    """`--set passes.0.ratio=0.4` on a remove_blocks pass pointed at passes.0.remove_blocks.ratio,
    itself an unknown key: the passes that have a `ratio` are named instead."""
    text = RECIPE.replace("passes:\n", "passes:\n  - remove_blocks: {count: 1}\n")
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.0.ratio=0.4"])
    assert str(e.value) == ("--set passes.0.ratio: passes.0 is a remove_blocks pass; it has no option 'ratio' "
                            "(set passes.1.svd.ratio or passes.2.svd.ratio)")
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.0.bogus=1"])
    assert str(e.value) == "--set passes.0.bogus: passes.0 is a remove_blocks pass; no pass of the recipe has an option 'bogus'"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.1.ratio=0.4"])
    assert str(e.value) == "--set passes.1.ratio: passes.1 is an svd pass; its options are set as passes.1.svd.ratio"
