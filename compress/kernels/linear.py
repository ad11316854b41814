"""`lowrank_linear`: the public entry. Checks arguments, picks a path, and goes through an autograd
Function when gradients are needed (the backward uses torch matmuls and recomputes the intermediate)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch
from .checks import check_lowrank_args
from .reference import as_rows


class LowRankLinearFn(torch.autograd.Function):
    """y = act((x @ downᵀ) @ upᵀ + bias) on 2-D x (M, K); forward by any path, backward in torch."""

    @staticmethod
    def forward(ctx, x2, down, up, bias, activation, path, dense_weight):
        ctx.save_for_backward(x2, down, up, bias)
        ctx.activation = activation
        return dispatch.run_path(path, x2, down, up, bias, activation, dense_weight)  # (M, N)

    @staticmethod
    def backward(ctx, dy):  # dy (M, N)
        x2, down, up, bias = ctx.saved_tensors
        h = F.linear(x2, down)  # (M, r), recomputed rather than stored
        dz = _act_backward(h, up, bias, dy, ctx.activation)  # (M, N)
        need_x, need_down, need_up, need_bias = ctx.needs_input_grad[:4]
        grad_up = dz.t() @ h if need_up else None  # (N, r)
        grad_bias = dz.sum(0) if bias is not None and need_bias else None  # (N,)
        dh = dz @ up if (need_x or need_down) else None  # (M, r)
        grad_down = dh.t() @ x2 if need_down else None  # (r, K)
        grad_x = dh @ down if need_x else None  # (M, K)
        return grad_x, grad_down, grad_up, grad_bias, None, None, None


def _act_backward(h, up, bias, dy, activation):
    """dL/dz for z = h @ upᵀ + bias, given dL/dy with y = act(z).

    A backward runs with grad mode on only under create_graph=True; then dz stays attached to h, up,
    bias and dy, so double backward (gradient penalties, Hessian-vector products) is right too."""
    if activation is None:
        return dy
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        z = F.linear(h, up, bias)  # (M, N)
        if not (create_graph and z.requires_grad):
            z = z.detach().requires_grad_(True)  # first order only: no graph through the factors
        (dz,) = torch.autograd.grad(F.gelu(z, approximate="tanh"), z, dy, create_graph=create_graph)
    return dz


def _check_dense_weight(dense_weight, down, up, autocast_dtype: torch.dtype | None = None) -> None:
    """dense_weight as up @ down would be: its shape, device and dtype (the one autocast casts it to,
    where it is cast: `down` and `up` already are)."""
    want = (up.shape[0], down.shape[1])
    dtype = _cast_dtype(autocast_dtype, dense_weight)
    if tuple(dense_weight.shape) != want or dtype != up.dtype or dense_weight.device != up.device:
        raise ValueError(f"lowrank_linear: dense_weight must be up @ down, {want[0]}x{want[1]} {up.dtype} on "
                         f"{up.device}; got {tuple(dense_weight.shape)} {dense_weight.dtype} on {dense_weight.device}")


def _needs_grad(*tensors) -> bool:
    """Does the call go through LowRankLinearFn? Also when only dense_weight requires grad: the
    Function gives it no gradient, where a plain F.linear on it would."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs F.linear in on x's device, or None when autocast is off there."""
    kind = x.device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def _autocast_cast(dtype: torch.dtype | None, *tensors):
    """Cast the floating tensors to autocast's dtype, as autocast casts F.linear's inputs (float64
    excepted), so that every path returns what the torch path returns under autocast. The casts are
    differentiable: gradients reach the original (e.g. fp32) tensors in their own dtype."""
    return tuple(t if t is None else t.to(_cast_dtype(dtype, t)) for t in tensors)


def _cast_dtype(dtype: torch.dtype | None, t: torch.Tensor) -> torch.dtype:
    """The dtype _autocast_cast gives t."""
    eligible = dtype is not None and t.is_floating_point() and t.dtype != torch.float64
    return dtype if eligible else t.dtype


def lowrank_linear(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None = None,
                   activation: str | None = None, *, path: str | None = None,
                   dense_weight: torch.Tensor | None = None) -> torch.Tensor:
    """act((x @ downᵀ) @ upᵀ + bias): x (..., K), down (r, K), up (N, r), bias (N,) -> (..., N).

    activation: None or "gelu_tanh". path: None (measured/roofline choice) or one of
    "fused", "split", "torch", "dense". dense_weight: optional precomputed up @ down (N, K), which makes
    the dense path cheap; it must equal up @ down (gradients flow to up and down, never to it).
    Under autocast every path computes in autocast's dtype, as F.linear would.
    """
    dtype = _autocast_dtype(x)
    x, down, up, bias = _autocast_cast(dtype, x, down, up, bias)
    check_lowrank_args(x, down, up, bias, activation)
    if dense_weight is not None:
        _check_dense_weight(dense_weight, down, up, dtype)
    x2 = as_rows(x)  # (M, K)
    available = dispatch.available_paths(x2, down.shape[0])
    if path is None:
        path = dispatch.select_path(x2, down, up, bias, activation, dense_weight)
    elif path not in available:
        raise ValueError(f"lowrank_linear: path {path!r} is not available for {x.dtype} on {x.device} at rank "
                         f"{down.shape[0]}; available: {available}")
    # dense_weight (N, K) is cast (a copy, every call under autocast) only for the path that reads it;
    # select_path's timing of the dense path runs under the same autocast, which casts it there
    dense_weight = _autocast_cast(dtype, dense_weight)[0] if path == "dense" else dense_weight
    if _needs_grad(x2, down, up, bias, dense_weight):
        y = LowRankLinearFn.apply(x2, down, up, bias, activation, path, dense_weight)
    else:
        y = dispatch.run_path(path, x2, down, up, bias, activation, dense_weight)
    return y.reshape(*x.shape[:-1], up.shape[0])  # (..., N)
