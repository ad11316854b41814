"""Split low-rank linear for large ranks: a shrink kernel h = x @ downᵀ into an fp32 (M, r) buffer,
then an expand kernel y = act(h @ upᵀ + bias) with the bias/GELU epilogue. Both are tiled GEMMs with
a 2-D grid, so they fill the GPU where the fused kernel's on-chip intermediate would not fit."""

from __future__ import annotations

import torch

from ._compat import TRITON_VERSION, gate_configs, interpreting, tl, triton
from .checks import check_kernel_dtype, check_lowrank_args
from .fused import _gelu_tanh, dot_precision, m_bucket
from .reference import as_rows, zero_size_result



def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                         num_warps=warps, num_stages=stages)


# with triton 3.7 to 3.9 every config compiles for sm_90 without spills (tests/kernels/compile_sm90.py
# --kept-configs); the 64x128 and 128x64 tiles at BK 64 take 8 warps: with 4 they spilled (stack 24 and up to 664 bytes)
_ALL_GPU_CONFIGS = [
    _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 32, 8, 4), _cfg(64, 256, 32, 8, 3), _cfg(64, 128, 64, 8, 4),
    _cfg(128, 64, 64, 8, 4), _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(32, 64, 64, 4, 4),
]
# older triton spilled with some (expand, stack 8 to 96 bytes; 3.4's shrink at 128x128x64 too): (BM, BN, BK,
# warps, stages) -> the first triton that compiled shrink and expand without spills (3.4.0, 3.5.1, 3.6.0 checked)
_FIRST_TRITON_WITHOUT_SPILLS = {(128, 128, 64, 8, 3): (3, 5), (64, 128, 64, 8, 4): (3, 5), (64, 64, 64, 4, 4): (3, 7)}


def gpu_configs(triton_version: tuple) -> list:
    """The configs that compile for sm_90 without spills with this triton."""
    def key(c):
        return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages

    return [c for c in _ALL_GPU_CONFIGS if _FIRST_TRITON_WITHOUT_SPILLS.get(key(c), (0, 0)) <= triton_version]


