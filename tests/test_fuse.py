import pytest
import torch

from compress import load_transformer, save_compressed
from compress.arch import get_adapter
from compress.fuse import FusedGELU, fuse_gelu
from compress.lowrank import LowRankLinear
from tests.conftest import factorize, forward, model_inputs, tiny_flux, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


def _factorize_mlp(model, rank=4):
    """Every MLP-role linear becomes a LowRankLinear (plain SVD factors)."""
    return factorize(model, [i.name for i in get_adapter(model).linears(model) if i.role == "mlp"], rank)


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_fusion_changes_nothing_but_where_gelu_runs(make):
    model = _factorize_mlp(make())
    inputs = model_inputs(model)
    before, keys = forward(model, inputs), set(model.state_dict())
    fused = fuse_gelu(model)
    expected = {n for n, m in model.named_modules() if isinstance(m, LowRankLinear)
                and (n.endswith("ff.net.0.proj") or n.endswith("ff_context.net.0.proj") or n.endswith("proj_mlp"))}
    assert fused and set(fused) == expected
    for name in fused:
        assert model.get_submodule(name).activation == "gelu_tanh"
    assert set(model.state_dict()) == keys  # same parameter names: no new output format
    assert torch.equal(forward(model, inputs), before)
    assert fuse_gelu(model) == []  # idempotent


def test_dense_ffn_is_left_alone():
    model = tiny_pixart()
    assert fuse_gelu(model) == []
    assert not any(isinstance(m, FusedGELU) for m in model.modules())


def test_the_kernel_receives_the_activation(monkeypatch):
    """On CUDA the fused layer hands the activation to the Triton kernel (recorded here on CPU)."""
    import compress.kernels as kernels

    model = _factorize_mlp(tiny_pixart())
    fuse_gelu(model)
    seen = []

    def fake(x, down, up, bias=None, activation=None):
        seen.append(activation)
        y = x @ down.T @ up.T + (bias if bias is not None else 0)
        return torch.nn.functional.gelu(y, approximate="tanh") if activation else y

    monkeypatch.setattr(kernels, "lowrank_linear", fake)
    monkeypatch.setattr(LowRankLinear, "_kernel_ok", lambda self, x: True)
    inputs = model_inputs(model)
    reference = forward(model, inputs)
    assert "gelu_tanh" in seen and None in seen  # ff.net.0.proj fused; ff.net.2 plain
    monkeypatch.undo()
    assert torch.allclose(reference, forward(model, inputs), atol=1e-5)


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_saved_model_loads_fused(tmp_path, make):
    model = _factorize_mlp(make())
    fuse_gelu(model)
    back = load_transformer(save_compressed(model, tmp_path / "out"))
    inputs = model_inputs(model)
    assert any(isinstance(m, LowRankLinear) and m.activation == "gelu_tanh" for m in back.modules())
    assert torch.equal(forward(back, inputs), forward(model, inputs))
