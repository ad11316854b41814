import re

import pytest
import torch

from compress.alloc import ratio_rank, sensitivity_weight
from compress.arch import get_adapter
from compress.calib import BlockCalibration
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from compress.passes import svd_targets
from compress.passes.base import RunContext, predictions, relative_error
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_global import sensitivities
from compress.passes.svd_layer import swapped_weight
from compress.passes.svd_targets import shape_spec
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

MAKERS = {"pixart": tiny_pixart, "flux": tiny_flux}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(model, tmp_path, fingerprint="fp", n=2):
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(n)]
    return RunContext(adapter=adapter, family=adapter.family, teacher=model, run_dir=tmp_path,
                      calibration_inputs=lambda: batches, fingerprint=fingerprint)


def _run(family, tmp_path, **cfg):
    model = MAKERS[family]()
    ctx = _ctx(model, tmp_path)
    cfg = {"multiple": 2, "modulation_grid": 4, "progress": False, **cfg}
    infos = {i.name: i for i in get_adapter(model).linears(model)}
    SVDPass(SVDConfig(**cfg)).run(model, ctx)
    return model, ctx.report["svd"], infos


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_uniform_replaces_targets_with_right_ranks(family, tmp_path):
    model, report, infos = _run(family, tmp_path, targets=["attention", "mlp", "modulation"])
    layers = report["layers"]
    assert layers and set(layers) == {n for n, i in infos.items()
                                      if i.role in ("attention", "mlp", "modulation")}
    for name, rec in layers.items():
        mod = model.get_submodule(name)
        expected = ratio_rank(shape_spec(infos[name]), 0.5, 2)
        if expected is None:
            assert rec["rank"] == "dense" and isinstance(mod, torch.nn.Linear)
            continue
        assert isinstance(mod, LowRankLinear) and mod.rank == expected == rec["rank"]
        assert rec["loss_ratio"] <= 1.001, (name, rec)
        assert {"role", "shape", "kept_params", "loss", "optimal_loss", "rel_output_error",
                "time_s"} <= set(rec)
    assert report["params_after"] < report["params_before"]
    assert report["fused_gelu"] and all(model.get_submodule(n).activation == "gelu_tanh"
                                        for n in report["fused_gelu"])
    with torch.no_grad():
        out = model(**model_inputs(model), return_dict=False)[0]
    assert torch.isfinite(out).all()


def test_flux_output_gram_path(tmp_path, monkeypatch):
    monkeypatch.setattr(svd_targets, "OUTPUT_GRAM_MIN_IN", 32)  # tiny single proj_out: in 48, out 16
    _, report, _ = _run("flux", tmp_path, targets=["re:single_transformer_blocks\\.\\d+\\.proj_out"])
    assert len(report["layers"]) == 3
    for rec in report["layers"].values():
        assert rec["rank"] != "dense" and rec["loss_ratio"] <= 1.001


@pytest.mark.parametrize("allocation", ["global", "energy"])
def test_adaptive_allocations(allocation, tmp_path):
    energy = {"energy": 0.9} if allocation == "energy" else {}  # elsewhere energy is refused
    _, report, _ = _run("pixart", tmp_path, allocation=allocation, **energy)
    assert all(r.get("loss_ratio", 1.0) <= 1.001 for r in report["layers"].values())
    if allocation == "global":
        g = report["global"]
        assert g["spent_params"] <= g["budget_params"] and g["weights"]
        assert report["params_after"] <= g["budget_params"]
        # the loss model's expected error against uniform: the greedy optimizes it, so not above ~1
        assert 0 < g["predicted_error_vs_uniform"] <= 1.05
        _, plain, _ = _run("pixart", tmp_path / "plain", allocation="global", sensitivity=False)
        assert plain["global"]["predicted_error_vs_uniform"] is None  # no error model without it


