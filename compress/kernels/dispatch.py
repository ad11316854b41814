"""Run one path, and choose the path per (device, dtype, M bucket, K, N, r, epilogue).

The choice starts from the roofline estimate (roofline.py). On CUDA the roofline pick and its close
competitors are each timed once at first use and the fastest is cached in a process-wide dict. On CPU
(torch or the Triton interpreter) nothing is measured: the roofline pick is returned.
Zero-sized inputs (M, K, N or r = 0) take the torch path: nothing to multiply, launch or time.
bf16 on a GPU below compute capability 8.0 gets no Triton path (the kernels cannot compile there):
the torch paths run instead, with a warning once per process.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import roofline
from ._compat import HAS_TRITON, interpreting, next_pow2
from .checks import KERNEL_DTYPES, bf16_kernels_compile, cuda_capability

if HAS_TRITON:
    from . import fused, split  # referenced as modules so tests can re-decorate them under the interpreter

_CHOICES: dict[tuple, str] = {}  # cache key -> path
_BF16_WARNED = False  # the sm < 80 bf16 fallback is announced once per process


def kernels_available(x: torch.Tensor) -> bool:
    """Can the Triton kernels run on x's device and dtype here?"""
    if not HAS_TRITON or x.dtype not in KERNEL_DTYPES:
        return False
    if interpreting():
        return x.device.type == "cpu" and x.dtype != torch.bfloat16
    if not x.is_cuda or x.dtype == torch.float32:  # fp32 kernels exist for the interpreter tests only
        return False
    if x.dtype == torch.bfloat16 and not bf16_kernels_compile(x.device):
        _warn_bf16_fallback(x.device)
        return False
    return True


def _warn_bf16_fallback(device: torch.device) -> None:
    global _BF16_WARNED
    if _BF16_WARNED:
        return
    _BF16_WARNED = True
    major, minor = cuda_capability(device)
    warnings.warn(f"compress.kernels: {device} has compute capability {major}.{minor}; the bf16 Triton "
                  f"kernels need 8.0 (sm_80) or newer, so bf16 low-rank layers run as plain torch matmuls "
                  f"there (unfused; float16 keeps the kernels). Shown once per process.", stacklevel=3)


def available_paths(x: torch.Tensor, rank: int) -> tuple[str, ...]:
    triton_paths = ("fused", "split") if kernels_available(x) else ()
    paths = triton_paths + ("torch", "dense")
    return tuple(p for p in paths if p != "fused" or rank <= roofline.FUSED_MAX_RANK)


def _apply_act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.gelu(y, approximate="tanh") if activation == "gelu_tanh" else y


def run_path(path: str, x2: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None,
             activation: str | None, dense_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(M, K) -> (M, N) by one path; inputs already checked."""
    if path == "fused":
        return fused.fused_lowrank(x2, down, up, bias, activation)
    if path == "split":
        return split.split_lowrank(x2, down, up, bias, activation)
    if path == "torch":
        return _apply_act(F.linear(F.linear(x2, down), up, bias), activation)  # (M, r) then (M, N)
    if path == "dense":
        weight = dense_weight if dense_weight is not None else up @ down  # (N, K)
        return _apply_act(F.linear(x2, weight, bias), activation)
    raise ValueError(f"unknown path {path!r}; expected one of {roofline.PATHS}")


def device_spec(device: torch.device) -> roofline.DeviceSpec:
    if device.type == "cuda":
        return roofline.spec_for_name(torch.cuda.get_device_name(device))
    return roofline.GENERIC_CPU


def _key(x2, rank, n, activation, has_bias, dense_given) -> tuple:
    m, k = x2.shape
    return (str(x2.device), x2.dtype, max(16, next_pow2(m)), k, n, rank, activation, has_bias, dense_given)


def _measure(paths, x2, down, up, bias, activation, dense_weight) -> dict[str, float]:
    """Milliseconds per call of each path, one do_bench each (the first call also autotunes)."""
    from triton.testing import do_bench

    def timed(p):
        return do_bench(lambda: run_path(p, x2, down, up, bias, activation, dense_weight), warmup=5, rep=20)

    return {p: timed(p) for p in paths}


def _measurable(x2: torch.Tensor) -> bool:
    """Are paths timed (and the choice cached) for x2's device? CUDA with Triton only."""
    return x2.is_cuda and HAS_TRITON


def select_path(x2: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None,
                activation: str | None, dense_weight: torch.Tensor | None = None) -> str:
    """The path for these inputs: cached measured choice on CUDA, roofline choice elsewhere."""
    rank, n = down.shape[0], up.shape[0]
    m, k = x2.shape
    if 0 in (m, k, n, rank):
        return "torch"  # nothing to multiply: no kernel, nothing to time or cache (inside capture too)
    paths = available_paths(x2, rank)
    kwargs = dict(elem_bytes=x2.element_size(), activation=activation, dense_weight_given=dense_weight is not None)
    times = roofline.estimate_times(m, k, n, rank, device_spec(x2.device), paths, **kwargs)
    pick = min(times, key=times.get)
    if not _measurable(x2):
        return pick  # nothing measured: CPU or the interpreter
    key = _key(x2, rank, n, activation, bias is not None, dense_weight is not None)
    if key in _CHOICES:
        return _CHOICES[key]  # also inside CUDA-graph capture: the graph runs what eager calls ran
    if torch.cuda.is_current_stream_capturing():
        return pick  # no timing allowed (capture); not cached
    measured = _measure(roofline.candidates(times), x2, down, up, bias, activation, dense_weight)
    _CHOICES[key] = min(measured, key=measured.get)
    return _CHOICES[key]


def path_cache() -> dict[tuple, str]:
    """A copy of the measured choices: (device, dtype, M bucket, K, N, r, activation, bias, dense W) -> path."""
    return dict(_CHOICES)


def clear_path_cache() -> None:
    _CHOICES.clear()
