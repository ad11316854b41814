"""Every shipped recipe parses, validates and plans; real-model recipes plan against the full-size
configs on the meta device (no weights, no network) with exact parameter counts."""

from pathlib import Path

import pytest

from compress.plan import make_plan
from compress.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
FULL_SIZE = {"pixart": 610_856_096, "flux": 11_901_408_320}  # PixArt-Σ XL-2 1024, Flux.1-dev


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"toy-pixart.yaml", "toy-flux.yaml"} <= names
    assert any(n.startswith("pixart-sigma-") for n in names)
    assert sum(n.startswith("flux-dev-") for n in names) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_plans(path):
    recipe = load_recipe(path)
    plan = make_plan(recipe)
    assert [s["pass"] for s in plan["passes"]] == [p.name for p in recipe.passes]
    if not recipe.teacher.startswith("toy:"):
        assert plan["params_before"] == FULL_SIZE[recipe.model]