def test_svd_and_asvd_methods_are_worse_than_whitened(tmp_path):
    losses = {}
    for method in ("whitened", "svd", "asvd"):
        _, report, _ = _run("pixart", tmp_path / method, method=method, activations="teacher")
        losses[method] = sum(r["loss"] for r in report["layers"].values())
        assert all(r["loss_ratio"] >= 1 - 1e-9 for r in report["layers"].values())
    assert losses["whitened"] < losses["asvd"] and losses["whitened"] < losses["svd"]


def test_layer_without_saving_stays_dense(tmp_path):
    name = "transformer_blocks.0.attn1.to_q"  # 16 x 16: rank 8 saves nothing
    model, report, _ = _run("pixart", tmp_path, ranks={name: 8})
    assert report["layers"][name]["rank"] == "dense" and "dense" in report["layers"][name]["note"]
    assert isinstance(model.get_submodule(name), torch.nn.Linear) and name in report["dense"]


@pytest.mark.parametrize("cfg, message", [
    ({"targets": ["re:no_such_layer"]}, "re:no_such_layer"),
    ({"targets": ["attention"], "ignore": ["bogus"]}, "bogus"),
    ({"targets": ["cross_attention"]}, "cross_attention"),  # Flux has none
    ({"ranks": {"transformer_blocks.0.attn.to_q": 99}}, "outside 1..16"),
    ({"ratio": 1.5}, "ratio"),
    ({"ratio": 0.0}, "ratio"),
    ({"method": "qr"}, "method"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5}}, "mlp"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5, "mlp": 0.5, "modulation": 0.3}},
     "svd.ratios: role(s) modulation match no target (targeted roles: attention, mlp)"),
    ({"allocation": "global", "ratio": 0.02, "multiple": 2}, "svd.ratio 0.02 is below what global"),
    ({"allocation": "global", "trust_region": 0.5}, "trust_region must be ≥ 1"),
    ({"compensate_batches": 0}, "compensate_batches must be an integer ≥ 1"),
    ({"compensate_search": "bisect"}, "compensate_search must be one of walk, ladder"),
    ({"compensate_toward": "student"}, "compensate_toward must be one of teacher, input"),
    ({"compensate_batches": 1.5}, "compensate_batches must be an integer ≥ 1"),
    ({"asymmetric": "yes"}, "asymmetric must be true, false or auto"),
    ({"asymmetric": True, "method": "asvd"}, "asymmetric: true needs method: whitened"),
    ({"compensate": True, "fisher": "none"}, "compensate: true needs method: whitened and the prediction's Fisher"),
    ({"compensate": True, "fisher": "block"}, "fisher: block, where it would do nothing"),
    ({"compensate": True, "method": "svd"}, "this pass has method: svd"),
    ({"asymmetric": True, "activations": "teacher"}, "activations: student"),
    ({"asymmetric_damping": 0}, "asymmetric_damping must be > 0"),
    ({"sequential": "yes"}, "sequential must be true, false or auto"),
    ({"sequential": True, "activations": "teacher"}, "sequential: true needs activations: student"),
    ({"fisher_memory_gb": 0.0}, "fisher_memory_gb must be > 0"),
    ({"center": ["re:["]}, "svd.center: bad regex 're:['"),
    ({"center": [3]}, "svd.center: patterns must be strings"),
    ({"center": ["bogus"]}, "svd.center: pattern 'bogus' matches no linear layer"),
    ({"targets": "attention"}, "svd.targets must be a list of patterns"),
    ({"ranks": {"re:(": 4}}, "svd.ranks: bad regex"),
    ({"allocation": "per_role", "ratios": {"attention": "half", "mlp": 0.5}}, "svd.ratios.attention must be a number"),
    ({"allocation": "per_role", "ratios": {"attention": True, "mlp": 0.5}}, "svd.ratios.attention must be a number"),
    ({"allocation": "per_role", "ratios": {"atention": 0.5, "mlp": 0.5}}, "unknown role 'atention'; did you mean 'attention'"),
    ({"allocation": "per_role"}, "svd.ratios (role -> kept-parameter ratio) is required"),
    ({"ratios": {"attention": 0.5}}, "svd.ratios is only read by allocation: per_role (this pass has allocation: uniform)"),
    ({"allocation": "global", "ratios": {"attention": 0.5}}, "this pass has allocation: global"),
    ({"energy": 0.5}, "svd.energy is only read by allocation: energy (this pass has allocation: uniform)"),
    ({"allocation": "energy", "energy": 1.5}, "svd.energy must be in (0, 1]"),
    ({"fisher_probes": 0}, "svd.fisher_probes must be an integer ≥ 1"),
    ({"fisher_probes": -2}, "svd.fisher_probes must be an integer ≥ 1"),
    ({"sensitivity_batches": 0}, "svd.sensitivity_batches must be an integer ≥ 1"),
    ({"modulation_grid": -1}, "svd.modulation_grid must be an integer ≥ 0"),
    ({"alpha": -0.5}, "svd.alpha (asvd's scaling exponent) must be ≥ 0"),
    ({"fisher_damping": -1e-3}, "svd.fisher_damping must be > 0"),
    ({"fisher_damping": 0.0}, "svd.fisher_damping must be > 0"),
    ({"method": "asdv"}, "did you mean 'asvd'"),
])
def test_bad_config_is_user_error(cfg, message):
    model = tiny_flux()
    with pytest.raises(UserError, match=re.escape(message)):
        SVDPass(SVDConfig(**cfg)).check(model, get_adapter(model))


