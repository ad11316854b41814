"""The roofline path model and choice: pure functions, tested with given peak numbers. Also: the
package imports and works without Triton."""

import subprocess
import sys

import pytest

from compress.kernels import HAS_TRITON, DeviceSpec, choose_path, estimate_times, ideal_speedup, spec_for_name
from compress.kernels.roofline import _KNOWN_GPUS, FUSED_MAX_RANK, candidates, path_kernels

GPU = DeviceSpec("test gpu", peak_flops=1000e12, bandwidth=2e12)


def test_fused_time_is_its_memory_roofline_at_small_rank():
    m, k, n, r = 4096, 3072, 3072, 32
    times = estimate_times(m, k, n, r, GPU)
    assert times["fused"] == pytest.approx(2 * (m * k + r * k + r * n + m * n) / GPU.bandwidth)
    assert choose_path(m, k, n, r, GPU) == "fused"
    assert times["fused"] < times["torch"] < times["split"] < times["dense"]


def test_fused_is_not_offered_above_its_rank_limit():
    times = estimate_times(4096, 3072, 3072, FUSED_MAX_RANK + 1, GPU)
    assert "fused" not in times and set(times) == {"split", "torch", "dense"}


@pytest.mark.parametrize("activation,expected", [(None, "torch"), ("gelu_tanh", "split")])
def test_large_rank_split_wins_when_its_epilogue_saves_a_pass(activation, expected):
    # r = 512 > fused limit: with GELU the two-GEMM path needs an extra elementwise pass over (M, N)
    assert choose_path(4096, 3072, 12288, 512, GPU, activation=activation) == expected


@pytest.mark.parametrize("given", [True, False])
def test_dense_wins_when_the_factors_are_bigger_than_the_matrix(given):
    # r = 1024 on 1152x1152: 2 M r (K + N) > 2 M K N, even counting the W = up @ down build
    assert choose_path(4096, 1152, 1152, 1024, GPU, dense_weight_given=given) == "dense"


def test_building_dense_weight_per_call_is_charged():
    built = path_kernels("dense", 64, 3072, 3072, 256)
    given = path_kernels("dense", 64, 3072, 3072, 256, dense_weight_given=True)
    assert len(built) == 2 and len(given) == 1 and built[0].flops == 2 * 3072 * 256 * 3072
    assert choose_path(64, 3072, 3072, 256, GPU, paths=("torch", "dense")) == "torch"


def test_choice_respects_available_paths_and_ties_go_first():
    assert choose_path(4096, 3072, 3072, 32, GPU, paths=("torch", "dense")) == "torch"
    with pytest.raises(ValueError, match="no feasible path"):
        choose_path(16, 32, 32, 300, GPU, paths=("fused",))
    with pytest.raises(ValueError, match="unknown path"):
        estimate_times(16, 32, 32, 8, GPU, paths=("cutlass",))


def test_compute_bound_when_flops_dominate():
    slow_math = DeviceSpec("slow", peak_flops=1e12, bandwidth=2e12)
    m, k, n, r = 4096, 3072, 3072, 128
    assert estimate_times(m, k, n, r, slow_math)["fused"] == pytest.approx(2 * m * r * (k + n) / 1e12)


def test_ideal_speedup_is_dense_over_fused_and_falls_with_rank():
    m, k, n = 4096, 3072, 3072
    dense = max(2 * m * k * n / GPU.peak_flops, 2 * (m * k + k * n + m * n) / GPU.bandwidth)
    fused = max(2 * m * 32 * (k + n) / GPU.peak_flops, 2 * (m * k + 32 * (k + n) + m * n) / GPU.bandwidth)
    assert ideal_speedup(m, k, n, 32, GPU) == pytest.approx(dense / fused)
    speedups = [ideal_speedup(m, k, n, r, GPU) for r in (32, 256, 1024, 2048)]
    assert speedups == sorted(speedups, reverse=True) and speedups[-1] < 1


def test_ideal_speedup_models_the_split_path_above_the_fused_rank_limit():
    m, k, n, r = 4096, 3072, 3072, FUSED_MAX_RANK * 2  # the split path runs here, not fused
    dense = estimate_times(m, k, n, r, GPU, dense_weight_given=True)["dense"]
    assert ideal_speedup(m, k, n, r, GPU) == pytest.approx(dense / estimate_times(m, k, n, r, GPU)["split"])
    from compress.kernels.roofline import kernel_path  # the path tools/bench_kernels.py times

    assert kernel_path(FUSED_MAX_RANK) == "fused" and kernel_path(FUSED_MAX_RANK + 1) == "split"


