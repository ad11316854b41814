"""tools/bench_fisher_exact.py: its one-hot probes give the exact output Fisher, and its loss / optimum
ratio is 1 for the factors fitted under the weighting it measures in, above 1 under another."""

import torch
from torch import nn

from compress.passes import svd_fisher, svd_layer
from compress.passes.svd_fisher import dense_fisher
from compress.passes.svd_fisher_roots import sqrt_pair
from tools import bench_fisher_exact as tool

F64 = torch.float64


class Chain(nn.Module):
    """pred = tanh(B · (A x)) per token: the tapped linear `a`'s output reaches pred through B and tanh."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return torch.tanh(self.b(self.a(x)))


class Adapter:
    def predict(self, model, batch):
        return model(batch["x"])


def _exact(model, batches) -> torch.Tensor:
    """Σ over samples and tokens of JᵀJ, J = ∂pred_token/∂y_token (the linear's output at that token), by hand."""
    total = torch.zeros(4, 4, dtype=F64)
    for batch in batches:
        y = model.a(batch["x"]).detach()
        d = 1 - torch.tanh(model.b(y)) ** 2  # (samples, tokens, 3)
        for j in d.reshape(-1, 3).to(F64):
            jac = j[:, None] * model.b.weight.detach().to(F64)  # (3, 4)
            total += jac.T @ jac
    return total


def test_one_hot_probes_give_the_exact_output_fisher(monkeypatch):
    model = Chain()
    batches = [{"x": torch.randn(3, 2, 5)}, {"x": torch.randn(2, 2, 5)}]
    monkeypatch.setattr(svd_fisher, "_probe", tool.exact_probe)
    measured = dense_fisher(svd_fisher.output_fisher(model, Adapter(), batches, ["a"], 1)["a"])
    torch.testing.assert_close(measured, _exact(model, batches), rtol=1e-5, atol=1e-7)


def _record(out_gram: bool, data_rank: int = 8) -> dict:
    torch.manual_seed(1)
    w = torch.randn(6, 8, dtype=F64)
    x = torch.randn(40, data_rank, dtype=F64) @ torch.randn(data_rank, 8, dtype=F64)  # (rows, in)
    gram = (x @ w.T).T @ (x @ w.T) if out_gram else x.T @ x  # (out, out) or (in, in)
    return dict(math=svd_layer.LayerMath(w, gram, out_gram, None, None, float((x @ w.T).square().sum())),
                rank=3, alpha=0.5)


def test_the_ratio_is_one_under_the_weighting_fitted_and_above_one_under_another():
    for out_gram in (False, True):
        rec = _record(out_gram)
        f1, f2 = (lambda a: a @ a.T)(torch.randn(6, 6, dtype=F64)), torch.diag(torch.arange(1.0, 7.0, dtype=F64))
        (r1, i1), (r2, i2) = sqrt_pair(f1, 1e-3), sqrt_pair(f2, 1e-3)
        made = tool.factors(rec, r1, i1, "t")
        assert abs(tool.ratio(rec, made, r1, "t") - 1) < 1e-9, out_gram
        assert tool.ratio(rec, made, r2, "t") > 1 + 1e-6, out_gram
        assert abs(tool.ratio(rec, tool.factors(rec, r2, i2, "t"), r2, "t") - 1) < 1e-9, out_gram


def test_a_layer_whose_data_spans_at_most_its_rank_has_no_ratio():
    for out_gram in (False, True):
        rec = _record(out_gram, data_rank=3)
        root, inv = sqrt_pair(torch.diag(torch.arange(1.0, 7.0, dtype=F64)), 1e-3)
        assert tool.ratio(rec, tool.factors(rec, root, inv, "t"), root, "t") is None, out_gram