def test_zero_modulation_grid_and_alpha_stay_allowed():
    """0 keeps its documented meaning: modulation Grams on the calibration's own timesteps; alpha 0: plain
    scaling-free asvd."""
    model = tiny_flux()
    SVDPass(SVDConfig(modulation_grid=0, alpha=0.0, method="asvd")).check(model, get_adapter(model))


def test_centering_a_layer_without_bias_is_user_error():
    model = tiny_pixart()
    name = "transformer_blocks.0.attn1.to_q"
    model.get_submodule(name).bias = None  # where would the mean error go?
    with pytest.raises(UserError, match="to_q has no bias"):
        SVDPass(SVDConfig(center=["attention"])).check(model, get_adapter(model))
    SVDPass(SVDConfig(center=["mlp"])).check(model, get_adapter(model))  # other layers are fine


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


def test_calibration_cache_hit_skips_recomputation(tmp_path, monkeypatch):
    calls = {"n": 0}
    run = BlockCalibration._run

    def counting(self, block, readers, keep):
        calls["n"] += bool(readers)
        return run(self, block, readers, keep)

    monkeypatch.setattr(BlockCalibration, "_run", counting)
    _run("pixart", tmp_path, activations="teacher")
    first = calls["n"]
    model, report, _ = _run("pixart", tmp_path, activations="teacher", ratio=0.25)
    assert first == 3 and calls["n"] == first  # no block recomputed its stats
    assert len(report["cache_hits"]) == 3


def test_embedding_targets_each_get_their_own_gram(tmp_path):
    model, report, _ = _run("flux", tmp_path, targets=["embedding"])
    assert "time_text_embed.text_embedder.linear_1" in report["layers"]
    assert all(r.get("loss_ratio", 1.0) <= 1.001 for r in report["layers"].values())


def test_singular_gram_is_clamped_and_reported(tmp_path):
    """Calibration inputs that span fewer directions than a layer's width: the Gram is singular,
    its null space is clamped (never inverted) and the report says which layers."""
    import torch

    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import flux_inputs, tiny_flux

    model = tiny_flux()
    batch = flux_inputs(model, batch=1)  # one sample: 16 image tokens, width 16 -> rank <= 16
    batch["hidden_states"] = batch["hidden_states"][:, :, :1].expand(-1, -1, 8).contiguous()
    ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: [batch])
    SVDPass(SVDConfig(targets=["attention"], ratio=0.5, multiple=2, progress=False)).run(model, ctx)
    svd = ctx.report["svd"]
    assert svd["max_loss_ratio"] <= 1.001
    assert svd["clamped_grams"], "a rank-deficient calibration Gram must be reported"
    rec = svd["layers"][svd["clamped_grams"][0]]
    assert rec["data_rank"] < min(rec["shape"]) and all(torch.isfinite(torch.tensor(rec["spectrum"])))


