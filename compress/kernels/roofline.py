"""Roofline cost model of the low-rank paths: pure functions of shapes and device peaks.

Each path is a list of kernels; a kernel's time is max(FLOPs / peak FLOP/s, bytes / bandwidth) and a
path's time is the sum over its kernels. Paths:
  fused  one kernel: x and y stream once, the rank-r intermediate stays on chip (r <= FUSED_MAX_RANK)
  split  shrink into an fp32 (M, r) buffer, then expand with the bias/GELU epilogue
  torch  two cuBLAS GEMMs (intermediate in the input dtype), GELU as an extra elementwise pass
  dense  one GEMM with W = up @ down (N, K); W is built per call unless the caller passes it
"""

from __future__ import annotations

from dataclasses import dataclass

PATHS = ("fused", "split", "torch", "dense")
FUSED_MAX_RANK = 256  # keep equal to fused.FUSED_MAX_RANK (this module must import without triton)


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: float  # dense fp16/bf16 tensor-core FLOP/s (fp32 accumulation)
    bandwidth: float  # DRAM bytes/s


@dataclass(frozen=True)
class KernelCost:
    flops: float
    bytes: float

    def time(self, spec: DeviceSpec) -> float:
        return max(self.flops / spec.peak_flops, self.bytes / spec.bandwidth)


# (substring of torch.cuda.get_device_name, peak dense fp16 FLOP/s, bandwidth B/s); the longest matching
# substring wins, so a name is never taken by a shorter one inside it ("GH200" contains "H200")
_KNOWN_GPUS = [
    ("GH200", 989e12, 4.0e12), ("H200", 989e12, 4.8e12), ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12), ("H100", 989e12, 3.35e12), ("H800", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.04e12), ("A100", 312e12, 1.6e12), ("L40S", 362e12, 0.864e12),
    ("L40", 181e12, 0.864e12), ("L4", 121e12, 0.3e12), ("A10", 125e12, 0.6e12),
    ("RTX 4090", 165e12, 1.0e12), ("RTX 3090", 71e12, 0.936e12),
]
GENERIC_GPU = DeviceSpec("unknown GPU", 100e12, 1.0e12)  # measurement at first use corrects the guess
GENERIC_CPU = DeviceSpec("cpu", 0.1e12, 20e9)


def spec_for_name(name: str) -> DeviceSpec:
    """Peak numbers for a GPU name as torch reports it; GENERIC_GPU when unknown."""
    matches = [(key, flops, bandwidth) for key, flops, bandwidth in _KNOWN_GPUS if key in name]
    if not matches:
        return DeviceSpec(name, GENERIC_GPU.peak_flops, GENERIC_GPU.bandwidth)
    _, flops, bandwidth = max(matches, key=lambda row: len(row[0]))
    return DeviceSpec(name, flops, bandwidth)


def path_kernels(path: str, m: int, k: int, n: int, r: int, elem_bytes: int = 2,
                 activation: str | None = None, dense_weight_given: bool = False) -> list[KernelCost]:
    """The kernels a path launches for (M, K) -> (M, N) at rank r, with their FLOPs and DRAM bytes."""
    e = elem_bytes
    shrink_flops, expand_flops = 2.0 * m * k * r, 2.0 * m * r * n
    act_pass = [KernelCost(m * n, 2.0 * e * m * n)] if activation else []  # separate elementwise GELU
    if path == "fused":
        return [KernelCost(shrink_flops + expand_flops, e * (m * k + r * k + r * n + m * n))]
    if path == "split":
        return [KernelCost(shrink_flops, e * (m * k + r * k) + 4.0 * m * r),
                KernelCost(expand_flops, 4.0 * m * r + e * (r * n + m * n))]
    if path == "torch":
        return [KernelCost(shrink_flops, e * (m * k + r * k + m * r)),
                KernelCost(expand_flops, e * (m * r + r * n + m * n))] + act_pass
    if path == "dense":
        build = [] if dense_weight_given else [KernelCost(2.0 * n * r * k, e * (n * r + r * k + n * k))]
        return build + [KernelCost(2.0 * m * k * n, e * (m * k + n * k + m * n))] + act_pass
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


def estimate_time(path: str, m: int, k: int, n: int, r: int, spec: DeviceSpec, **kwargs) -> float:
    """Roofline seconds of one path (sum over its kernels)."""
    return sum(c.time(spec) for c in path_kernels(path, m, k, n, r, **kwargs))


def estimate_times(m: int, k: int, n: int, r: int, spec: DeviceSpec, paths=PATHS, **kwargs) -> dict[str, float]:
    """Roofline seconds of every feasible path in `paths` (fused only for r <= FUSED_MAX_RANK)."""
    feasible = [p for p in paths if p != "fused" or r <= FUSED_MAX_RANK]
    return {p: estimate_time(p, m, k, n, r, spec, **kwargs) for p in feasible}


def choose_path(m: int, k: int, n: int, r: int, spec: DeviceSpec, paths=PATHS, **kwargs) -> str:
    """The path with the smallest roofline time; ties go to the earlier entry of `paths`."""
    times = estimate_times(m, k, n, r, spec, paths, **kwargs)
    if not times:
        raise ValueError(f"no feasible path among {tuple(paths)} for rank {r}")
    return min(times, key=times.get)


BASELINE = "torch"  # two cuBLAS GEMMs: what the layer costs without our kernels


def candidates(times: dict[str, float], slack: float = 1.5) -> list[str]:
    """Paths worth measuring: within `slack` x the best roofline estimate, best first, and the
    two-GEMM baseline always (last if not close): the Triton paths' estimates assume they reach the
    roofline, which they may not (an H200 ran the fused kernel 3x slower than two GEMMs at r <= 256,
    where the GELU's separate pass put two GEMMs outside the slack), so a measured choice is never
    slower than the baseline it was measured against."""
    best = min(times.values())
    close = sorted((p for p, t in times.items() if t <= slack * best), key=times.get)
    return close + [BASELINE] if BASELINE in times and BASELINE not in close else close


def kernel_path(r: int) -> str:
    """The Triton path a rank runs on: fused while the intermediate fits on chip, split above."""
    return "fused" if r <= FUSED_MAX_RANK else "split"


def ideal_speedup(m: int, k: int, n: int, r: int, spec: DeviceSpec, elem_bytes: int = 2) -> float:
    """Roofline-ideal speedup of the low-rank kernel path (kernel_path(r): fused, or split above
    FUSED_MAX_RANK) over the dense layer (W prebuilt)."""
    dense = estimate_time("dense", m, k, n, r, spec, elem_bytes=elem_bytes, dense_weight_given=True)
    return dense / estimate_time(kernel_path(r), m, k, n, r, spec, elem_bytes=elem_bytes)
