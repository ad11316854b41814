"""Fused and split low-rank kernels vs the torch reference; the autograd Function; module dispatch.

On CPU these run in the Triton interpreter (conftest.py), fp32 and fp16 only, at small odd shapes
(the interpreter config uses 16-wide tiles, so every shape below spans several masked tiles)."""

from types import SimpleNamespace

import pytest
import torch

from compress.kernels import HAS_TRITON, lowrank_linear, lowrank_linear_ref
from compress.lowrank import LowRankLinear
from tests.kernels._env import DEVICE, KERNELS_RUN_HERE, ON_GPU, SKIP_REASON

needs_kernels = pytest.mark.skipif(not KERNELS_RUN_HERE, reason=SKIP_REASON)


@pytest.fixture
def device() -> str:
    return DEVICE  # "cuda" on a GPU machine, else "cpu" (Triton interpreter)
cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]  # markers

# fp16 keeps 10 mantissa bits: one ulp is at most 2^-10 |y| ~ 1e-3 |y|. Kernel and reference both accumulate
# in fp32 and round the intermediate and the output once, so they differ by rounding flips: rtol allows two
# ulps, atol covers outputs near zero (GELU's negative tail). An fp16 accumulator exceeds this at long K.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=6e-2, rtol=5e-2)}
# the Triton kernels take fp32 only under the interpreter (on CUDA no path offers them for fp32: see
# dispatch.kernels_available), so the kernel tests below that are not about a dtype use fp16 on a GPU
KERNEL_DTYPE = torch.float16 if ON_GPU else torch.float32
FP32_KERNELS = pytest.param(torch.float32, id="fp32",
                            marks=pytest.mark.skipif(ON_GPU, reason="fp32 kernels run under the interpreter only"))
# (leading dims of x, K, N, r): M not a multiple of 16, K and N odd, r not a power of two
SHAPES = [((37,), 50, 70, 23), ((2, 9), 33, 17, 7), ((5,), 16, 48, 1)]


def make_inputs(lead, k, n, r, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g)  # (..., K)
    down = torch.randn(r, k, generator=g) / k**0.5  # (r, K)
    up = torch.randn(n, r, generator=g) / r**0.5  # (N, r)
    b = torch.randn(n, generator=g) if bias else None  # (N,)
    return [t.to(device=device, dtype=dtype) if t is not None else None for t in (x, down, up, b)]


def assert_matches_ref(y, x, down, up, bias, act):
    ref = lowrank_linear_ref(x, down, up, bias, act)
    assert y.shape == ref.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.float(), ref.float(), **TOL[x.dtype])


