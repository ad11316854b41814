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


FFN_INPUT = {"PixArtTransformer2DModel": "transformer_blocks.0.ff.net.0.proj",
             "FluxTransformer2DModel": "single_transformer_blocks.0.proj_mlp"}


def _swapped_in(layer, how):
    """A layer of `layer`'s weights as a user swaps one in: LowRankLinear.from_factors (no activation)
    or a dense nn.Linear of its `.weight`."""
    if how == "from_factors":
        return LowRankLinear.from_factors(layer.up.weight.detach(), layer.down.weight.detach(), layer.up.bias.detach())
    dense = torch.nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
        dense.bias.copy_(layer.bias)
    return dense


@pytest.mark.parametrize("how", ["from_factors", "dense"])
@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_a_layer_swapped_in_for_a_fused_one_keeps_its_gelu(tmp_path, make, how):
    """T2 (stop 50): a loaded output's ff.net.0.proj (PixArt) or proj_mlp (Flux single block) swapped for
    LowRankLinear.from_factors of its own factors (as docs/OUTPUTS.md says) or a dense nn.Linear lost the
    tanh-GELU in memory (FusedGELU / act_mlp = nn.Identity applied none; PixArt's output 0.164 off),
    while save_compressed + load_transformer of it gave the right model. Now both give the same."""
    model = _factorize_mlp(make())
    fuse_gelu(model)
    inputs = model_inputs(model)
    reference = forward(model, inputs)
    name = FFN_INPUT[type(model).__name__]
    model.set_submodule(name, _swapped_in(model.get_submodule(name), how))
    swapped = forward(model, inputs)
    reloaded = forward(load_transformer(save_compressed(model, tmp_path / "out")), inputs)
    assert torch.allclose(swapped, reference, atol=1e-5)
    assert torch.allclose(swapped, reloaded, atol=1e-5)


def test_a_flux_models_copies_apply_the_gelu_their_own_blocks_call_for():
    """The Flux single block's act_mlp reads the block it sits in: a deepcopy's or a pickled copy's reads
    the copy's (a swap in one changes nothing in the other), and holds no reference that keeps a
    deleted model alive."""
    import copy
    import gc
    import pickle
    import weakref

    model = _factorize_mlp(tiny_flux())
    fuse_gelu(model)
    inputs = model_inputs(model)
    reference = forward(model, inputs)
    name = FFN_INPUT["FluxTransformer2DModel"]
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        twin.get_submodule(name).activation = None  # the copy's layer no longer applies it: its act_mlp does
        assert torch.allclose(forward(twin, inputs), reference, atol=1e-5)
        assert torch.equal(forward(model, inputs), reference)
        twin.single_transformer_blocks[0].act_mlp = torch.nn.Identity()  # and now nothing does
        assert not torch.allclose(forward(twin, inputs), reference, atol=1e-3)
    gc.disable()
    try:
        gone = weakref.ref(model)
        del model
        assert gone() is None  # freed at once: no reference cycle
    finally:
        gc.enable()
