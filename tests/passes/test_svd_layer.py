"""A centered target fitted asymmetrically, through the svd pass: the layer it makes is the rank-r
optimum of the reference fit with a free bias (brute force on the rows the layer reads), and the
report's loss / optimal_loss are that fit's less the full-rank residual."""

import pytest
import torch

from tests.conftest import model_inputs, tiny_pixart
from tests.passes.test_svd import _run

pytestmark = pytest.mark.usefixtures("one_thread")

Q = "re:attn1\\.to_q"
F64 = torch.float64


def _inputs(model, dense, names):
    """name -> (reference rows x, student rows x̃) (n, in) float64: what the layer reads in the
    model as the pass found it and in the compressed model, on the calibration batches of _run."""
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
    model, report, _ = _run("pixart", tmp_path, targets=[Q], center=[Q], fisher="none",
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
        upstream += float((x - x_s).norm()) > 1e-3 * float(x.norm())
    assert upstream == 2  # blocks 1 and 2 read the compressed blocks before them
