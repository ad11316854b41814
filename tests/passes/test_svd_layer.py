"""compress.passes.svd_layer through the svd pass. A centered target fitted asymmetrically: the layer
it makes is the rank-r optimum of the reference fit with a free bias (brute force on the rows the
layer reads), and the report's loss / optimal_loss are that fit's less the full-rank residual. Each
layer's rel_output_error is its own output error on its calibration inputs."""

import pytest
import torch

from compress.arch import get_adapter
from compress.passes import svd_targets
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.svd_helpers import MAKERS, run_svd

pytestmark = pytest.mark.usefixtures("one_thread")

Q = "re:attn1\\.to_q"
F64 = torch.float64


def _inputs(model, dense, names):
    """name -> (reference rows x, student rows x̃) (n, in) float64: what the layer reads in the
    model as the pass found it and in the compressed model, on the calibration batches of run_svd."""
    rows = {n: ([], []) for n in names}

    def hook(n, i):
        def record(mod, args):
            rows[n][i].append(args[0].detach().reshape(-1, args[0].shape[-1]).to(F64))
        return record

    handles = [net.get_submodule(n).register_forward_pre_hook(hook(n, i))
               for n in names for i, net in enumerate((dense, model))]
    with torch.no_grad():
        for seed in range(2):
            batch = model_inputs(model, seed=seed)
            dense(**batch)
            model(**batch)
    for h in handles:
        h.remove()
    return {n: (torch.cat(x), torch.cat(x_s)) for n, (x, x_s) in rows.items()}


def _reference_fit(x, x_s, w, rank):
    """(the rank-r optimum of Σ ‖W x − (A x̃ + b)‖² over A and b, the full-rank residual), by
    brute force: least squares of the centered outputs on the centered student rows, then the best
    rank-r part of the fitted outputs (reduced-rank regression)."""
    y = x @ w.T
    y, x_s = y - y.mean(0), x_s - x_s.mean(0)
    fitted = x_s @ torch.linalg.lstsq(x_s, y).solution  # (n, out)
    u, s, vh = torch.linalg.svd(fitted, full_matrices=False)
    best = float(((y - (u[:, :rank] * s[:rank]) @ vh[:rank]) ** 2).sum())
    return best, float(((y - fitted) ** 2).sum())


@pytest.mark.parametrize("rank", [2, 4])
def test_a_centered_asymmetric_target_is_the_affine_optimum_of_the_reference_fit(rank, tmp_path):
    model, report, _ = run_svd("pixart", tmp_path, targets=[Q], center=[Q], fisher="none",
                            ranks={Q: rank}, asymmetric_damping=1e-12)
    dense = tiny_pixart()
    assert sorted(report["asymmetric"]) == sorted(report["layers"])
    upstream = 0
    for name, (x, x_s) in _inputs(model, dense, list(report["layers"])).items():
        ref, new, rec = dense.get_submodule(name), model.get_submodule(name), report["layers"][name]
        assert rec["rank"] == rank and rec["centered"]
        w = ref.weight.detach().to(F64)
        approx = new.up.weight.detach().to(F64) @ new.down.weight.detach().to(F64)  # (out, in)
        made = x_s @ approx.T + new.up.bias.detach().to(F64)
        fit = float(((x @ w.T + ref.bias.detach().to(F64) - made) ** 2).sum())
        best, residual = _reference_fit(x, x_s, w, rank)
        assert fit == pytest.approx(best, rel=1e-6), name
        # the report: the fit less what no rank removes (round-off of the float32 factors, and of the
        # block-by-block calibration's float32 rows against these whole forwards', aside)
        assert rec["loss"] + residual == pytest.approx(fit, rel=1e-6), name
        assert rec["optimal_loss"] + residual == pytest.approx(best, rel=1e-7), name
        assert rec["loss_ratio"] == pytest.approx(1.0, abs=1e-6), name
        # the fit against its undamped optimum: here (no damping to speak of) the same thing
        assert rec["fit_excess"] + residual == pytest.approx(fit, rel=1e-6), name
        assert rec["fit_optimal"] + residual == pytest.approx(best, rel=1e-7), name
        assert rec["fit_gap"] == pytest.approx(0.0, abs=1e-9), name
        upstream += float((x - x_s).norm()) > 1e-3 * float(x.norm())
    assert upstream == 2  # blocks 1 and 2 read the compressed blocks before them