@needs_kernels
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("dtype", [FP32_KERNELS, pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_paths_match_reference(device, path, dtype, act, bias, shape):
    x, down, up, b = make_inputs(*shape, dtype, device, bias)
    assert_matches_ref(lowrank_linear(x, down, up, b, act, path=path), x, down, up, b, act)


@needs_kernels
@pytest.mark.parametrize("path,rank", [("fused", 200), ("split", 300)])
def test_large_ranks(device, path, rank):
    x, down, up, b = make_inputs((20,), 24, 40, rank, torch.float16, device)
    assert_matches_ref(lowrank_linear(x, down, up, b, "gelu_tanh", path=path), x, down, up, b, "gelu_tanh")


@needs_kernels
@pytest.mark.parametrize("path", ["fused", "split"])
def test_half_inputs_accumulate_in_fp32_over_a_long_k(device, path):
    # 188 K tiles under the interpreter: an fp16 accumulator is off by ~6e-3 here (2e-3 at K = 50)
    x, down, up, b = make_inputs((33,), 3001, 24, 16, torch.float16, device)
    assert_matches_ref(lowrank_linear(x, down, up, b, "gelu_tanh", path=path), x, down, up, b, "gelu_tanh")


@pytest.mark.parametrize("path", ["torch", "dense", None])
def test_torch_paths_and_auto_choice(device, path):
    x, down, up, b = make_inputs((2, 9), 33, 17, 7, torch.float32, device)
    assert_matches_ref(lowrank_linear(x, down, up, b, "gelu_tanh", path=path), x, down, up, b, "gelu_tanh")


@needs_kernels
@pytest.mark.parametrize("path", ["fused", "split"])
def test_non_contiguous_and_empty_inputs(device, path):
    x, down, up, b = make_inputs((40,), 32, 24, 8, KERNEL_DTYPE, device)
    xt = x.t().contiguous().t()  # (40, 32) with column-major strides
    upt = up.t().contiguous().t()  # (24, 8) non-contiguous
    assert_matches_ref(lowrank_linear(xt, down, upt, b, path=path), x, down, up, b, None)
    empty = lowrank_linear(x[:0], down, up, b, path=path)
    assert empty.shape == (0, 24)


@needs_kernels
@pytest.mark.parametrize("path", ["fused", "split"])
def test_strided_bias_and_transposed_down(device, path):
    x, down, up, b = make_inputs((5, 8), 32, 24, 8, KERNEL_DTYPE, device)
    b_strided = torch.stack([b, -b], dim=1)[:, 0]  # (24,) with stride 2: the kernels must not read -b
    down_t = down.t().contiguous().t()  # (8, 32) column-major
    x_perm = x.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # (5, 8, 32), rows not in memory order
    y = lowrank_linear(x_perm, down_t, up, b_strided, "gelu_tanh", path=path)
    assert_matches_ref(y, x, down, up, b, "gelu_tanh")


def test_dense_weight_argument(device):
    x, down, up, b = make_inputs((9,), 20, 12, 5, torch.float32, device)
    y = lowrank_linear(x, down, up, b, path="dense", dense_weight=up @ down)
    assert_matches_ref(y, x, down, up, b, None)
    with pytest.raises(ValueError, match="dense_weight must be up @ down"):
        lowrank_linear(x, down, up, b, dense_weight=down)


def test_dense_weight_gets_no_gradient_even_alone(device):
    """gradients flow to up and down, never to dense_weight, also when it is the only tensor requiring grad"""
    x, down, up, _ = make_inputs((4,), 8, 5, 3, torch.float32, device)
    weight = (up @ down).requires_grad_()
    lowrank_linear(x, down, up, path="dense", dense_weight=weight).sum().backward()
    assert weight.grad is None


GRAD_PATHS = ["torch", "dense", pytest.param("fused", marks=needs_kernels), pytest.param("split", marks=needs_kernels)]


@pytest.mark.parametrize("path", GRAD_PATHS + [None])
def test_autocast_gives_every_path_its_dtype(device, path):
    """Under autocast every path computes in autocast's dtype, as F.linear does; fp32 leaves get fp32 grads."""
    leaves = [t.requires_grad_() for t in make_inputs((3, 7), 24, 20, 4, torch.float32, device)]
    with torch.autocast(device, dtype=torch.float16):
        y = lowrank_linear(*leaves, "gelu_tanh", path=path)
    assert_matches_ref(y, *[t.detach().half() for t in leaves], "gelu_tanh")
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)


@pytest.mark.skipif(ON_GPU, reason="interpreter-only check")
def test_cpu_bf16_autocast_is_bf16_or_a_clear_error():
    """The interpreter has no bf16 dot: under bf16 autocast the auto choice takes a torch path (bf16 out,
    as F.linear), and an explicit kernel path is refused instead of silently computing in fp32."""
    x, down, up, b = make_inputs((5,), 24, 20, 4, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lowrank_linear(x, down, up, b, path=None).dtype == torch.bfloat16
        if HAS_TRITON:
            with pytest.raises(ValueError, match="not available for torch.bfloat16"):
                lowrank_linear(x, down, up, b, path="fused")


@pytest.mark.parametrize("path", GRAD_PATHS)
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
def test_gradients_match_torch_autograd(device, path, act):
    dtype = KERNEL_DTYPE if path in ("fused", "split") else torch.float32
    leaves = [t.requires_grad_() for t in make_inputs((3, 7), 20, 18, 6, dtype, device)]
    x, down, up, b = leaves
    dy = torch.randn(3, 7, 18, device=device, dtype=dtype)
    (lowrank_linear(x, down, up, b, act, path=path) * dy).sum().backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    z = torch.nn.functional.linear(torch.nn.functional.linear(x, down), up, b)
    ((torch.nn.functional.gelu(z, approximate="tanh") if act else z) * dy).sum().backward()
    for g, t in zip(got, leaves):
        # the backward is the same torch math on every path; fp16 differs only by cuBLAS's summation order
        torch.testing.assert_close(g, t.grad, **(dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else TOL[dtype]))


def test_backward_formula_gradcheck():
    # float64 runs the torch path through the same autograd Function: an exact check of its backward
    x, down, up, b = [t.requires_grad_() for t in make_inputs((4,), 6, 5, 3, torch.float64, "cpu")]
    fn = lambda *a: lowrank_linear(*a, activation="gelu_tanh", path="torch")  # noqa: E731
    x_only = lambda x_: lowrank_linear(x_, down.detach(), up.detach(), None, path="dense")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, down, up, b))
    assert torch.autograd.gradcheck(x_only, (x,))
    # double backward (create_graph=True) through the Function's backward, GELU included
    assert torch.autograd.gradgradcheck(fn, (x, down, up, b))
    assert torch.autograd.gradgradcheck(lambda *a: lowrank_linear(*a, path="dense"), (x, down, up, b))


