"""LowRankLinear: y = up(down(x)) + bias, a drop-in for nn.Linear.

Stored as two plain nn.Linear children so state-dict keys are `<module>.down.weight` [r, in],
`<module>.up.weight` [out, r] and `<module>.up.bias` [out] (DESIGN.md output format).
On CUDA with fp16/bf16 inputs the forward runs `compress.kernels.lowrank_linear` (fused or split Triton
kernel, two cuBLAS GEMMs, or the dense product: a measured choice per shape); elsewhere it is two torch
matmuls: on CPU, under CUDA autocast to another dtype, and for bf16 on GPUs below compute capability 8.0
(Triton's bf16 kernels do not compile there; `compress.kernels` warns once per process). The kernel path
reads the `down` / `up` weights directly, so it is taken only when both are plain nn.Linear with no
hooks and weights on x's device; wrapped or hooked factors (peft LoRA on "x.down", accelerate offload
hooks, forward hooks) take the torch path, which calls them. Inputs with a
zero-sized dimension give what the two torch matmuls give (empty outputs; act(bias) rows where in = 0).
The rank must be at least 1 (a rank-0 layer would be its bias alone; the svd pass never makes one).
`activation="gelu_tanh"` folds the FFN's tanh-GELU into the layer (fused into the kernel epilogue on
CUDA); it is not stored in the state dict.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _torch_module


class LowRankLinear(nn.Module):
    """A linear layer of rank `rank`: y = up(down(x)) + bias, a drop-in for nn.Linear(in_features,
    out_features). Its weights are two nn.Linear children: `.down` [rank, in] (no bias) and `.up`
    [out, rank] with the bias; edit those (or build one with `LowRankLinear.from_factors(up, down, bias)`).
    `.weight` is their dense product up.weight @ down.weight [out, in], computed at each read, for
    reading only: it carries no gradient, an edit of it changes nothing in the layer, and assigning it is
    refused. `.bias` is `.up.bias`. `activation="gelu_tanh"`: the FFN's tanh-GELU applied to the output
    (kept out of the state dict). See the module docstring for the CUDA kernels forward dispatches to."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None, activation: str | None = None):
        super().__init__()
        if activation not in (None, "gelu_tanh"):
            raise ValueError(f"LowRankLinear: activation must be None or 'gelu_tanh', got {activation!r}")
        if rank < 1:
            raise ValueError(f"LowRankLinear({in_features} -> {out_features}): rank must be at least 1, "
                             f"got {rank!r} (a rank-0 layer would drop the whole weight and keep only the bias)")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.activation = activation
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)  # [r, in]
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)  # [out, r]
        self.use_kernel = True  # set False to force the torch path (benchmarks, debugging)

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent up.weight @ down.weight [out, in], for reading (not used in forward): a new
        tensor at each read, without gradient, so that it does not look like a parameter to edit."""
        with torch.no_grad():
            return self.up.weight @ self.down.weight

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # nn.Module's own words for a Parameter: "KeyError: attribute 'weight' already exists"
            raise AttributeError("LowRankLinear.weight is the dense product up.weight @ down.weight, for reading; "
                                 "set .up.weight [out, rank] and .down.weight [rank, in] (LowRankLinear.from_factors "
                                 "makes a layer of given factors), or put an nn.Linear in the layer's place")
        super().__setattr__(name, value)

    @property
    def bias(self):
        return self.up.bias

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None,
                     dtype=None) -> "LowRankLinear":
        """up [out, r], down [r, in], bias [out] or None; r ≥ 1."""
        if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LowRankLinear.from_factors: up must be [out, r] and down [r, in], got up "
                             f"{list(up.shape)}, down {list(down.shape)}")
        out_f, rank = up.shape
        in_f = down.shape[1]
        if rank == 0:
            raise ValueError(f"LowRankLinear.from_factors: rank-0 factors (up {list(up.shape)}, down "
                             f"{list(down.shape)}) would drop the whole weight and keep only the bias; "
                             "keep the layer dense or give a rank ≥ 1")
        dtype = dtype or (bias.dtype if bias is not None else up.dtype)
        layer = cls(in_f, out_f, rank, bias=bias is not None, device=up.device, dtype=dtype)
        with torch.no_grad():
            layer.down.weight.copy_(down.to(dtype))
            layer.up.weight.copy_(up.to(dtype))
            if bias is not None:
                layer.up.bias.copy_(bias.to(dtype))
        return layer

    def _kernel_ok(self, x: torch.Tensor) -> bool:
        if not (self.use_kernel and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
                and self.down.weight.dtype == x.dtype == self.up.weight.dtype):
            return False
        if torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") != x.dtype:
            return False  # autocast runs nn.Linear in its own dtype; the kernels would not: torch path
        from compress.kernels.dispatch import kernels_available

        return kernels_available(x)  # Triton here, and it compiles for x's device and dtype

    def _factors_plain(self, x: torch.Tensor) -> bool:
        """True when calling `self.down` / `self.up` would do nothing but their matmuls, so the kernel
        may read their weights directly. Anything else must go through the children's own forward
        (the torch path): a wrapper in their place (peft LoRA on "x.down" / "x.up", a quantized
        nn.Linear subclass), forward hooks, an instance-level forward (accelerate's `_hf_hook` offload
        hooks, diffusers' group offloading), or weights not (yet) on x's device (`meta` until an
        offload hook loads them). Checked every forward: attribute and dict lookups only."""
        return _plain_linear(self.down, x) and _plain_linear(self.up, x) and self.down.bias is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self._kernel_ok(x) and self._factors_plain(x):  # the cheap check first: False on CPU
            from compress.kernels import lowrank_linear

            return lowrank_linear(x, self.down.weight, self.up.weight, self.up.bias, self.activation)
        y = self.up(self.down(x))
        return nn.functional.gelu(y, approximate="tanh") if self.activation == "gelu_tanh" else y

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}{act}"


def _plain_linear(module: nn.Module, x: torch.Tensor) -> bool:
    """`module` is an exact nn.Linear with nothing attached (its own or process-wide hooks, a replaced
    forward, accelerate's `_hf_hook`) whose weight already sits on x's device: its forward would be
    F.linear on that weight and nothing else."""
    if type(module) is not nn.Linear or _hooked(module, _MODULE_HOOKS) or _hooked(_torch_module, _GLOBAL_HOOKS):
        return False
    state = module.__dict__
    if "forward" in state or "_hf_hook" in state or "_diffusers_hook" in state:
        return False
    return module.weight.device == x.device


def _hooked(owner, names: tuple[str, ...]) -> bool:
    """Any hook registered in `owner`'s hook dicts (a module's own, or torch's process-wide ones)."""
    return any(getattr(owner, name) for name in names)


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple("_global" + name for name in _MODULE_HOOKS)  # in torch.nn.modules.module
