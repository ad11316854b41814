"""LowRankLinear's kernel path must not bypass what is attached to its `down` / `up` children.

The kernel path (CUDA, fp16/bf16) reads the factor weights directly. Here it is simulated on CPU the
way tests/test_fuse.py does it: `_kernel_ok` forced True (the Triton interpreter runs the kernels on
CPU), and a spy on `compress.kernels.lowrank_linear` tells which path ran.
"""

import pytest
import torch
from torch import nn

import compress.kernels
from compress.lowrank import LowRankLinear


@pytest.fixture
def kernel_calls(monkeypatch):
    """Simulates the CUDA fp16/bf16 route and counts the kernel calls (the real kernel still runs)."""
    calls = []
    real = compress.kernels.lowrank_linear

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(LowRankLinear, "_kernel_ok", lambda self, x: True)
    monkeypatch.setattr(compress.kernels, "lowrank_linear", spy)
    return calls


def _layer():
    torch.manual_seed(0)
    return LowRankLinear(64, 48, 8)


def test_plain_factors_take_the_kernel_path(kernel_calls):
    layer, x = _layer(), torch.randn(4, 64)
    expected = layer.up(layer.down(x))
    torch.testing.assert_close(layer(x), expected)
    assert len(kernel_calls) == 1  # the check must not turn the fast path off for ordinary layers


def test_sequential_cpu_offload_hooks_on_the_factors_run(kernel_calls):
    """accelerate.cpu_offload (enable_sequential_cpu_offload) leaves the factor weights on `meta`
    until the children's own forward loads them; the kernel path crashed on them."""
    accelerate = pytest.importorskip("accelerate")
    model = nn.Sequential(_layer(), nn.GELU())
    x = torch.randn(4, 64)
    expected = model(x)
    kernel_calls.clear()
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    assert model[0].down.weight.device.type == "meta"
    torch.testing.assert_close(model(x), expected)
    assert not kernel_calls


def test_peft_lora_on_the_factors_is_applied(kernel_calls):
    """peft adapters injected on "<layer>.down" / "<layer>.up" replace the children with wrappers; the
    kernel path silently used the base weights and trained nothing."""
    peft = pytest.importorskip("peft")
    model = nn.Sequential(_layer())
    config = peft.LoraConfig(r=4, target_modules=["0.down", "0.up"], init_lora_weights=False)
    peft.inject_adapter_in_model(config, model)
    x = torch.randn(4, 64)
    lowrank = model[0]
    expected = lowrank.up(lowrank.down(x))
    y = model(x)
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    lora_grads = [n for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert len(lora_grads) == 4


def test_forward_hooks_on_the_factors_run(kernel_calls):
    layer, x = _layer(), torch.randn(4, 64)
    seen = []
    layer.down.register_forward_hook(lambda module, args, out: seen.append("down"))
    layer.up.register_forward_pre_hook(lambda module, args: seen.append("up"))
    layer(x)
    assert seen == ["down", "up"] and not kernel_calls


def test_global_module_hooks_see_the_factors(kernel_calls):
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(type(module).__name__))
    try:
        _layer()(torch.randn(2, 64))
    finally:
        handle.remove()
    assert seen.count("Linear") == 2 and not kernel_calls


def test_factor_weights_on_another_device_take_the_torch_path(kernel_calls):
    layer = _layer().to("meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        layer(torch.randn(2, 64))  # torch's own error for mixed meta/cpu, not the kernel's
    assert not kernel_calls
