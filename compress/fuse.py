"""Fold the FFN's tanh-GELU into the factorized linear that feeds it (issue: fused kernels).

After the svd pass, `ff.net.0` of PixArt-Σ and Flux double blocks is diffusers' `GELU` module
(`proj` then tanh-GELU) with a `LowRankLinear` as `proj`, and Flux single blocks apply `act_mlp`
(tanh-GELU) to `proj_mlp`. `fuse_gelu` gives those LowRankLinears `activation="gelu_tanh"` (the
Triton kernel applies it in its epilogue on CUDA; torch applies the same op on CPU) and drops the
separate activation: `FusedGELU` stands in for diffusers' GELU, `FusedActMLP` for the block's act_mlp.
Both apply the GELU themselves where the layer now in `proj` / `proj_mlp` does not (an nn.Linear or a
`LowRankLinear.from_factors` swapped in from Python), so a swap gives the model a saved output of it
loads as. Parameter names and the state dict are unchanged (`ff.net.0.proj.down.weight`), so saved
models need no new format: `load_transformer` fuses again after loading.
"""

from __future__ import annotations

import weakref

import torch
from diffusers.models.activations import GELU
from torch import nn

from compress.lowrank import LowRankLinear


class FusedGELU(nn.Module):
    """Stands in for diffusers' `GELU` once its `proj` applies the activation itself; applies it here
    where the layer in `proj` now does not (one swapped in)."""

    def __init__(self, proj: LowRankLinear):
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states):  # (..., in) -> (..., out)
        return gelu_unless_applied(self.proj, self.proj(hidden_states))


class FusedActMLP(nn.Module):
    """Stands in for a Flux single block's act_mlp once its proj_mlp applies the tanh-GELU itself:
    the identity, or the GELU where the block's proj_mlp now does not apply it (one swapped in). The
    block is held by a weak reference (no state-dict keys, no reference cycle keeping a deleted model's
    memory); a deepcopy or pickle of the model refers to its own copy of the block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = weakref.ref(block)

    def forward(self, hidden_states):  # (..., mlp_hidden) -> same
        return gelu_unless_applied(self.block().proj_mlp, hidden_states)

    def __getstate__(self):  # deepcopy / pickle: the block itself, copied once with the model
        return {**super().__getstate__(), "block": self.block()}

    def __setstate__(self, state):
        super().__setstate__({**state, "block": weakref.ref(state["block"])})


def applies_gelu(layer) -> bool:
    """Whether `layer` applies the tanh-GELU itself (a LowRankLinear that fuse_gelu fused)."""
    return isinstance(layer, LowRankLinear) and layer.activation == "gelu_tanh"


def gelu_unless_applied(layer, y: torch.Tensor) -> torch.Tensor:
    """`y`, the output of `layer`, with the tanh-GELU applied unless `layer` applied it."""
    return y if applies_gelu(layer) else nn.functional.gelu(y, approximate="tanh")


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
            module.act_mlp = FusedActMLP(module)
            fused.append(f"{name}.proj_mlp" if name else "proj_mlp")
    return fused
