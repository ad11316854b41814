"""Argument checks shared by the kernel wrappers: shapes, dtypes, devices, with messages that say
which tensor is wrong and how."""

from __future__ import annotations

import torch

from .reference import ACTIVATIONS

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BF16_MIN_CAPABILITY = (8, 0)  # Triton compiles bf16 tl.dot (tensor-core MMA) from sm_80 (Ampere) on


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"lowrank_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_lowrank_args(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                       bias: torch.Tensor | None, activation: str | None) -> None:
    """x (..., K), down (r, K), up (N, r), bias (N,) or None; one dtype, one device."""
    check_activation(activation)
    if down.dim() != 2 or up.dim() != 2:
        raise ValueError(f"lowrank_linear: down must be (r, K) and up (N, r), got down {_shape(down)}, "
                         f"up {_shape(up)}")
    rank, k = down.shape
    n = up.shape[0]
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"lowrank_linear: x's last dim must equal down's in-features {k}, got x {_shape(x)}")
    if up.shape[1] != rank:
        raise ValueError(f"lowrank_linear: up {_shape(up)} must have rank {rank} columns (down is {_shape(down)})")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"lowrank_linear: bias must be ({n},), got {_shape(bias)}")
    tensors = {"x": x, "down": down, "up": up} | ({"bias": bias} if bias is not None else {})
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        raise TypeError(f"lowrank_linear: all tensors need one dtype, got {dtypes}")
    devices = {name: str(t.device) for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"lowrank_linear: all tensors need one device, got {devices}")


def cuda_capability(device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def bf16_kernels_compile(device) -> bool:
    """Can the bf16 Triton kernels compile for this CUDA device (compute capability ≥ 8.0)?"""
    return cuda_capability(device) >= BF16_MIN_CAPABILITY


def check_kernel_dtype(x: torch.Tensor, interpreting: bool) -> None:
    """The Triton kernels take fp16/bf16/fp32; the CPU interpreter has no bf16 dot."""
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"lowrank_linear kernels take float16/bfloat16/float32, got {x.dtype}")
    if interpreting and x.dtype == torch.bfloat16:
        raise TypeError("lowrank_linear: the Triton interpreter (TRITON_INTERPRET=1) has no bf16 dot; "
                        "use float16/float32 on CPU or run bf16 on a GPU")
    if not interpreting and not x.is_cuda:
        raise ValueError(f"lowrank_linear kernels need CUDA tensors (or TRITON_INTERPRET=1), got {x.device}")
    if not interpreting and x.dtype == torch.bfloat16 and not bf16_kernels_compile(x.device):
        major, minor = cuda_capability(x.device)
        raise TypeError(f"lowrank_linear: the bf16 Triton kernels need compute capability ≥ 8.0 (sm_80); "
                        f"{x.device} is sm_{major}{minor}: use float16 there, or the 'torch' path")