def test_student_mode_cache_is_keyed_by_the_factors_not_only_the_ranks(tmp_path):
    """A plain-svd run and a whitened run share ranks; the whitened run must not reuse the stats
    the svd run took on its own (differently compressed) student activations."""
    shared = tmp_path / "shared"
    _run("pixart", shared, method="svd")
    reused, _, _ = _run("pixart", shared)
    fresh, _, _ = _run("pixart", tmp_path / "fresh")
    inputs = model_inputs(reused)
    with torch.no_grad():
        a = reused(**inputs, return_dict=False)[0]
        b = fresh(**inputs, return_dict=False)[0]
    assert torch.equal(a, b)


def test_fisher_chunks_respect_the_memory_budget():
    from compress.arch.base import LinearInfo
    from compress.passes.svd_fisher import fisher_chunks

    infos = [LinearInfo(name=f"l{i}", role="mlp", part="in", in_features=4, out_features=o, group=None, block=None,
                        input_key="x") for i, o in enumerate([10, 10, 30, 5])]
    chunks = fisher_chunks(infos, budget_bytes=8 * 250)  # 250 float64 entries
    assert chunks == [["l0", "l1"], ["l2"], ["l3"]]  # 100+100; 900 alone (over budget); 25
    assert fisher_chunks(infos, 1e12) == [["l0", "l1", "l2", "l3"]]


def test_output_fisher_of_chained_linears_matches_one_at_a_time():
    """Probing several linears at once must not cut the graph between them."""
    from compress.passes.svd_fisher import output_fisher

    model = tiny_pixart()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=0)]
    names = ["transformer_blocks.0.attn1.to_v", "transformer_blocks.0.attn1.to_out.0",
             "transformer_blocks.1.ff.net.2"]
    together = output_fisher(model, adapter, batches, names, probes=2, seed=0)
    for name in names:
        alone = output_fisher(model, adapter, batches, [name], probes=2, seed=0)[name]
        assert alone.abs().sum() > 0
        assert torch.allclose(together[name], alone, rtol=1e-6, atol=1e-9)


def test_fisher_weighting_lowers_the_prediction_error_of_the_toy_teacher(tmp_path):
    errors = _toy_errors(tmp_path, {"all": dict(fisher="all"), "none": dict(fisher="none", asymmetric=False)})
    assert errors["all"] < 0.7 * errors["none"], errors


def _toy_errors(tmp_path, configs: dict, latents: int = 32) -> dict:
    """Held-out teacher-relative prediction error of the toy PixArt after the svd pass at 50% with
    each config (on `latents` training latents x both CFG branches, batches of 64 rows)."""
    from compress.toy.data import model_inputs as toy_inputs
    from compress.toy.evaluate import prediction_error
    from compress.toy.weights import load_toy_teacher

    teacher = load_toy_teacher("pixart")
    full = toy_inputs("pixart", latents, seed=1, split="train", cfg=True)
    n = 2 * latents
    batches = [{k: v[i:i + 64] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
                for k, v in full.items()} for i in range(0, n, 64)]
    errors = {}
    for name, cfg in configs.items():
        student = load_toy_teacher("pixart")
        ctx = RunContext(adapter=get_adapter(student), family="pixart", teacher=teacher,
                         run_dir=tmp_path / name, calibration_inputs=lambda: batches, fingerprint="t")
        SVDPass(SVDConfig(ratio=0.5, multiple=4, progress=False, **cfg)).run(student, ctx)
        assert ctx.report["svd"]["max_loss_ratio"] <= 1.001  # optimal in its own (weighted) metric
        errors[name] = prediction_error(student, teacher, "pixart", n=64)
        errors[name + " asymmetric"] = ctx.report["svd"]["asymmetric"]
        assert ctx.report["svd"]["fisher"] == cfg.get("fisher", "all")
    return errors


