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
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    y = expand_ref(shrink_ref(x2, down), up, bias, activation, out_dtype=x.dtype)  # (M, N)
    return y.reshape(*x.shape[:-1], up.shape[0])


def dense_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              activation: str | None = None) -> torch.Tensor:
    """(..., K) -> (..., N): act(x @ Wᵀ + bias) for a dense W (N, K), fp32 accumulation."""
    z = x.reshape(-1, x.shape[-1]).float() @ weight.float().t()  # (M, N)
    y = apply_epilogue(z, bias, activation).to(x.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])