def test_a_damped_asymmetric_fit_is_reported_against_its_undamped_optimum(tmp_path):
    """At the default damping the report's fit_excess and fit_optimal are the layer's fit to the
    reference's outputs above the least-squares minimum, and the rank-r minimum of that, by brute
    force on the rows the layer read; the damping's cost shows as fit_gap > 0, their difference over the
    layer's output energy on the student's inputs (loss_ratio, against
    the damped target, stays 1). Targets not fitted asymmetrically have no fit_ keys."""
    model, report, _ = run_svd("pixart", tmp_path, targets=[Q], fisher="none", ranks={Q: 2})
    dense = tiny_pixart()
    assert sorted(report["asymmetric"]) == sorted(report["layers"])
    ratios = []
    for name, (x, x_s) in _inputs(model, dense, list(report["layers"])).items():
        ref, new, rec = dense.get_submodule(name), model.get_submodule(name), report["layers"][name]
        w = ref.weight.detach().to(F64)
        approx = new.up.weight.detach().to(F64) @ new.down.weight.detach().to(F64)  # (out, in)
        fit = float(((x_s @ approx.T - x @ w.T) ** 2).sum())
        solution = torch.linalg.lstsq(x_s, x @ w.T).solution  # (in, out)
        fitted = x_s @ solution
        minimum = float(((x @ w.T - fitted) ** 2).sum())
        sv = torch.linalg.svdvals(fitted)
        assert rec["fit_excess"] == pytest.approx(fit - minimum, rel=1e-7), name
        assert rec["fit_optimal"] == pytest.approx(float((sv[2:] ** 2).sum()), rel=1e-9), name
        assert rec["loss_ratio"] == pytest.approx(1.0, abs=1e-6), name
        energy = float(((x_s @ w.T) ** 2).sum())
        assert rec["fit_gap"] == pytest.approx((fit - minimum - float((sv[2:] ** 2).sum())) / energy, rel=1e-6, abs=1e-12)
        ratios.append(rec["fit_gap"])
    assert max(ratios) > 1e-6 and min(ratios) >= 0.0  # blocks 1, 2 read compressed inputs
    assert report["max_fit_gap"] == max(ratios)
    _, plain, _ = run_svd("pixart", tmp_path / "off", targets=[Q], fisher="none", ranks={Q: 2}, asymmetric=False)
    assert not any(k.startswith("fit_") for rec in plain["layers"].values() for k in rec)
    assert plain["max_fit_gap"] is None


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
    model, report, _ = run_svd(family, tmp_path, targets=targets, fisher=fisher, ranks=ranks)
    dense = MAKERS[family]()
    seen = {name: [0.0, 0.0] for name in report["layers"]}

    def hook(name):
        def record(module, args, out):
            ref = dense.get_submodule(name)
            seen[name][0] += float((out - ref(args[0])).double().square().sum())
            seen[name][1] += float((args[0] @ ref.weight.T).double().square().sum())
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in seen]
    batches = [model_inputs(model, seed=i) for i in range(2)]  # the calibration batches of context
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


@pytest.mark.parametrize("method", ["asvd", "svd"])
def test_a_layer_whose_optimum_is_zero_gets_no_infinite_ratio(method):
    """Flux's ff_context at rank 64, above the text stream's data rank, with method asvd: the
    whitened optimum is 0 while asvd's loss is not; report.json said `loss_ratio: Infinity` (not
    strict JSON). Now: None with a note; a loss at round-off under a zero optimum is 1.0."""
    import json

    from compress.arch.base import LinearInfo
    from compress.calib_stats import Stats
    from compress.passes.svd_layer import _ratio, compress_layer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32))
    x = torch.randn(64, 4, dtype=F64) @ torch.randn(4, 32, dtype=F64)  # data rank 4 < the rank 8
    x[:, 0] += 30 * torch.randn(64, dtype=F64)  # one loud channel: asvd / svd miss the data's subspace
    stats = Stats.zeros(32)
    stats.add(x)
    info = LinearInfo("0", "mlp", "in", None, None, 32, 32, "x")
    rec = compress_layer(net, info, stats, method=method, alpha=0.5, center=False, gram_is_output=False,
                         choose_rank=lambda dec: 8)
    assert rec["optimal_loss"] <= 1e-10 * rec["loss"] / (1 - rec["energy_kept"])  # optimum 0
    assert rec["loss_ratio"] is None and "whitened optimum at rank 8 is 0" in rec["loss_ratio_note"], rec
    json.dumps(rec, allow_nan=False)  # strict JSON
    assert _ratio(1e-12, 0.0, 100.0, method, 8) == {"loss_ratio": 1.0}  # round-off under a zero optimum
    assert _ratio(float("nan"), 1.0, 100.0, method, 8)["loss_ratio"] is None


def test_a_layer_whose_calibration_inputs_are_all_zero_shows_no_ratio_and_no_energy_kept():
    """A zero Gram (block 1's ff.net.2 behind a zeroed ff.net.0.proj): loss 0, optimum 0 and energy 0
    were recorded as loss_ratio 1.0 and energy_kept 1.0, so inspect showed 'energy 1.0000' and
    'loss/opt 1.000000', perfect; 0/0 is no ratio: None (inspect's '-'), with a note saying why."""
    import json

    from compress.arch.base import LinearInfo
    from compress.calib_stats import Stats
    from compress.passes.svd_layer import compress_layer

    net, stats = torch.nn.Sequential(torch.nn.Linear(32, 32)), Stats.zeros(32)
    stats.add(torch.zeros(64, 32, dtype=F64))
    info = LinearInfo("0", "mlp", "in", None, None, 32, 32, "x")
    rec = compress_layer(net, info, stats, method="whitened", alpha=0.5, center=False, gram_is_output=False,
                         choose_rank=lambda dec: 8)
    assert rec["loss"] == rec["optimal_loss"] == 0 and rec["data_rank"] == 0 and rec["clamped"] is True
    assert rec["loss_ratio"] is None and rec["energy_kept"] is None, rec
    assert rec["loss_ratio_note"].startswith("no ratio: the layer's calibration output energy, in its objective, "
                                             "is 0 (its calibration inputs are all zero"), rec
    json.dumps(rec, allow_nan=False)


