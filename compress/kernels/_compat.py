"""Optional Triton: import guard, interpreter detection, autotune-config gating.

`compress.kernels` must import on machines without Triton (macOS, Windows); there `HAS_TRITON` is
False and only the torch paths exist. Triton reads TRITON_INTERPRET when `@triton.jit` decorates a
function (i.e. when our kernel modules are imported), so `interpreting()` is read at that time too.
"""

from __future__ import annotations

import os

try:  # pragma: no cover - exercised by the presence/absence of triton
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

# (major, minor) of the installed Triton ("3.4.0+git..." -> (3, 4)); (0, 0) without one. Some autotune
# configs spill registers on older Triton compilers and are kept from them (fused.py, split.py)
TRITON_VERSION = tuple(int(p) for p in triton.__version__.split(".")[:2]) if HAS_TRITON else (0, 0)


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def gate_configs(gpu_configs: list, interpreter_config) -> list:
    """All autotune configs on a GPU; one small config under the interpreter (autotuning there is slow)."""
    if len(gpu_configs) > 8:
        raise ValueError(f"at most 8 autotune configs per kernel, got {len(gpu_configs)}")
    return [interpreter_config] if interpreting() else gpu_configs


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