def test_candidates_are_the_close_competitors_best_first():
    assert candidates({"fused": 1.0, "split": 1.4, "torch": 1.2, "dense": 3.0}) == ["fused", "torch", "split"]


def test_candidates_always_measure_two_gemms():
    """The Triton paths' estimates are optimistic (an H200 ran fused 3x slower than two GEMMs): the
    two-GEMM baseline is measured even where its estimate (a GELU's separate pass) is not close."""
    assert candidates({"fused": 1.0, "split": 1.4, "torch": 1.9, "dense": 3.0}) == ["fused", "split", "torch"]
    assert candidates({"fused": 1.0, "split": 1.4}) == ["fused", "split"]  # no torch path offered: none added


def test_a_gelu_layer_measures_two_gemms_against_the_fused_kernel(monkeypatch):
    """FFN input shape of PixArt-Sigma (M 4096, K 1152, N 4608, r 64, GELU) on an H200's roofline: the
    separate GELU pass puts two GEMMs outside the slack; they are timed anyway, and win when faster."""
    import torch

    from compress.kernels import clear_path_cache, dispatch, select_path

    measured = []

    def fake_measure(paths, *args):
        measured.append(list(paths))
        return {p: (0.02 if p == "torch" else 0.07) for p in paths}  # the H200's fused-vs-two-GEMM ratio

    monkeypatch.setattr(dispatch, "_measurable", lambda x2: True)
    monkeypatch.setattr(dispatch, "_measure", fake_measure)
    monkeypatch.setattr(dispatch, "available_paths", lambda x, rank: ("fused", "split", "torch", "dense"))
    monkeypatch.setattr(dispatch, "device_spec", lambda device: spec_for_name("NVIDIA H200"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    x, down, up = torch.empty(4096, 1152, dtype=torch.float16), torch.empty(64, 1152), torch.empty(4608, 64)
    times = estimate_times(4096, 1152, 4608, 64, spec_for_name("NVIDIA H200"), elem_bytes=2, activation="gelu_tanh")
    assert times["torch"] > 1.5 * min(times.values())  # not a close competitor by its estimate
    clear_path_cache()
    try:
        assert select_path(x, down, up, None, "gelu_tanh") == "torch"
        assert measured and "torch" in measured[0] and measured[0][0] != "torch"
    finally:
        clear_path_cache()


@pytest.mark.parametrize("name,flops,bandwidth", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12), ("NVIDIA H100 PCIe", 756e12, 2.0e12),
    ("NVIDIA H200", 989e12, 4.8e12), ("NVIDIA A100-SXM4-80GB", 312e12, 2.04e12),
    ("Some Future GPU", 100e12, 1.0e12),
])
def test_spec_for_name(name, flops, bandwidth):
    spec = spec_for_name(name)
    assert (spec.name, spec.peak_flops, spec.bandwidth) == (name, flops, bandwidth)


@pytest.mark.parametrize("key", [row[0] for row in _KNOWN_GPUS])
def test_every_known_gpu_gets_its_own_row(key):
    """A name holding a shorter key (GH200 ⊃ H200, A100 ⊃ A10, L40S ⊃ L40 ⊃ L4) gets the longest key's row."""
    row = next(r for r in _KNOWN_GPUS if r[0] == key)
    spec = spec_for_name(f"NVIDIA {key} 480GB")
    assert (spec.peak_flops, spec.bandwidth) == row[1:]


