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


def _meta_flux():
    from compress.plan import meta_model

    return meta_model("black-forest-labs/FLUX.1-dev")


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_flux_lite_plan_counts_exactly():
    """8 double blocks removed: exactly 8 double blocks' parameters fewer (blocks are equal)."""
    plan = make_plan(load_recipe(RECIPES[0].parent / "flux-dev-lite.yaml"))
    per_block = _params(_meta_flux().transformer_blocks[0])
    assert plan["blocks_after"] == {"double": 11, "single": 38}
    assert plan["params_after_planned"] == FULL_SIZE["flux"] - 8 * per_block


def test_flux_modulation_plan_counts_exactly():
    """Every modulation linear at the uniform rank for 10% of its parameters, rounded to 16."""
    from compress.arch import get_adapter

    model = _meta_flux()
    saved = 0
    for info in get_adapter(model).linears(model):
        if info.role == "modulation":
            m, n = info.out_features, info.in_features
            rank = max(16, round(0.1 * m * n / (m + n) / 16) * 16)
            saved += m * n - rank * (m + n)
    plan = make_plan(load_recipe(RECIPES[0].parent / "flux-dev-modulation.yaml"))
    assert plan["params_after_planned"] == FULL_SIZE["flux"] - saved
    assert plan["by_role_after"]["modulation"] < 0.11 * plan["by_role_before"]["modulation"]


def test_flux_stream_plan_says_what_is_resident():
    """The streamed Flux recipe holds the top level and the largest block: a few % of the teacher."""
    from compress.errors import UserError
    from compress.recipe import parse_recipe

    path = RECIPES[0].parent / "flux-dev-stream.yaml"
    plan = make_plan(load_recipe(path))
    model = _meta_flux()
    top = _params(model) - _params(model.transformer_blocks) - _params(model.single_transformer_blocks)
    assert plan["stream"] == {"top_level_params": top,
                              "largest_block_params": _params(model.transformer_blocks[0]),
                              "resident_params": top + _params(model.transformer_blocks[0])}
    assert plan["stream"]["resident_params"] < 0.05 * FULL_SIZE["flux"]
    text = path.read_text().replace("fisher: block\n      ratio: 0.6", "fisher: all\n      ratio: 0.6")
    with pytest.raises(UserError, match=r"flux-dev-stream\.yaml:\d+: svd\.fisher: all needs the whole model"):
        make_plan(parse_recipe(text, str(path)))