def test_block_fisher_and_asymmetric_fit_lower_the_streamable_prediction_error(tmp_path):
    """What streamed weights allow (no whole-model backward): the block Fisher beats no Fisher,
    and the asymmetric fit (auto) adds to it."""
    errors = _toy_errors(tmp_path, {"none": dict(fisher="none", asymmetric=False),
                                    "block": dict(fisher="block", asymmetric=False),
                                    "block+auto": dict(fisher="block")}, latents=64)
    assert len(errors["block+auto asymmetric"]) > 0
    assert errors["block"] < 0.97 * errors["none"], errors
    assert errors["block+auto"] < 0.95 * errors["block"], errors


def test_asymmetric_fit_lowers_the_unweighted_prediction_error_of_the_toy_teacher(tmp_path):
    """Without an output Fisher (as when block weights stream) the targets fit the uncompressed
    model's outputs from the student's inputs (auto); with the Fisher, auto leaves them alone."""
    errors = _toy_errors(tmp_path, {"auto": dict(fisher="none"), "off": dict(fisher="none", asymmetric=False),
                                    "fisher": dict(fisher="all")}, latents=64)
    assert len(errors["auto asymmetric"]) > 0 and errors["off asymmetric"] == errors["fisher asymmetric"] == []
    assert errors["auto"] < 0.95 * errors["off"], errors


def test_sequential_calibration_lowers_the_asymmetric_prediction_error_of_the_toy_teacher(tmp_path):
    """Targets fitted asymmetrically (fisher: none) with their stats taken within-block sequentially
    (auto: each later linear fitted on the inputs the block's compressed earlier ones give it)."""
    errors = _toy_errors(tmp_path, {"auto": dict(fisher="none"),
                                    "block-level": dict(fisher="none", sequential=False)}, latents=64)
    assert errors["auto"] < 0.95 * errors["block-level"], errors


def test_whole_model_work_is_refused_when_blocks_stream(tmp_path):
    """The prediction's Fisher and global's sensitivities need whole forwards; the block Fisher
    does not."""
    from compress.calib_store import BlockLoader

    class Streaming(BlockLoader):
        resident = False

    model = tiny_pixart()
    cfg = dict(multiple=2, modulation_grid=4, progress=False)
    with pytest.raises(UserError, match="svd.fisher: block .* or none"):
        SVDPass(SVDConfig(**cfg), Streaming()).run(model, _ctx(model, tmp_path))
    with pytest.raises(UserError, match="svd.sensitivity: false"):
        SVDPass(SVDConfig(fisher="block", allocation="global", **cfg), Streaming()).run(model, _ctx(model, tmp_path))
    SVDPass(SVDConfig(fisher="block", **cfg), Streaming()).run(model, _ctx(model, tmp_path))
    assert any(isinstance(m, LowRankLinear) for m in model.modules())