_GPU_CONFIGS = gpu_configs(TRITON_VERSION)
_INTERP_CONFIG = _cfg(16, 16, 16, 4, 1, group=2)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped launch order (GROUP_M row tiles share their column tiles in L2)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _matmul_tile(a_ptr, b_ptr, M, N, K, stride_am, stride_ak, stride_bn, stride_bk, pid_m, pid_n,
                 PRECISION: tl.constexpr, CAST_A: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 (BM, BN) tile of A @ Bᵀ for A (M, K), B (N, K); A is cast to B's dtype when CAST_A."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    # every index · stride in int64: rows · stride pass 2³¹ (Flux proj_out: K = 15360, M ≥ 140k), and so
    # can k · stride of a column-strided x or any product of an oddly strided weight view
    row_at = rows.to(tl.int64)
    col_at = cols.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_at = ks.to(tl.int64)
        a = tl.load(a_ptr + row_at[:, None] * stride_am + k_at[None, :] * stride_ak,
                    mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)  # (BM, BK)
        b = tl.load(b_ptr + k_at[:, None] * stride_bk + col_at[None, :] * stride_bn,
                    mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)  # (BK, BN) = Bᵀ tile
        if CAST_A:
            a = a.to(b.dtype)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc, rows, cols


@triton.autotune(configs=gate_configs(_GPU_CONFIGS, _INTERP_CONFIG), key=["M_BUCKET", "K", "R"])
@triton.jit
def _shrink_kernel(x_ptr, down_ptr, h_ptr, M, K, R, M_BUCKET,
                   stride_xm, stride_xk, stride_dr, stride_dk, stride_hm, stride_hr,
                   PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, R, BLOCK_M, BLOCK_N, GROUP_M)
    h, rows, ranks = _matmul_tile(x_ptr, down_ptr, M, R, K, stride_xm, stride_xk, stride_dr, stride_dk,
                                  pid_m, pid_n, PRECISION, False, BLOCK_M, BLOCK_N, BLOCK_K)  # (BM, BR)
    tl.store(h_ptr + rows[:, None].to(tl.int64) * stride_hm + ranks[None, :] * stride_hr, h,
             mask=(rows[:, None] < M) & (ranks[None, :] < R))


@triton.autotune(configs=gate_configs(_GPU_CONFIGS, _INTERP_CONFIG), key=["M_BUCKET", "N", "R"])
@triton.jit
def _expand_kernel(h_ptr, up_ptr, bias_ptr, y_ptr, M, N, R, M_BUCKET,
                   stride_hm, stride_hr, stride_un, stride_ur, stride_ym, stride_yn,
                   HAS_BIAS: tl.constexpr, ACT_GELU: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # the fp32 intermediate is rounded to the input dtype as it is loaded (CAST_A)
    z, rows, cols = _matmul_tile(h_ptr, up_ptr, M, N, R, stride_hm, stride_hr, stride_un, stride_ur,
                                 pid_m, pid_n, PRECISION, True, BLOCK_M, BLOCK_N, BLOCK_K)  # (BM, BN)
    col_ok = cols < N
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if ACT_GELU:
        z = _gelu_tanh(z)
    tl.store(y_ptr + rows[:, None].to(tl.int64) * stride_ym + cols[None, :] * stride_yn,
             z.to(y_ptr.dtype.element_ty), mask=(rows[:, None] < M) & col_ok[None, :])


def _grid(m: int, n: int):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def shrink(x2: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """(M, K) @ (r, K)ᵀ -> fp32 (M, r)."""
    m, k = x2.shape
    rank = down.shape[0]
    if 0 in (m, k, rank):  # an empty h, or (K = 0) a sum of no terms: no kernel launch
        return torch.zeros((m, rank), device=x2.device, dtype=torch.float32)
    h = torch.empty((m, rank), device=x2.device, dtype=torch.float32)  # (M, r)
    _shrink_kernel[_grid(m, rank)](
        x2, down, h, m, k, rank, m_bucket(m),
        x2.stride(0), x2.stride(1), down.stride(0), down.stride(1), h.stride(0), h.stride(1),
        PRECISION=dot_precision(x2.dtype))
    return h


def expand(h: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """fp32 (M, r) -> act(h @ upᵀ + bias) (M, N) in up's dtype."""
    m, rank = h.shape
    n = up.shape[0]
    if 0 in (m, n, rank):  # nothing to write, or (r = 0) a sum of no terms: no kernel launch
        return zero_size_result(m, n, bias, activation, up.dtype, h.device)
    bias = bias.contiguous() if bias is not None else None  # the kernel reads bias[cols] at unit stride
    y = torch.empty((m, n), device=h.device, dtype=up.dtype)  # (M, N)
    _expand_kernel[_grid(m, n)](
        h, up, bias if bias is not None else y, y, m, n, rank, m_bucket(m),
        h.stride(0), h.stride(1), up.stride(0), up.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, ACT_GELU=activation == "gelu_tanh", PRECISION=dot_precision(up.dtype))
    return y


def split_lowrank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """(..., K) -> (..., N) with shrink then expand (any rank)."""
    check_lowrank_args(x, down, up, bias, activation)
    check_kernel_dtype(x, interpreting())
    x2 = as_rows(x)  # (M, K)
    m, k, rank, n = x2.shape[0], x2.shape[1], down.shape[0], up.shape[0]
    if 0 in (m, k, n, rank):  # nothing to multiply (or nothing to write): no kernel launch
        y = zero_size_result(m, n, bias, activation, x.dtype, x.device)  # (M, N)
    else:
        y = expand(shrink(x2, down), up, bias, activation)  # (M, N)
    return y.reshape(*x.shape[:-1], n)
