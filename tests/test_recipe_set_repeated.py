"""compress.recipe_set.refuse_repeated: two --sets of one key given the same value go through (R1 stop 52); different
values are refused, naming both (tests/test_recipe_set.py::test_a_key_set_twice_is_refused_naming_both_sets)."""

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from tests.test_recipe_set import RECIPE


@pytest.mark.parametrize("sets", [
    ["calibration.seed=1", "calibration.seed=1"],
    ["calibration.seed=1", "calibration.seed= 1"],
    ["passes.0.svd.ratio=0.4", "passes.0.svd.ratio=0.40", "passes.0.svd.ratio=0.4"],
    ["passes.0.svd.targets=[mlp, attention]", "passes.0.svd.targets=[mlp,attention]"],
    ["calibration={seed: 1}", "calibration={seed: 1}"],
    ["passes.0.svd.ranks.re:a.b=4", "passes.0.svd.ranks.re:a.b=4"],
    ["calibration.seed=null", "calibration.seed=null"],
])
def test_a_key_set_twice_to_the_same_value_goes_through(sets):
    """`--set calibration.seed=1 --set calibration.seed=1` (a script building its --sets) was refused, 'only the
    last one would hold': both hold. It reads as the key set once."""
    assert parse_recipe(RECIPE, "r.yaml", sets) == parse_recipe(RECIPE, "r.yaml", sets[:1])


@pytest.mark.parametrize("sets", [
    ["calibration.seed=1", "calibration.seed=1", "calibration.seed=2"],
    ["calibration.seed=1", "calibration.seed=1.0"],  # another type
    ["calibration.seed=1", "calibration.seed='1'"],
    ["passes.0.svd.targets=[mlp, attention]", "passes.0.svd.targets=[attention, mlp]"],
    ["calibration.seed=null", "calibration.seed=1"],
])
def test_a_key_set_twice_to_another_value_is_still_refused(sets):
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", sets)
    assert str(e.value) == (f"r.yaml (--set {sets[-1]}): --set {sets[0]} set this key too, and only the last one "
                            "would hold: give each key once")
