"""Triton kernels for low-rank linears, installed as `compress.kernels`.

    lowrank_linear(x, down, up, bias=None, activation=None, *, path=None, dense_weight=None)

Imports without Triton (then only the "torch" and "dense" paths exist; `HAS_TRITON` is False).
Layers (DESIGN.md #6): `_*_kernel` (fused.py, split.py) -> wrappers `fused_lowrank`, `split_lowrank`
-> `LowRankLinearFn` (autograd) -> `lowrank_linear` (path choice, dispatch.py / roofline.py) ->
`compress.lowrank.LowRankLinear`. Torch references in reference.py.
"""

from ._compat import HAS_TRITON, interpreting
from .dispatch import available_paths, clear_path_cache, path_cache, select_path
from .linear import LowRankLinearFn, lowrank_linear
from .reference import dense_ref, expand_ref, gelu_tanh_ref, lowrank_linear_ref, shrink_ref
from .roofline import PATHS, DeviceSpec, choose_path, estimate_times, ideal_speedup, spec_for_name

__all__ = [
    "HAS_TRITON", "interpreting", "lowrank_linear", "LowRankLinearFn", "available_paths", "select_path",
    "path_cache", "clear_path_cache", "lowrank_linear_ref", "shrink_ref", "expand_ref", "dense_ref",
    "gelu_tanh_ref", "PATHS", "DeviceSpec", "choose_path", "estimate_times", "ideal_speedup", "spec_for_name",
]
