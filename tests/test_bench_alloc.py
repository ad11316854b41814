"""tools/bench_alloc.py: the recipes it runs are the shipped ones cut after their attention/MLP svd pass."""

import pytest

from compress.recipe import load_recipe, parse_recipe
from tools import bench_alloc as tool


@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_trimmed_recipe_ends_at_the_svd_pass_the_table_reads(name):
    path = tool.RECIPES / f"{name}.yaml"
    full, cut = load_recipe(path), parse_recipe(tool.trimmed(path.read_text()), "cut.yaml")
    assert [p.name for p in cut.passes] == [p.name for p in full.passes][: tool.SVD + 1]
    assert cut.passes[tool.SVD].name == "svd" and cut.passes[tool.SVD].config == full.passes[tool.SVD].config
    assert cut.calibration == full.calibration and cut.export == full.export