def test_clear_errors():
    x, down, up, b = make_inputs((4,), 8, 6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="last dim must equal"):
        lowrank_linear(x[:, :7], down, up, b)
    with pytest.raises(ValueError, match="must have rank 3"):
        lowrank_linear(x, down, up[:, :2], b)
    with pytest.raises(ValueError, match="bias must be"):
        lowrank_linear(x, down, up, b[:5])
    with pytest.raises(TypeError, match="one dtype"):
        lowrank_linear(x.half(), down, up, b)
    with pytest.raises(ValueError, match="activation must be"):
        lowrank_linear(x, down, up, b, activation="relu")
    with pytest.raises(ValueError, match="not available"):
        lowrank_linear(x, down, up, b, path="nope")
    big_down, big_up = torch.randn(300, 8), torch.randn(6, 300)
    with pytest.raises(ValueError, match="not available"):
        lowrank_linear(x, big_down, big_up, b, path="fused")  # rank 300 > the fused limit


@needs_kernels
@pytest.mark.skipif(ON_GPU, reason="interpreter-only check")
def test_interpreter_bf16_is_a_clear_error():
    from compress.kernels.fused import fused_lowrank

    x, down, up, b = make_inputs((4,), 16, 16, 4, torch.bfloat16, "cpu")
    with pytest.raises(TypeError, match="no bf16 dot"):
        fused_lowrank(x, down, up, b)
    assert_matches_ref(lowrank_linear(x, down, up, b), x, down, up, b, None)  # auto: a torch path


@pytest.mark.parametrize("act", [None, "gelu_tanh"])
def test_module_cpu_path_and_state_dict(act):
    layer = LowRankLinear(12, 10, 4, activation=act)
    assert set(layer.state_dict()) == {"down.weight", "up.weight", "up.bias"}
    x = torch.randn(2, 5, 12)
    ref = lowrank_linear_ref(x, layer.down.weight, layer.up.weight, layer.up.bias, act)
    torch.testing.assert_close(layer(x), ref)
    with pytest.raises(ValueError, match="activation"):
        LowRankLinear(12, 10, 4, activation="relu")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_module_leaves_cuda_autocast_in_another_dtype_to_torch(monkeypatch):
    """Under CUDA autocast the torch path computes in autocast's dtype; the kernels would keep x's dtype."""
    from compress.kernels import dispatch

    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    layer = LowRankLinear(12, 10, 4, dtype=torch.bfloat16)
    # stands in for a CUDA tensor (only these are read)
    x = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device=torch.device("cuda", 0))
    assert layer._kernel_ok(x)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.float16)
    assert not layer._kernel_ok(x)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert layer._kernel_ok(x)  # autocast to x's own dtype changes nothing


# ---- GPU only -------------------------------------------------------------------------------------
@cuda[0]
@cuda[1]
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
@pytest.mark.parametrize("shape", SHAPES + [((300,), 1152, 4608, 64)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_half_paths(path, act, shape, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 Triton kernels need sm_80+ (the dispatch falls back to torch there)")
    x, down, up, b = make_inputs(*shape, dtype, "cuda")
    assert_matches_ref(lowrank_linear(x, down, up, b, act, path=path), x, down, up, b, act)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_module_dispatch_and_path_cache(dtype):
    from compress.kernels import clear_path_cache, path_cache

    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 on sm < 80: the module runs its torch path (test_path_choice.py)")

    clear_path_cache()
    layer = LowRankLinear(1152, 4608, 128, activation="gelu_tanh", device="cuda", dtype=dtype)
    x = torch.randn(2, 512, 1152, device="cuda", dtype=dtype)
    y = layer(x)
    assert_matches_ref(y, x, layer.down.weight, layer.up.weight, layer.up.bias, "gelu_tanh")
    assert len(path_cache()) == 1 and set(path_cache().values()) <= {"fused", "split", "torch", "dense"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fused_not_slower_than_two_gemms():
    from triton.testing import do_bench

    x, down, up, b = make_inputs((4096,), 3072, 3072, 128, torch.float16, "cuda")
    fused = do_bench(lambda: lowrank_linear(x, down, up, b, path="fused"))
    two_gemms = do_bench(lambda: lowrank_linear(x, down, up, b, path="torch"))
    print(f"fused {fused * 1e3:.1f} us, two cuBLAS GEMMs {two_gemms * 1e3:.1f} us")
    assert fused <= 1.1 * two_gemms  # the goal is 1.3x faster; see tools/bench_kernels.py
