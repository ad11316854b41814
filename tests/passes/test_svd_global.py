"""compress.passes.svd_global: the sensitivities global allocation weighs each layer's loss by."""

import re

import pytest
import torch

from compress.alloc_sensitivity import sensitivity_weight
from compress.arch import get_adapter
from compress.passes.base import predictions, relative_error
from compress.passes.svd_global import sensitivities
from compress.passes.svd_layer import swapped_weight
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.svd_helpers import run_svd

pytestmark = pytest.mark.usefixtures("one_thread")


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

    def spy(model, adapter, batches, factors, progress, targets, guide=None):
        captured.update(batches=batches, loss=factors[name][2])
        return real(model, adapter, batches, factors, progress, targets, guide)

    real = svd_global.sensitivities
    svd_global.sensitivities = spy
    try:
        _, report, _ = run_svd("pixart", tmp_path / "global", allocation="global", **cfg)
    finally:
        svd_global.sensitivities = real
    uniform, _, _ = run_svd("pixart", tmp_path / "uniform", activations="teacher", **cfg)
    model = tiny_pixart()
    adapter, batches = get_adapter(model), captured["batches"]
    ref = predictions(model, adapter, batches)
    model.set_submodule(name, uniform.get_submodule(name))  # the layer the pass makes, bias shifted
    want = sensitivity_weight(relative_error(model, ref, adapter, batches), captured["loss"])
    assert report["global"]["weights"][name] == pytest.approx(want, rel=1e-4)


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