def test_block_fisher_is_unbiased_for_the_blocks_own_jacobian():
    """E over probes of Σ_rows gᵀg = Σ_rows J_rᵀ J_r, J_r = ∂(block output)/∂(row r of y)."""
    from compress.passes.svd_fisher import block_fisher

    model = tiny_pixart()
    adapter = get_adapter(model)
    cal = BlockCalibration(model, adapter, [model_inputs(model, seed=0)], "teacher", progress=False)
    cal.capture()
    block, name = model.transformer_blocks[0], "transformer_blocks.0.attn1.to_v"
    (args, kwargs), = cal.inputs
    probes = 3000
    estimate = block_fisher(model, adapter, block, cal.inputs, [name], probes=probes)[name] / probes

    def out_of(z):  # the block's output with z added to the linear's output
        handle = model.get_submodule(name).register_forward_hook(lambda m, a, y: y + z)
        try:
            return adapter.run_block(block, args, kwargs)
        finally:
            handle.remove()

    with torch.no_grad():
        y_shape = torch.Size([*args[0].shape[:-1], model.get_submodule(name).out_features])
    jac = torch.autograd.functional.jacobian(out_of, torch.zeros(y_shape)).double()
    jac = jac.reshape(-1, y_shape.numel() // y_shape[-1], y_shape[-1])  # (outputs, rows, out)
    exact = torch.einsum("krd,kre->de", jac, jac)  # Σ_r J_rᵀ J_r
    assert float((estimate - exact).norm() / exact.norm()) < 0.1


def test_a_second_svd_pass_adds_to_the_report(tmp_path):
    model = tiny_pixart()
    ctx = _ctx(model, tmp_path)
    cfg = {"multiple": 2, "modulation_grid": 4, "progress": False}
    SVDPass(SVDConfig(targets=["attention", "mlp"], **cfg)).run(model, ctx)
    first = {k: v for k, v in ctx.report["svd"].items()}
    SVDPass(SVDConfig(targets=["modulation"], ranks={"modulation": 4}, **cfg)).run(model, ctx)
    svd = ctx.report["svd"]
    assert set(svd["layers"]) == set(first["layers"]) | {"adaln_single.linear"}
    assert svd["compensation"] == first["compensation"] and svd["compensation"]  # nothing new to compensate
    assert [p["targets"] for p in svd["passes"]] == [len(first["layers"]), 1]
    assert svd["params_before"] == first["params_before"] + svd["passes"][1]["params_before"]
    assert svd["max_loss_ratio"] == max(r["loss_ratio"] for r in svd["layers"].values() if "loss_ratio" in r)


def test_sensitivities_replayed_per_block_equal_whole_forwards():
    """Each layer's forwards start at its block (recorded once per block); the measured weights are
    those of whole forwards: Flux, across both block groups, and a top-level target."""
    model = tiny_flux()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    infos = adapter.linears(model)
    names = ["transformer_blocks.1.attn.to_q", "single_transformer_blocks.2.proj_mlp",
             "transformer_blocks.0.norm1.linear", "time_text_embed.timestep_embedder.linear_2"]
    gen = torch.Generator().manual_seed(0)
    factors = {}
    for n in names:
        w = model.get_submodule(n).weight
        up, down = torch.randn(w.shape[0], 2, generator=gen), torch.randn(2, w.shape[1], generator=gen)
        factors[n] = (0.1 * up, down, 0.5)
    got = sensitivities(model, adapter, batches, factors, False, infos)
    ref = predictions(model, adapter, batches)
    for n, (up, down, loss) in factors.items():
        with swapped_weight(model, n, up @ down):
            expected = sensitivity_weight(relative_error(model, ref, adapter, batches), loss)
        assert got[n] == pytest.approx(expected, rel=1e-5)
    assert list(got) == names  # the report keeps the layers' order


def test_global_measures_a_centered_targets_sensitivity_with_its_mean_shift(tmp_path):
    """A centered target (modulation) leaves its mean error (W − W')μ to its bias: the sensitivity
    is the prediction's error with the layer as the pass would make it at the uniform rank, bias
    included (it was measured with W' alone: weight 12.1 here instead of 2.63)."""
    from compress.passes import svd_global

    name, cfg = "adaln_single.linear", dict(targets=["modulation"], ratio=0.5, compensate=False,
                                                 modulation_grid=16)
    captured = {}

    def spy(model, adapter, batches, factors, progress, targets):
        captured.update(batches=batches, loss=factors[name][2])
        return real(model, adapter, batches, factors, progress, targets)

    real = svd_global.sensitivities
    svd_global.sensitivities = spy
    try:
        _, report, _ = _run("pixart", tmp_path / "global", allocation="global", **cfg)
    finally:
        svd_global.sensitivities = real
    uniform, _, _ = _run("pixart", tmp_path / "uniform", activations="teacher", **cfg)
    model = tiny_pixart()
    adapter, batches = get_adapter(model), captured["batches"]
    ref = predictions(model, adapter, batches)
    model.set_submodule(name, uniform.get_submodule(name))  # the layer the pass makes, bias shifted
    want = sensitivity_weight(relative_error(model, ref, adapter, batches), captured["loss"])
    assert report["global"]["weights"][name] == pytest.approx(want, rel=1e-4)


def test_asymmetric_steps_are_not_kept_past_their_layer(tmp_path, monkeypatch):
    """Each target's asymmetric step Δ (out x in, float64: the whole model's size over a pass) is
    dropped once its layer is committed: while the pass runs, the steps alive stay within one
    block's targets instead of growing with every layer factorized."""
    import gc
    import weakref

    made, alive_most = [], []
    real = SVDPass._asymmetric_step

    def tracked(self, model, info, stats):
        step = real(self, model, info, stats)
        gc.collect()
        alive_most.append(sum(r() is not None for r in made))
        if step is not None:
            made.append(weakref.ref(step[0]))  # (Δ, offset)
        return step

    monkeypatch.setattr(SVDPass, "_asymmetric_step", tracked)
    model, report, infos = _run("flux", tmp_path, fisher="none", ratio=0.5)
    assert len(report["asymmetric"]) == len(made) > 12
    assert max(alive_most) <= 12  # a Flux double block has 12 attention + MLP targets


def test_a_non_finite_sensitivity_is_a_numeric_error_naming_the_layer(monkeypatch):
    from compress.errors import NumericError
    from compress.passes import svd_global

    model = tiny_pixart()
    adapter = get_adapter(model)
    info = adapter.linears(model)[0]
    weight = model.get_submodule(info.name).weight.detach()  # (out, in)
    factors = {info.name: (weight[:, :2], torch.eye(2, weight.shape[1]), 0.5)}  # (out, 2), (2, in)
    monkeypatch.setattr(svd_global, "relative_error", lambda *a, **k: float("nan"))
    with pytest.raises(NumericError, match=f"{re.escape(info.name)}: the prediction error .* is nan"):
        svd_global.sensitivities(model, adapter, [model_inputs(model)], factors, False, [info])


def test_a_second_svd_pass_over_factorized_layers_is_refused_naming_them(tmp_path):
    """Factorizing a LowRankLinear again dropped its fused GELU (FusedGELU has none to fuse again)
    and recorded its dense size as kept: refused, before compute where the first pass's ranks are
    fixed (plan's meta model), else when the second pass starts."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    cfg = {"multiple": 2, "modulation_grid": 4, "progress": False}
    planned = SVDPass(SVDConfig(targets=["mlp"], **cfg))
    meta = tiny_pixart()
    planned.apply_planned(meta, adapter)
    with pytest.raises(UserError, match=r"transformer_blocks\.0\.ff\.net\.0\.proj, .* are already factorized"):
        SVDPass(SVDConfig(targets=["re:ff\\.net"], **cfg)).check(meta, adapter)
    SVDPass(SVDConfig(targets=["mlp"], **cfg)).run(model, _ctx(model, tmp_path))
    name = "transformer_blocks.1.ff.net.2"
    with pytest.raises(UserError, match=f"{re.escape(name)} is already factorized .* svd.ignore"):
        SVDPass(SVDConfig(targets=[name], **cfg)).run(model, _ctx(model, tmp_path))
    assert model.get_submodule("transformer_blocks.0.ff.net.0.proj").activation == "gelu_tanh"
    SVDPass(SVDConfig(targets=["attention"], **cfg)).check(model, adapter)  # the others stay allowed


@pytest.mark.parametrize("activations", ["student", "teacher"])
def test_modulation_grams_follow_the_compressed_embedders_in_student_mode(activations, tmp_path, monkeypatch):
    """Flux's modulation linears read silu(temb), which the top-level embedders make: with
    activations: student their Grams are taken after those are compressed (they were taken from the
    teacher's, 1.45 relative difference here, and norm_out.linear was factorized before them);
    with teacher, on the teacher's conditioning."""
    from compress.passes import svd as svd_module
    from compress.passes.svd_walk import readers

    seen, order, real = {}, [], svd_module.compress_layer

    def spy(model, info, stats, **kw):
        seen[info.name], _ = stats.gram.clone(), order.append(info.name)
        return real(model, info, stats, **kw)

    monkeypatch.setattr(svd_module, "compress_layer", spy)
    model, report, infos = _run("flux", tmp_path, targets=["embedding", "modulation"], ratio=0.3,
                                activations=activations, compensate=False)
    assert order.index("x_embedder") < order.index("norm_out.linear")
    reference = model if activations == "student" else tiny_flux()
    batches = [model_inputs(model, seed=i) for i in range(2)]
    cal = BlockCalibration(reference, get_adapter(model), batches, activations, progress=False)
    for name in ("transformer_blocks.0.norm1.linear", "norm_out.linear"):
        gram = next(iter(cal.conditioning(readers([infos[name]]), 4).values())).gram
        assert torch.allclose(seen[name], gram, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("family, targets, fisher", [
    ("pixart", ["re:transformer_blocks\\.\\d+\\.ff\\.net\\.2"], "all"),
    ("pixart", ["re:attn1\\.to_q"], "none"),  # asymmetric: W + Δ
    ("flux", ["re:single_transformer_blocks\\.\\d+\\.proj_out"], "all"),  # the output-Gram path
    ("pixart", ["modulation"], "all"),  # centered: the mean error moved into the bias
])
def test_rel_output_error_is_the_layers_own_output_error_on_its_calibration_inputs(family, targets, fisher,
                                                                                    tmp_path, monkeypatch):
    """rel_output_error = ‖y' − y‖ / ‖W x‖ over the rows the layer read in calibration (here the
    student's: each target's input comes through the earlier compressed blocks), y the layer as the
    pass found it, y' the layer it made; not the output-Fisher-weighted loss of the compensated
    weight, nor relative to the asymmetric fit's W + Δ. energy_kept stays the objective's."""
    from compress.calib import _with_timestep

    monkeypatch.setattr(svd_targets, "OUTPUT_GRAM_MIN_IN", 32)  # tiny single proj_out: in 48, out 16
    ranks = {"modulation": 2} if targets == ["modulation"] else {}  # below the grid's 4 directions
    model, report, _ = _run(family, tmp_path, targets=targets, fisher=fisher, ranks=ranks)
    dense = MAKERS[family]()
    seen = {name: [0.0, 0.0] for name in report["layers"]}

    def hook(name):
        def record(module, args, out):
            ref = dense.get_submodule(name)
            seen[name][0] += float((out - ref(args[0])).double().square().sum())
            seen[name][1] += float((args[0] @ ref.weight.T).double().square().sum())
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in seen]
    batches = [model_inputs(model, seed=i) for i in range(2)]  # the calibration batches of _ctx
    if targets == ["modulation"]:  # read over the timestep grid (modulation_grid: 4)
        grid = get_adapter(model).timestep_grid
        batches = [_with_timestep(b, t) for b in batches for t in grid(4, b)]
    with torch.no_grad():
        for batch in batches:
            model(**batch, return_dict=False)
    for h in handles:
        h.remove()
    for name, rec in report["layers"].items():
        assert rec["rank"] != "dense"
        assert rec["rel_output_error"] == pytest.approx((seen[name][0] / seen[name][1]) ** 0.5, rel=1e-4), name
        assert 0 < rec["energy_kept"] < 1
    assert bool(report["asymmetric"]) == (fisher == "none")  # blocks 1, 2 fit W + Δ
