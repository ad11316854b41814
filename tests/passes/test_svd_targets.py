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


CACHED = dict(targets=["attention", "mlp"], multiple=2,
              ranks={"transformer_blocks.0.attn1.to_q": 2, "attention": 4, "transformer_blocks.0.attn1.to_k": 3})


def test_notes_and_plan_reuse_the_targets_check_resolved(monkeypatch):
    """notes (and plan) resolved the targets and ranks again right after check; the same results."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    expected = (SVDPass(SVDConfig(**CACHED)).notes(model, adapter), SVDPass(SVDConfig(**CACHED)).plan(model, adapter))
    calls, linears = [], adapter.linears
    monkeypatch.setattr(adapter, "linears", lambda m: calls.append(m) or linears(m))
    step = SVDPass(SVDConfig(**CACHED))
    step.check(model, adapter)
    assert (step.notes(model, adapter), step.plan(model, adapter)) == expected
    assert len(calls) == 1
    assert [k for k, _ in expected[0]] == ["ranks.transformer_blocks.0.attn1.to_k"]  # shadowed by attention


def test_what_check_resolved_is_redone_when_the_model_changes():
    """Another model, a removed block, a dropped bias or factorized layers: the pass answers as a
    fresh one would."""
    from compress.errors import UserError

    model, other = tiny_pixart(num_layers=3), tiny_pixart(num_layers=2)
    adapter = get_adapter(model)
    step = SVDPass(SVDConfig(**CACHED))
    fresh = lambda m: SVDPass(SVDConfig(**CACHED)).plan(m, adapter)
    step.check(model, adapter)
    assert step.plan(other, adapter) == fresh(other) != fresh(model)
    adapter.remove_blocks(model, {"blocks": [2]})
    assert step.plan(model, adapter) == fresh(model)
    assert not any(t.startswith("transformer_blocks.2.") for t in step.plan(model, adapter)["targets"])
    model.get_submodule("transformer_blocks.1.attn1.to_q").bias = None
    assert step.plan(model, adapter) == fresh(model)
    step.apply_planned(model, adapter)
    with pytest.raises(UserError, match="already factorized"):
        step.check(model, adapter)
