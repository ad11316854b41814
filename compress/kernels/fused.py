"""Fused low-rank linear: y = act((x @ downᵀ) @ upᵀ + bias) in one kernel.

A program owns BLOCK_M rows and one group of their output tiles. It runs the K loop into an fp32
(BLOCK_M, R_PAD) intermediate that stays on chip, rounds it once to the input dtype, then loops over its
group's output tiles with the bias/GELU epilogue; nothing rank-sized goes to memory. Good for r up to a
few hundred (the intermediate lives in registers).

Groups: with one program per row tile a (4096, K) input is 32 to 256 programs, too few for an H100/H200's
132 SMs (an H200 ran it 3x slower than two cuBLAS GEMMs). So the launcher splits each row tile's output
tiles into contiguous ranges, one program each, for up to PROGRAMS_PER_SM programs per SM (n_groups).
Every group recomputes its row tile's x @ downᵀ: n_groups x the shrink GEMM's FLOPs, its x rows read
from L2 (a row tile's groups are consecutive program ids). One group is the ungrouped kernel. The speed
of this is unmeasured (written without a GPU): tools/bench_kernels.py prints it beside one group.
"""

from __future__ import annotations

import functools

import torch

from ._compat import TRITON_VERSION, gate_configs, interpreting, next_pow2, tl, triton
from .checks import check_kernel_dtype, check_lowrank_args
from .reference import as_rows, zero_size_result
from .roofline import FUSED_MAX_RANK  # above this R_PAD spills the on-chip intermediate: split path



