"""compress.passes.svd_targets: which layers the svd pass targets, their shapes, fixed ranks and
statistics (the output-Gram path, one Gram per embedding)."""

import pytest

from compress.arch import get_adapter
from compress.passes import svd_targets
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_targets import shape_spec
from tests.conftest import tiny_pixart
from tests.passes.svd_helpers import run_svd

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flux_output_gram_path(tmp_path, monkeypatch):
    monkeypatch.setattr(svd_targets, "OUTPUT_GRAM_MIN_IN", 32)  # tiny single proj_out: in 48, out 16
    _, report, _ = run_svd("flux", tmp_path, targets=["re:single_transformer_blocks\\.\\d+\\.proj_out"])
    assert len(report["layers"]) == 3
    for rec in report["layers"].values():
        assert rec["rank"] != "dense" and rec["loss_ratio"] <= 1.001


def test_plan_exact_for_uniform_later_for_global():
    model = tiny_pixart()
    adapter = get_adapter(model)
    plan = SVDPass(SVDConfig(multiple=2)).plan(model, adapter)
    assert plan["params_after"] < plan["params_before"]
    assert plan["ranks"]["transformer_blocks.0.ff.net.0.proj"] == 6  # 0.5·64·16/80 = 6.4 -> multiple of 2
    plan = SVDPass(SVDConfig(allocation="global")).plan(model, adapter)
    assert plan["params_after"] == "decided after calibration"


def test_a_layer_without_bias_is_counted_without_one():
    """Budgets and plans count each target's own parameters: a layer without bias has none to keep."""
    from compress.alloc import DENSE

    model = tiny_pixart()
    model.get_submodule("transformer_blocks.0.attn1.to_q").bias = None
    adapter = get_adapter(model)
    targets = [i for i in adapter.linears(model) if i.role == "attention"]
    plan = SVDPass(SVDConfig(targets=["attention"], multiple=2)).plan(model, adapter)
    assert plan["params_before"] == sum(p.numel() for i in targets
                                        for p in model.get_submodule(i.name).parameters())
    assert shape_spec(targets[0]).params(3) == 3 * (targets[0].in_features + targets[0].out_features)
    assert shape_spec(targets[0]).params(DENSE) == targets[0].in_features * targets[0].out_features


def test_embedding_targets_each_get_their_own_gram(tmp_path):
    model, report, _ = run_svd("flux", tmp_path, targets=["embedding"])
    assert "time_text_embed.text_embedder.linear_1" in report["layers"]
    assert all(r.get("loss_ratio", 1.0) <= 1.001 for r in report["layers"].values())
