"""Plain-torch references for the low-rank kernels (the semantics the kernels must match).

Numerics shared by every path: products accumulate in fp32; the rank-r intermediate h = x @ downᵀ is
rounded to the input dtype before the second product (what two half-precision GEMMs do); bias and
activation are applied in fp32 and the result is rounded once to the input dtype.
"""

from __future__ import annotations

import math

import torch

ACTIVATIONS = (None, "gelu_tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh_ref(z: torch.Tensor) -> torch.Tensor:
    """0.5 z (1 + tanh(√(2/π)(z + 0.044715 z³))), the FFN activation of PixArt-Σ and Flux."""
    return torch.nn.functional.gelu(z, approximate="tanh")


def apply_epilogue(z: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """fp32 (M, N) -> fp32 (M, N): + bias, then the activation."""
    if bias is not None:
        z = z + bias.float()
    if activation == "gelu_tanh":
        z = gelu_tanh_ref(z)
    return z


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K) with M the product of the leading dims; unlike reshape(-1, K) it also works
    when K = 0 (then -1 could be any M)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def zero_size_result(m: int, n: int, bias: torch.Tensor | None, activation: str | None,
                     dtype: torch.dtype, device) -> torch.Tensor:
    """(M, N) when one of M, K, N, r is 0: no product has a term, so z = 0 (+ bias) and y = act(z)
    rounded once to dtype, as the reference computes it; empty when M or N is 0. No kernel is launched."""
    z = torch.zeros((m, n), device=device, dtype=torch.float32)  # (M, N)
    return apply_epilogue(z, bias, activation).to(dtype)


def shrink_ref(x: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """(M, K) @ (r, K)ᵀ -> fp32 (M, r)."""
    return x.float() @ down.float().t()


def expand_ref(h: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """fp32 (M, r) -> act(h @ upᵀ + bias) (M, N) in out_dtype (default: up's dtype)."""
    out_dtype = out_dtype or up.dtype
    h = h.to(out_dtype).float()  # the intermediate is rounded to the input dtype
    return apply_epilogue(h @ up.float().t(), bias, activation).to(out_dtype)


def lowrank_linear_ref(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """(..., K) -> (..., N): act((x @ downᵀ) @ upᵀ + bias) with the numerics above."""
    x2 = as_rows(x)  # (M, K)
    y = expand_ref(shrink_ref(x2, down), up, bias, activation, out_dtype=x.dtype)  # (M, N)
    return y.reshape(*x.shape[:-1], up.shape[0])


def dense_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              activation: str | None = None) -> torch.Tensor:
    """(..., K) -> (..., N): act(x @ Wᵀ + bias) for a dense W (N, K), fp32 accumulation."""
    z = as_rows(x).float() @ weight.float().t()  # (M, N)
    y = apply_epilogue(z, bias, activation).to(x.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])