def test_a_ctrl_c_in_global_allocation_leaves_no_sensitivity_scratch(tmp_path, monkeypatch):
    """Ctrl-C while sensitivities were measured left each target's factors (sensitivity/<pid>-*.pt in
    the run folder, a layer's weight each) behind, kept alive by the KeyboardInterrupt's traceback;
    they go now, and a live process's file there stays."""
    import os

    from compress.passes import svd_global

    scratch = tmp_path / "sensitivity"
    scratch.mkdir()
    live = scratch / f"{os.getppid()}-0-0.pt"  # the parent of pytest runs
    live.write_bytes(b"live")
    spilled = []

    def interrupted(model, adapter, batches, factors, progress, targets, guide=None):
        spilled.extend(scratch.glob(f"{os.getpid()}-*.pt"))
        raise KeyboardInterrupt
    monkeypatch.setattr(svd_global, "sensitivities", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        run_svd("pixart", tmp_path, allocation="global", targets=["mlp"], ratio=0.5)
    assert caught.value.__traceback__ is not None and len(spilled) >= 2  # the factors were on disk
    assert sorted(scratch.iterdir()) == [live]


def one_token_captions(model, n=2):
    """Calibration batches whose caption mask lets one token per row through: cross-attention's
    v and out read 4 dimensions (2 rows × 2 batches), below their uniform rank 4..."""
    out = []
    for i in range(n):
        b = model_inputs(model, seed=i)
        b["encoder_attention_mask"] = torch.zeros(2, 5)  # (B, tokens)
        b["encoder_attention_mask"][:, 0] = 1
        out.append(b)
    return out


def test_a_layer_that_loses_only_round_off_at_uniform_is_weighed_where_it_loses_something(tmp_path):
    """...so at rank 4 they lose round-off, and their weight was the float32 prediction error over a
    1e-12 floor (to_v 0.025 here, 6.5x what rank 2 measures; the toy PixArt's caption v at ratio 0.3:
    0.013-0.053, up to 15x what rank 8 measures). It is now measured at rank 2 (the trust range's
    bottom): the weight equals the error of the layer factorized there, as a uniform pass makes it,
    over its loss there."""
    from compress.passes import svd_global
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass

    name, cfg = "transformer_blocks.0.attn2.to_v", dict(targets=["cross_attention"], multiple=2, ratio=0.5,
                                                      compensate=False, progress=False)
    captured = {}

    def spy(model, adapter, batches, factors, progress, targets, guide=None):
        captured.update(batches=batches, rank=factors[name][0].shape[1])  # up: (out, rank)
        return real(model, adapter, batches, factors, progress, targets, guide)

    def run(folder, **more):
        model = tiny_pixart()
        batches = one_token_captions(model)
        ctx = RunContext(adapter=get_adapter(model), family="pixart", teacher=model, run_dir=tmp_path / folder,
                         calibration_inputs=lambda: batches, fingerprint="fp")
        SVDPass(SVDConfig(**cfg, **more)).run(model, ctx)
        return model, ctx.report["svd"]

    real = svd_global.sensitivities
    svd_global.sensitivities = spy
    try:
        _, report = run("global", allocation="global")
    finally:
        svd_global.sensitivities = real
    uniform, record = run("uniform", activations="teacher", ranks={name: 2})
    loss = 1.0 - record["layers"][name]["energy_kept"]  # normalized loss at rank 2
    assert loss > 1e-3  # 0.014: a loss the prediction's float32 error resolves
    model = tiny_pixart()
    adapter, batches = get_adapter(model), captured["batches"]
    ref = predictions(model, adapter, batches)
    model.set_submodule(name, uniform.get_submodule(name))
    want = sensitivity_weight(relative_error(model, ref, adapter, batches), loss)
    assert report["global"]["weights"][name] == pytest.approx(want, rel=1e-4)  # 0.0039 (was 0.025)
    assert captured["rank"] == 2 and report["global"]["weights_measured_below_uniform"][name] == 2


def test_global_reports_uniforms_parameter_count_and_the_error_at_it(tmp_path):
    """Uniform's per-layer rounding keeps another count than the global budget (toy PixArt at 0.6:
    827,520 against 790,656; at 0.3: 376,960 against 395,392), and predicted_error_vs_uniform
    compared the two unequal counts; the report now gives uniform's count beside `spent_params`, and
    the model's prediction for a global allocation of that count."""
    from compress.alloc import ratio_rank
    from compress.passes.svd_targets import shape_spec

    _, report, infos = run_svd("pixart", tmp_path, allocation="global", targets=["mlp"], ratio=0.4,
                               multiple=4, compensate=False)
    g = report["global"]
    uniform = sum(shape_spec(infos[n]).params(ratio_rank(shape_spec(infos[n]), 0.4, 4)) for n in report["layers"])
    assert g["uniform_params"] == uniform < g["spent_params"]  # 2,160 < 2,480
    # at 2,160 every layer sits at its lowest allowed rank, uniform's: the model predicts 1.0, not 0.79
    assert 0 < g["predicted_error_vs_uniform"] < g["predicted_error_vs_uniform_equal_params"] == pytest.approx(1.0)


def test_a_global_allocation_that_leaves_its_budget_unspent_says_so(tmp_path, capsys):
    """Calibration rows fewer than the layers' widths make every curve flat past a few ranks: the
    greedy stopped with 27% of its budget left and nothing said it (toy PixArt, 1 prompt x 1 timestep).
    On a tiny PixArt whose blocks see 8 rows (2 samples x 4 tokens) of 32-wide inputs."""
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.passes.svd_helpers import context

    model = tiny_pixart(sample_size=2, attention_head_dim=16, cross_attention_dim=32)
    ctx = context(model, tmp_path, n=1)
    cfg = SVDConfig(targets=["attention", "mlp"], allocation="global", ratio=0.9, multiple=2, progress=False,
                    sensitivity=False, fisher="none", trust_region=None)
    SVDPass(cfg).run(model, ctx)
    g = ctx.report["svd"]["global"]
    err = " ".join(capsys.readouterr().err.split())
    assert g["spent_params"] < 0.99 * g["budget_params"]
    assert (f"svd: the global allocation spent {g['spent_params']:,} of its {g['budget_params']:,}-parameter "
            "budget") in err, err
    assert "calibration.num_prompts, calibration.timesteps" in err
    n = len(ctx.report["svd"]["clamped_grams"])  # and most Grams clamped: said once, naming the widest layer
    assert n == len(ctx.report["svd"]["layers"]) and err.count("had calibration data spanning fewer") == 1
    assert f"svd: {n} of this pass's {n} targets had calibration data spanning fewer directions than the " \
           "layer is wide (the widest, transformer_blocks.0.ff.net.0.proj 128×32, 8 of 32)" in err, err


def _global_refusal(infos, **cfg) -> str | None:
    """check_global_budget's words for the targets `infos` under SVDConfig(**cfg), None if it accepts."""
    from compress.errors import BadValue
    from compress.passes.svd import SVDConfig
    from compress.passes.svd_global import check_global_budget

    try:
        check_global_budget(list(infos), SVDConfig(allocation="global", **cfg))
    except BadValue as e:
        return str(e)
    return None


def test_trust_region_1_gives_every_layer_its_uniform_rank_where_rounding_keeps_more_than_the_ratio(tmp_path):
    """At trust_region 1 each range is the uniform rank rounded to the multiple; rounding up made the
    lowest total exceed ratio × dense, and the budget check refused ('svd.ratio 0.6 is below what global
    allocation can keep ... keeps 0.627 ...; raise svd.ratio', and again at 0.7: 'keeps 0.728'). Now the
    budget is that lowest total where it is over only by rounding: global at factor 1 is uniform."""
    from compress.alloc import DENSE, budget_for_ratio, ratio_rank
    from compress.passes.svd_targets import shape_spec

    infos = [i for i in get_adapter(tiny_pixart()).linears(tiny_pixart()) if i.role == "mlp"]
    specs = [shape_spec(i) for i in infos]
    for ratio in (0.55, 0.6):  # 64×16: exact ranks 7.04 and 7.68, both rounded up to 8 at multiple 4
        uni = sum(s.params(ratio_rank(s, ratio, 4)) for s in specs)
        assert uni > budget_for_ratio(specs, ratio)  # the rounding goes up: the case refused
        assert _global_refusal(infos, ratio=ratio, multiple=4, trust_region=1, targets=["mlp"]) is None
    _, report, infos = run_svd("pixart", tmp_path, allocation="global", targets=["mlp"], ratio=0.6, multiple=4,
                               trust_region=1, compensate=False)
    for name, rank in report["layers"].items():
        want = ratio_rank(shape_spec(infos[name]), 0.6, 4)
        assert rank["rank"] == ("dense" if want is DENSE else want), name


def test_a_ratio_too_low_before_rounding_is_still_refused_advising_a_ratio_that_fits():
    """Every target at one multiple keeps more than the ratio asks, not by rounding: refused, with the
    lowest ratio the check accepts; 'raise svd.ratio' is not advised where no ratio below 1 fits."""
    from compress.passes.svd_targets import shape_spec

    infos = [i for i in get_adapter(tiny_pixart()).linears(tiny_pixart()) if i.role == "mlp"]
    said = _global_refusal(infos, ratio=0.05, multiple=4, trust_region=1, targets=["mlp"])
    assert said and "svd.ratio 0.05 is below what global allocation can keep" in said, said
    fits = float(re.search(r"raise svd.ratio \(to at least ([0-9.]+)\)", said).group(1))
    assert _global_refusal(infos, ratio=fits, multiple=4, trust_region=1, targets=["mlp"]) is None
    assert _global_refusal(infos, ratio=fits - 0.002, multiple=4, trust_region=1, targets=["mlp"]) is not None
    wide = max(min(shape_spec(i).out_features, shape_spec(i).in_features) for i in infos)
    said = _global_refusal(infos, ratio=0.5, multiple=wide, trust_region=None, targets=["mlp"])
    assert said and "raise svd.ratio" not in said and said.endswith("lower svd.multiple"), said


def test_widening_the_trust_region_is_advised_only_where_a_wide_enough_one_fits():
    """'widen svd.trust_region' was advised wherever a wider region kept fewer parameters, though none
    kept few enough: a 512×512 target beside a 16×16384 one that no rank of 16 saves on (dense: 0.5 of
    the parameters whatever the ratio) at ratio 0.45 (no region fits below 0.532: each target at one
    multiple). Now only where the check without ranges (the floor a widening region reaches) accepts the
    ratio; where every range already starts at one multiple (ratio 0.01) it is not advised either."""
    from compress.arch.base import LinearInfo

    infos = [i for i in get_adapter(tiny_pixart()).linears(tiny_pixart()) if i.role == "mlp"]
    said = _global_refusal(infos, ratio=0.01, multiple=4, trust_region=2, targets=["mlp"])
    assert said and "widen svd.trust_region" not in said and said.endswith("or lower svd.multiple"), said
    pair = [LinearInfo("wide", "mlp", "in", None, None, 16384, 16, "x"),
            LinearInfo("square", "mlp", "in", None, None, 512, 512, "y")]
    said = _global_refusal(pair, ratio=0.45, multiple=16, trust_region=2, targets=["mlp"])
    assert said and said.endswith("raise svd.ratio (to at least 0.667) or lower svd.multiple"), said
    assert _global_refusal(pair, ratio=0.45, multiple=16, trust_region=None, targets=["mlp"])  # no region fits
    said = _global_refusal(pair, ratio=0.55, multiple=16, trust_region=2, targets=["mlp"])
    assert said and said.endswith("lower svd.multiple or widen svd.trust_region"), said
    assert _global_refusal(pair, ratio=0.55, multiple=16, trust_region=None, targets=["mlp"]) is None


def test_the_advice_never_names_a_ratio_below_the_one_refused():
    """R1 (toy PixArt's block linears, multiple 8, trust_region 1.1): 0.12 was refused advising 'raise
    svd.ratio (to at least 0.108)', which planned, as did 0.11 and 0.125: rounded-down ranks earned
    credit against other targets' one-multiple floors, so acceptance came and went with the ratio. Now
    the ratios accepted are those from the one advised up: every one refused below it, none above."""
    from compress.toy.weights import load_toy_teacher

    model = load_toy_teacher("pixart")
    model = model[0] if isinstance(model, tuple) else model
    roles = ["attention", "cross_attention", "mlp"]
    infos = [i for i in get_adapter(model).linears(model) if i.role in roles]
    said = _global_refusal(infos, ratio=0.12, multiple=8, trust_region=1.1, targets=roles)
    fits = float(re.search(r"raise svd.ratio \(to at least ([0-9.]+)\)", said).group(1))
    assert fits > 0.12
    for k in range(100, 160, 3):
        refused = _global_refusal(infos, ratio=k / 1000, multiple=8, trust_region=1.1, targets=roles)
        assert (refused is None) == (k / 1000 >= fits), (k, refused)


def test_a_guided_objective_measures_each_layers_sensitivity_on_the_guided_prediction(tmp_path, monkeypatch):
    """Under a guided svd.objective the Fishers or compensation weighed the guided prediction's errors while
    global allocation's sensitivities still measured each calibration row's own prediction. Now they measure
    the guided one (the pass's CalibrationGuidance); `branches` keeps each row's."""
    from compress.guided import CalibrationGuidance, HeldOutGuidance, calibration_pairs
    from compress.passes import svd_global
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.passes.svd_helpers import two_branches

    model = tiny_pixart()
    adapter = get_adapter(model)
    batches = [two_branches(model, seed=s) for s in range(2)]
    guide = CalibrationGuidance(3.0, [calibration_pairs(b) for b in batches])
    name = "transformer_blocks.0.attn1.to_q"
    w = model.get_submodule(name).weight
    gen = torch.Generator().manual_seed(0)
    factors = {name: (0.1 * torch.randn(w.shape[0], 2, generator=gen), torch.randn(2, w.shape[1], generator=gen), 0.5)}
    got = sensitivities(model, adapter, batches, factors, False, adapter.linears(model), guide)
    ref = predictions(model, adapter, batches)
    with swapped_weight(model, name, factors[name][0] @ factors[name][1]):
        guided = relative_error(model, ref, adapter, batches, guide=guide)
        own = relative_error(model, ref, adapter, batches)
    assert got[name] == pytest.approx(sensitivity_weight(guided, 0.5), rel=1e-5) and guided != pytest.approx(own)

    seen = []
    real = svd_global.sensitivities
    monkeypatch.setattr(svd_global, "sensitivities", lambda *a: seen.append(a[-1]) or real(*a))
    for objective in ("guided_compensation", "branches"):
        ctx = RunContext(adapter=adapter, family="pixart", teacher=tiny_pixart(), run_dir=tmp_path / objective,
                         calibration_inputs=lambda: batches, fingerprint=objective,
                         heldout_guidance=lambda: HeldOutGuidance(3.0))
        SVDPass(SVDConfig(targets=["attention"], allocation="global", ratio=0.5, multiple=2, progress=False,
                          objective=objective)).run(tiny_pixart(), ctx)
    assert isinstance(seen[0], CalibrationGuidance) and seen[0].scale == 3.0 and seen[1] is None, seen
