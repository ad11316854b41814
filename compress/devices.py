"""The devices a recipe's `device` and bench's --device name, one rule for both: cpu, cuda or cuda:N
(N a GPU's index), and for a recipe auto too (bench has none: left out, --device is cuda where torch
sees a GPU, else cpu); and whether torch can use one here, in the same words for both."""

from __future__ import annotations

from compress.errors import not_one_of
from compress.words import counted

DEVICES = ("auto", "cpu", "cuda")  # a recipe's; or cuda:N, N a GPU's index (device_refused)


def device_refused(value, what: str = "device", choices: tuple = DEVICES, hint: str = "") -> str:
    """Why `value` is none of `choices` nor cuda:N, N a GPU's index (cuda:0, cuda:1, ...), in
    errors.not_one_of's words for `what` (device, --device); '' for one. cuda:N is listed, never
    suggested: a value starting cuda: is told to give an index. `hint`: said instead of the closest
    choice (bench's for auto)."""
    indexed = isinstance(value, str) and value.startswith("cuda:")
    if value in choices or (indexed and value[5:].isascii() and value[5:].isdigit()):
        return ""
    hint = "; cuda:N takes a GPU's index: cuda:0, cuda:1, ..." if indexed else hint
    return not_one_of(what, value, choices, hint, forms=("cuda:N",))


def unusable(device) -> str:
    """Why torch cannot use the torch.device `device` here ('torch sees no CUDA GPU here (torch 2.5.1)',
    'torch sees 1 GPU: cuda:0'); '' where it can (the CPU always)."""
    import torch

    if device.type != "cuda":
        return ""
    if not torch.cuda.is_available():
        return f"torch sees no CUDA GPU here (torch {torch.__version__})"
    n = torch.cuda.device_count()
    if (device.index or 0) < n:
        return ""
    return f"torch sees {counted(n, 'GPU')}: " + {1: "cuda:0", 2: "cuda:0 and cuda:1"}.get(n, f"cuda:0 to cuda:{n - 1}")