def _cfg(bm, bk, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# two BLOCK_N 128 configs for Hopper's tensor cores (they replaced (32, 32, 64, 4 warps) and (128, 32, 64),
# near twins of kept ones), kept up to R_PAD 64: at 128 a BN 128 tile spilled at estimate 88 to 96 (BM 32,
# BK 32 or 64), so BM 32 takes BK 128, whose estimate prunes it there (112)
_GPU_CONFIGS = [
    _cfg(16, 32, 32, 4, 3), _cfg(16, 32, 64, 8, 3), _cfg(32, 32, 64, 8, 3), _cfg(64, 32, 64, 8, 3),
    _cfg(64, 64, 64, 8, 3), _cfg(128, 64, 64, 8, 3), _cfg(32, 128, 128, 8, 3), _cfg(64, 64, 128, 8, 3),
]
_INTERP_CONFIG = _cfg(16, 16, 16, 4, 1)


def max_regs_per_thread(triton_version: tuple) -> int:
    """The register estimate a kept config may reach. sm_90 compiles (checked without a GPU,
    tests/kernels/compile_sm90.py --kept-configs) spilled at estimate 112 (R_PAD 128, BM 32, 4 warps) and 144
    (R_PAD 256, BM 64); with triton 3.7 to 3.9 every config up to 104 fits in 255 registers; triton 3.4 to 3.6
    spilled at 104 (R_PAD 256, BM 16, 4 warps: stack 8 to 168 bytes) and fit every config up to 96."""
    return 104 if triton_version >= (3, 7) else 96


MAX_REGS_PER_THREAD = max_regs_per_thread(TRITON_VERSION)


def regs_per_thread(block_m: int, block_k: int, block_n: int, num_warps: int, r_pad: int) -> float:
    """Rough 32-bit registers per thread: the fp32 (BM, R_PAD) intermediate, the half-precision weight
    tiles (BK + BN) x R_PAD held as dot operands, and the fp32 (BM, BN) tile twice (GELU epilogue)."""
    return (block_m * r_pad + r_pad * (block_k + block_n) / 2 + 2 * block_m * block_n) / (32 * num_warps)


def _regs(config, r_pad: int) -> float:
    kw = config.kwargs
    return regs_per_thread(kw["BLOCK_M"], kw["BLOCK_K"], kw["BLOCK_N"], config.num_warps, r_pad)


def kept_configs(configs, r_pad: int, triton_version: tuple = TRITON_VERSION) -> list:
    """The configs whose registers fit at this R_PAD with this triton; else the single smallest one."""
    kept = [c for c in configs if _regs(c, r_pad) <= max_regs_per_thread(triton_version)]
    return kept or [min(configs, key=lambda c: _regs(c, r_pad))]


def _prune(configs, named_args, **kwargs):
    """The autotuner's early prune: kept_configs at the launch's R_PAD."""
    return kept_configs(configs, kwargs.get("R_PAD", named_args.get("R_PAD", 16)))


@triton.jit
def _gelu_tanh(z):
    # 0.5 z (1 + tanh(u)) == z * sigmoid(2u), u = √(2/π)(z + 0.044715 z³); stable for large |z|
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    return z * tl.sigmoid(2.0 * u)


PROGRAMS_PER_SM = 2  # groups are added while a launch stays within this many programs per SM
INTERPRETER_SMS = 4  # the CPU interpreter's stand-in SM count: small, yet the tests' tiny shapes get groups


@triton.autotune(configs=gate_configs(_GPU_CONFIGS, _INTERP_CONFIG), key=["M_BUCKET", "K", "N", "R_PAD", "GROUPS"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _lowrank_fused_kernel(
    x_ptr, down_ptr, up_ptr, bias_ptr, y_ptr,
    M, K, N, R, M_BUCKET, GROUPS,
    stride_xm, stride_xk, stride_dr, stride_dk, stride_un, stride_ur, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, ACT_GELU: tl.constexpr, PRECISION: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # GROUPS (0: from the SM count, else the count asked for) only keys the autotuner; the launch's group
    # count is its grid's: (row tiles x groups,), a row tile's groups consecutive
    n_groups = tl.num_programs(0) // tl.cdiv(M, BLOCK_M)
    row_tile = tl.program_id(0) // n_groups
    group = tl.program_id(0) % n_groups
    n_tiles = tl.cdiv(N, BLOCK_N)
    first_tile = group * n_tiles // n_groups  # contiguous ranges, sizes differing by at most one; every
    last_tile = (group + 1) * n_tiles // n_groups  # group has one tile at least (n_groups <= n_tiles)
    rows = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    ranks = tl.arange(0, R_PAD)  # (R_PAD,)
    row_ok = rows < M
    rank_ok = ranks < R
    # every index · stride in int64: rows · stride pass 2³¹ (Flux proj_out: K = 15360, M ≥ 140k), and so
    # can k · stride of a column-strided x or any product of an oddly strided weight view
    row_at = rows.to(tl.int64)
    rank_at = ranks.to(tl.int64)
    # phase 1: h = x @ downᵀ, the K loop into an on-chip fp32 (BM, R_PAD) intermediate
    h = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_ok = ks < K
        k_at = ks.to(tl.int64)
        x = tl.load(x_ptr + row_at[:, None] * stride_xm + k_at[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BM, BK)
        d = tl.load(down_ptr + k_at[:, None] * stride_dk + rank_at[None, :] * stride_dr,
                    mask=k_ok[:, None] & rank_ok[None, :], other=0.0)  # (BK, R_PAD) = downᵀ tile
        h = tl.dot(x, d, h, input_precision=PRECISION)
    h_in = h.to(y_ptr.dtype.element_ty)  # (BM, R_PAD), rounded once to the input dtype
    # phase 2: loop over the group's output tiles, epilogue in fp32
    for tile in range(first_tile, last_tile):
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        col_ok = cols < N
        col_at = cols.to(tl.int64)
        u = tl.load(up_ptr + rank_at[:, None] * stride_ur + col_at[None, :] * stride_un,
                    mask=rank_ok[:, None] & col_ok[None, :], other=0.0)  # (R_PAD, BN) = upᵀ tile
        z = tl.dot(h_in, u, input_precision=PRECISION)  # (BM, BN) fp32
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if ACT_GELU:
            z = _gelu_tanh(z)
        tl.store(y_ptr + row_at[:, None] * stride_ym + col_at[None, :] * stride_yn,
                 z.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get true fp32 products (not tf32); half inputs use tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def m_bucket(m: int) -> int:
    """Autotune / path-cache key for the row count: the next power of two (at least 16)."""
    return max(16, next_pow2(m))


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; INTERPRETER_SMS elsewhere (the CPU interpreter)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


def n_groups(row_tiles: int, out_tiles: int, sms: int, groups: int | None = None) -> int:
    """Output-tile groups per row tile: `groups`, or (None) the most that keep the launch within
    PROGRAMS_PER_SM x sms programs (at least sms of them where the output tiles allow: rounding up
    instead would start a second round of programs, each recomputing its x @ downᵀ, for a few);
    at least 1, at most out_tiles (a group owns one output tile at least)."""
    want = groups if groups is not None else PROGRAMS_PER_SM * sms // row_tiles
    return max(1, min(want, out_tiles))


def launch_groups(m: int, n: int, config: dict, device: torch.device, groups: int | None = None) -> int:
    """The group count a launch at these autotune config kwargs (BLOCK_M, BLOCK_N) runs with."""
    row_tiles, out_tiles = triton.cdiv(m, config["BLOCK_M"]), triton.cdiv(n, config["BLOCK_N"])
    return n_groups(row_tiles, out_tiles, sm_count(device), groups)


def _check_groups(groups) -> None:
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
        raise ValueError(f"fused_lowrank: groups must be None (from the SM count) or an int >= 1, got {groups!r}")


def _empty_output(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """The (M, N) output, uninitialized: the kernel writes every element (tests fill it with NaN)."""
    return torch.empty((m, n), device=like.device, dtype=like.dtype)


def fused_lowrank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, groups: int | None = None) -> torch.Tensor:
    """(..., K) -> (..., N) with the fused kernel; r must be at most FUSED_MAX_RANK. groups: output-tile
    groups per row tile (None: from the SM count; capped at the output tiles; 1: the ungrouped kernel)."""
    check_lowrank_args(x, down, up, bias, activation)
    _check_groups(groups)
    check_kernel_dtype(x, interpreting())
    rank, k = down.shape
    n = up.shape[0]
    if rank > FUSED_MAX_RANK:
        raise ValueError(f"fused_lowrank: rank {rank} > {FUSED_MAX_RANK} does not fit on chip; use the split path")
    x2 = as_rows(x)  # (M, K)
    m = x2.shape[0]
    if 0 in (m, k, n, rank):  # nothing to multiply (or nothing to write): no kernel launch
        return zero_size_result(m, n, bias, activation, x.dtype, x.device).reshape(*x.shape[:-1], n)
    bias = bias.contiguous() if bias is not None else None  # the kernel reads bias[cols] at unit stride
    y = _empty_output(m, n, x)  # (M, N)

    def grid(meta):  # (row tiles x groups,)
        return (triton.cdiv(m, meta["BLOCK_M"]) * launch_groups(m, n, meta, x.device, groups),)

    _lowrank_fused_kernel[grid](
        x2, down, up, bias if bias is not None else y, y,
        m, k, n, rank, m_bucket(m), groups or 0,
        x2.stride(0), x2.stride(1), down.stride(0), down.stride(1), up.stride(0), up.stride(1),
        y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, ACT_GELU=activation == "gelu_tanh",
        PRECISION=dot_precision(x.dtype), R_PAD=max(16, next_pow2(rank)),
    )
    return y.reshape(*x.shape[:-1], n)
