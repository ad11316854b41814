"""Zero-sized inputs (M = 0 rows, K = 0 in-features, N = 0 out-features, rank 0) on every path: forward,
backward, no-grad inference, the module (GELU-fused too), CPU autocast and the choice under CUDA-graph
capture. Each must give what plain torch gives (two F.linear calls) and launch no Triton kernel."""

import math

import pytest
import torch
import torch.nn.functional as F

from compress.kernels import HAS_TRITON, clear_path_cache, dispatch, lowrank_linear, path_cache, select_path
from compress.kernels.reference import as_rows
from compress.lowrank import LowRankLinear
from tests.kernels._env import KERNELS_RUN_HERE, SKIP_REASON

needs_kernels = pytest.mark.skipif(not KERNELS_RUN_HERE, reason=SKIP_REASON)
empty_init_ok = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, n)
# (leading dims of x, K, N, r), each with a zero somewhere
ZERO_SHAPES = [((0,), 8, 6, 3), ((2, 0), 8, 6, 3), ((4,), 0, 6, 3), ((3, 2), 0, 5, 4), ((4,), 8, 0, 3),
               ((4,), 8, 6, 0), ((0,), 0, 0, 0)]
PATHS = [pytest.param("fused", marks=needs_kernels), pytest.param("split", marks=needs_kernels),
         "torch", "dense", None]


@pytest.fixture
def no_kernel_launch(monkeypatch):
    """Any Triton launch fails the test: zero-sized inputs must never reach a kernel (or a zero grid)."""
    if not HAS_TRITON:
        return

    class Refuse:
        def __getitem__(self, grid):
            raise AssertionError("a Triton kernel was launched for a zero-sized input")

    from compress.kernels import fused, split

    for module, name in [(fused, "_lowrank_fused_kernel"), (split, "_shrink_kernel"), (split, "_expand_kernel")]:
        monkeypatch.setattr(module, name, Refuse())


def make(lead, k, n, r, dtype, bias=True, grad=False):
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(*lead, k, generator=g), torch.randn(r, k, generator=g), torch.randn(n, r, generator=g),
          torch.randn(n, generator=g) if bias else None]
    return [t.to(dtype).requires_grad_(grad) if t is not None else None for t in ts]


def torch_ref(x, down, up, bias, act):
    z = F.linear(F.linear(x, down), up, bias)  # (..., N)
    return F.gelu(z, approximate="tanh") if act else z


def check_same(y, ref):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    torch.testing.assert_close(y, ref, atol=0, rtol=0)  # no product has a term: bias (or 0) exactly


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
def test_forward_matches_torch(no_kernel_launch, path, dtype, act, bias, shape):
    x, down, up, b = make(*shape, dtype, bias)
    with torch.no_grad():  # inference: run_path directly, no autograd Function
        check_same(lowrank_linear(x, down, up, b, act, path=path), torch_ref(x, down, up, b, act))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
def test_backward_matches_torch(no_kernel_launch, path, act, shape):
    leaves = make(*shape, torch.float32, grad=True)
    y = lowrank_linear(*leaves, act, path=path)
    ref = torch_ref(*leaves, act)
    check_same(y, ref)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    for g, w, t in zip(got, want, leaves):
        assert g.shape == t.shape
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    lead, k, n, r = shape
    if 0 in (math.prod(lead), n):
        assert all(not g.any() for g in got)  # no rows, or no outputs: every gradient is zero
    elif 0 in (k, r):
        assert not got[2].any() and got[3].any()  # h = 0: up gets nothing, the bias gets dy's row sums


@empty_init_ok
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
@pytest.mark.parametrize("in_f,out_f,lead", [(12, 10, (0,)), (12, 10, (2, 0)), (0, 10, (3,)), (12, 0, (3,))],
                         ids=str)
def test_module_forward_backward(no_kernel_launch, act, in_f, out_f, lead):
    layer = LowRankLinear(in_f, out_f, 4, activation=act)
    x = torch.randn(*lead, in_f, requires_grad=True)
    ref = torch_ref(x, layer.down.weight, layer.up.weight, layer.up.bias, act)
    check_same(layer(x), ref)
    layer._kernel_ok = lambda x: True  # the route CUDA takes: compress.kernels.lowrank_linear
    y = layer(x)
    check_same(y, ref)
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.up.bias.grad.shape == (out_f,)


@empty_init_ok
@pytest.mark.parametrize("in_f,out_f,lead", [(12, 10, (0,)), (0, 10, (3,)), (12, 0, (3,))], ids=str)
def test_module_under_cpu_autocast(in_f, out_f, lead):
    layer = LowRankLinear(in_f, out_f, 4)
    x = torch.randn(*lead, in_f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ref = torch_ref(x, layer.down.weight, layer.up.weight, layer.up.bias, None)
    check_same(y, ref)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("capturing", [False, True], ids=["eager", "capture"])
@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
def test_zero_sizes_take_the_torch_path_untimed_and_uncached(monkeypatch, capturing, shape):
    """The CUDA choice on CPU tensors (timing and capture faked): nothing to time, nothing cached."""
    def refuse_measure(*args):
        raise AssertionError("a zero-sized input was timed")

    monkeypatch.setattr(dispatch, "_measurable", lambda x2: True)
    monkeypatch.setattr(dispatch, "_measure", refuse_measure)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    clear_path_cache()
    try:
        x, down, up, b = make(*shape, torch.float32)
        assert select_path(as_rows(x), down, up, b, "gelu_tanh") == "torch"
        check_same(lowrank_linear(x, down, up, b, "gelu_tanh"), torch_ref(x, down, up, b, "gelu_tanh"))
        assert path_cache() == {}
    finally:
        clear_path_cache()


def test_rank_zero_layers_are_refused():
    with pytest.raises(ValueError, match="rank-0 factors .*up \\[5, 0\\], down \\[0, 4\\]"):
        LowRankLinear.from_factors(torch.randn(5, 0), torch.randn(0, 4), torch.randn(5))
    with pytest.raises(ValueError, match=r"LowRankLinear\(4 -> 5\): rank must be at least 1, got 0"):
        LowRankLinear(4, 5, 0)
    with pytest.raises(ValueError, match="up must be \\[out, r\\] and down \\[r, in\\]"):
        LowRankLinear.from_factors(torch.randn(5, 3), torch.randn(2, 4), None)