def _rank_deficient(seed: int, rank: int = 4):
    """A 32 → 32 linear and the stats of 64 rows spanning `rank` directions."""
    from compress.calib_stats import Stats

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32))
    x = torch.randn(64, rank, dtype=F64) @ torch.randn(rank, 32, dtype=F64)
    stats = Stats.zeros(32)
    stats.add(x)
    return net, stats, x


def test_an_exact_layers_loss_is_never_a_round_off_negative():
    """At a rank above the data's rank the whitened factors are exact: report.json printed
    loss = -6e-15 for such layers. A round-off negative is now 0."""
    from compress.arch.base import LinearInfo
    from compress.passes.svd_layer import compress_layer

    info = LinearInfo("0", "mlp", "in", None, None, 32, 32, "x")
    for seed in range(6):
        net, stats, _ = _rank_deficient(seed)
        rec = compress_layer(net, info, stats, method="whitened", alpha=0.5, center=False, gram_is_output=False,
                             choose_rank=lambda dec: 8)
        assert 0 <= rec["loss"] < 1e-10 and rec["loss_ratio"] == 1.0, (seed, rec["loss"])


def test_an_asvd_layers_note_and_data_rank_name_the_datas_rank():
    """asvd at rank 8 on data of rank 4: the note said the data 'spans at most 8 directions' and
    data_rank was 32 (asvd's own basis keeps every direction); both now say 4, the whitened count."""
    from compress.arch.base import LinearInfo
    from compress.passes.svd_layer import compress_layer

    net, stats, x = _rank_deficient(0)
    x[:, 0] += 30 * torch.randn(64, dtype=F64)  # one loud channel: asvd misses the data's subspace
    stats = type(stats).zeros(32)
    stats.add(x)
    info = LinearInfo("0", "mlp", "in", None, None, 32, 32, "x")
    rec = compress_layer(net, info, stats, method="asvd", alpha=0.5, center=False, gram_is_output=False,
                         choose_rank=lambda dec: 8)
    assert rec["data_rank"] == 5 and rec["clamped"]
    assert "spans 5 directions)" in rec["loss_ratio_note"], rec["loss_ratio_note"]


def test_energy_kept_is_of_the_weight_factorized_as_the_energy_allocation_reads_it():
    """With a step (compensation, an asymmetric fit) the layer factorizes W + Δ and the energy
    allocation keeps `energy` of W + Δ's energy (its curve); energy_kept was 1 − loss / tr(W G Wᵀ),
    W's alone, so it could not check the allocation. Here Δ = W: W + Δ has 4x W's energy."""
    from compress.alloc import LayerSpec, energy_rank
    from compress.arch.base import LinearInfo
    from compress.linalg import normalized_curve
    from compress.passes.svd_layer import compress_layer

    net, stats, _ = _rank_deficient(1, rank=12)
    info = LinearInfo("0", "mlp", "in", None, None, 32, 32, "x")
    chosen = {}

    def choose(dec):
        spec = LayerSpec("0", 32, 32, normalized_curve(dec.curve))
        chosen["rank"] = energy_rank(spec, 0.9, 1)
        return chosen["rank"]

    step = net[0].weight.detach().to(F64).clone()
    rec = compress_layer(net, info, stats, method="whitened", alpha=0.5, center=False, gram_is_output=False,
                         choose_rank=choose, step=step)
    assert rec["rank"] == chosen["rank"] < 12
    target = 4 * float(((step @ stats.gram) * step).sum())  # tr((W + Δ) G (W + Δ)ᵀ)
    assert rec["energy_kept"] == pytest.approx(1 - rec["loss"] / target, rel=1e-9)
    assert rec["energy_kept"] >= 0.9


def test_a_layers_record_names_its_weighting_apart_from_svd_objective():
    """report.json's svd.objective (branches, guided, ...) and each layer's svd.layers.<name>.objective
    (output-weighted, calibration output) shared a name for two different things. The layer's is now
    `weighting`; no layer record holds `objective`."""
    from compress.arch.base import LinearInfo
    from compress.calib_stats import Stats
    from compress.passes.svd_layer import compress_layer

    torch.manual_seed(0)
    net, stats = torch.nn.Sequential(torch.nn.Linear(16, 16)), Stats.zeros(16)
    stats.add(torch.randn(64, 16, dtype=F64))
    info = LinearInfo("0", "mlp", "in", None, None, 16, 16, "x")
    rec = compress_layer(net, info, stats, method="whitened", alpha=0.5, center=False, gram_is_output=False,
                         choose_rank=lambda dec: 4)
    assert rec["weighting"] == "calibration output" and "objective" not in rec, rec