def test_imports_and_torch_path_without_triton():
    code = """
import sys
sys.modules["triton"] = None  # as on a machine without triton
import torch
import compress.kernels as K
from compress.lowrank import LowRankLinear
assert not K.HAS_TRITON
x, d, u = torch.randn(3, 8), torch.randn(2, 8), torch.randn(5, 2)
assert K.available_paths(x, 2) == ("torch", "dense")
torch.testing.assert_close(K.lowrank_linear(x, d, u, activation="gelu_tanh"),
                           K.lowrank_linear_ref(x, d, u, None, "gelu_tanh"))
assert LowRankLinear(8, 5, 2)(x).shape == (3, 5)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_fused_autotune_configs_are_pruned_by_register_estimate():
    from compress.kernels import fused

    configs = fused._GPU_CONFIGS
    assert len(configs) <= 8
    assert fused._prune(configs, {}, R_PAD=16) == configs  # small ranks: every config fits
    kept = fused._prune(configs, {}, R_PAD=256)
    assert 2 <= len(kept) < len(configs)
    assert all(fused._regs(c, 256) <= fused.MAX_REGS_PER_THREAD for c in kept)


def test_measured_choice_is_kept_inside_graph_capture_and_empty_batches_are_not_timed(monkeypatch):
    """CUDA's measured choice, on CPU tensors: timing and capture are faked."""
    import torch

    from compress.kernels import clear_path_cache, dispatch, path_cache, select_path

    timed, capturing = [], [False]

    def fake_measure(paths, x2, *args):
        timed.append(x2.shape[0])
        return {"dense": 0.0}  # the "measured" winner (never the roofline pick at rank 8 of 96)

    monkeypatch.setattr(dispatch, "_measurable", lambda x2: True)
    monkeypatch.setattr(dispatch, "_measure", fake_measure)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    clear_path_cache()
    try:
        x, down, up = torch.randn(64, 96), torch.randn(8, 96), torch.randn(96, 8)
        roofline_pick = choose_path(64, 96, 96, 8, dispatch.device_spec(x.device), dispatch.available_paths(x, 8),
                                    elem_bytes=4)
        assert roofline_pick != "dense"
        assert select_path(x[:0], down, up, None, None) == "torch"  # M = 0: nothing to multiply or time
        assert timed == [] and path_cache() == {}
        assert select_path(x[:16], down, up, None, None) == "dense" and timed == [16]  # measured, cached
        capturing[0] = True
        assert select_path(x[:16], down, up, None, None) == "dense"  # capture reuses the eager choice
        assert select_path(x, down, up, None, None) == roofline_pick and timed == [16]  # new bucket: no timing
        assert len(path_cache()) == 1
    finally:
        clear_path_cache()


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a chosen compute capability, without a GPU: (capability setter, fake tensor maker)."""
    from types import SimpleNamespace

    import torch

    from compress.kernels import dispatch

    capability = [(7, 5)]
    monkeypatch.setattr(dispatch, "HAS_TRITON", True)
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(dispatch, "_BF16_WARNED", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])

    def tensor(dtype):  # only is_cuda, dtype and device are read by the selection
        return SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cuda", 0))

    return capability, tensor


def test_bf16_below_sm80_gets_no_triton_path_and_warns_once(fake_cuda):
    import warnings

    import torch

    from compress.kernels import available_paths

    capability, tensor = fake_cuda
    with pytest.warns(UserWarning, match=r"cuda:0 has compute capability 7\.5; the bf16 Triton kernels need 8\.0"):
        assert available_paths(tensor(torch.bfloat16), 64) == ("torch", "dense")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here: once per process
        assert available_paths(tensor(torch.bfloat16), 64) == ("torch", "dense")
        assert available_paths(tensor(torch.float16), 64) == ("fused", "split", "torch", "dense")
        capability[0] = (8, 0)
        assert available_paths(tensor(torch.bfloat16), 64) == ("fused", "split", "torch", "dense")
        assert available_paths(tensor(torch.bfloat16), 300) == ("split", "torch", "dense")


@pytest.mark.parametrize("capability,uses_kernels", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_module_runs_bf16_as_plain_torch_below_sm80(fake_cuda, capability, uses_kernels):
    import warnings

    import torch

    from compress.lowrank import LowRankLinear

    fake_cuda[0][0] = capability
    layer = LowRankLinear(12, 10, 4, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert layer._kernel_ok(fake_cuda[1](torch.bfloat16)) is uses_kernels
    half = LowRankLinear(12, 10, 4, dtype=torch.float16)
    assert half._kernel_ok(fake_cuda[1](torch.float16))  # fp16 kernels compile on sm_70+


def test_bf16_kernel_wrappers_refuse_below_sm80_with_a_clear_error(fake_cuda):
    import torch

    from compress.kernels.checks import check_kernel_dtype

    capability, tensor = fake_cuda
    with pytest.raises(TypeError, match=r"bf16 Triton kernels need compute capability ≥ 8\.0 .*sm_75"):
        check_kernel_dtype(tensor(torch.bfloat16), interpreting=False)
    check_kernel_dtype(tensor(torch.float16), interpreting=False)  # fp16: fine
    capability[0] = (8, 6)
    check_kernel_dtype(tensor(torch.bfloat16), interpreting=False)
