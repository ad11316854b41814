"""Fold the FFN's tanh-GELU into the factorized linear that feeds it (issue: fused kernels).

After the svd pass, `ff.net.0` of PixArt-Σ and Flux double blocks is diffusers' `GELU` module
(`proj` then tanh-GELU) with a `LowRankLinear` as `proj`, and Flux single blocks apply `act_mlp`
(tanh-GELU) to `proj_mlp`. `fuse_gelu` gives those LowRankLinears `activation="gelu_tanh"` (the
Triton kernel applies it in its epilogue on CUDA; torch applies the same op on CPU) and drops the
separate activation. Parameter names and the state dict are unchanged (`ff.net.0.proj.down.weight`),
so saved models need no new format: `load_transformer` fuses again after loading.
"""

from __future__ import annotations

from diffusers.models.activations import GELU
from torch import nn

from compress.lowrank import LowRankLinear


class FusedGELU(nn.Module):
    """Stands in for diffusers' `GELU` once its `proj` applies the activation itself."""

    def __init__(self, proj: LowRankLinear):
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states):  # (..., in) -> (..., out)
        return self.proj(hidden_states)


def _unfused(layer) -> bool:
    return isinstance(layer, LowRankLinear) and layer.activation is None


def _is_tanh_gelu(module) -> bool:
    """torch's nn.GELU or diffusers' GELU (proj + activation), tanh-approximated."""
    return isinstance(module, (nn.GELU, GELU)) and module.approximate == "tanh"


def fuse_gelu(model: nn.Module) -> list[str]:
    """Fuses in place; returns the names of the LowRankLinears that now apply tanh-GELU."""
    fused = []
    for name, module in list(model.named_modules()):
        if isinstance(module, GELU) and _is_tanh_gelu(module) and _unfused(module.proj):
            module.proj.activation = "gelu_tanh"
            model.set_submodule(name, FusedGELU(module.proj))
            fused.append(f"{name}.proj")
        elif _unfused(getattr(module, "proj_mlp", None)) and _is_tanh_gelu(getattr(module, "act_mlp", None)):
            module.proj_mlp.activation = "gelu_tanh"  # Flux single block: act_mlp(proj_mlp(x))
            module.act_mlp = nn.Identity()
            fused.append(f"{name}.proj_mlp" if name else "proj_mlp")
    return fused
