"""The devices a recipe's `device` and bench's --device name, one rule for both: cpu, cuda or cuda:N
(N a GPU's index), and for a recipe auto too (bench has none: left out, --device is cuda where torch
sees a GPU, else cpu); and whether torch can use one here, in the same words for both."""

from __future__ import annotations

import re

from compress.errors import not_one_of
from compress.words import counted

DEVICES = ("auto", "cpu", "cuda")  # a recipe's; or cuda:N, N a GPU's index (device_refused)


def device_refused(value, what: str = "device", choices: tuple = DEVICES, hint: str = "") -> str:
    """Why `value` is none of `choices` nor cuda:N, N a GPU's index (cuda:0, cuda:1, ...), in
    errors.not_one_of's words for `what` (device, --device); '' for one. `hint`: said instead of the
    device meant (bench's for auto); else the device a slip of case, spacing or a letter o stands for
    (meant: 'did you mean 'cuda:0'?' for CUDA:0 or cuda:O); else a value starting cuda: is told to give
    an index; else errors.not_one_of's closest choice (the pattern cuda:N never suggested)."""
    indexed = isinstance(value, str) and value.startswith("cuda:")
    if value in choices or (indexed and value[5:].isascii() and value[5:].isdigit()):
        return ""
    device = meant(value, choices)
    hint = hint or (f"; did you mean '{device}'?" if device else "")
    hint = hint or ("; cuda:N takes a GPU's index: cuda:0, cuda:1, ..." if indexed else "")
    return not_one_of(what, value, choices, hint, forms=("cuda:N",))


_INDEXED = re.compile(r"(?:cuda|gpu) *:? *([0-9o]+)")  # lower-cased: cuda0, cuda: 1, cuda:o, gpu:0


def meant(value, choices: tuple) -> str:
    """The device `value` plainly stands for, where a slip of case or spacing, or a letter o for a zero,
    makes it one: 'cpu' for CPU, 'cuda' for Cuda, 'auto' for Auto (where `choices` has it), 'cuda:0'
    for CUDA:0, cuda:O, cuda0, cuda: 0 or gpu:0; '' for a value that stands for none (a closer look,
    errors.not_one_of's did_you_mean, is left to the caller)."""
    if not isinstance(value, str):
        return ""
    word = value.strip().lower()
    if index := _INDEXED.fullmatch(word):
        return f"cuda:{int(index[1].replace('o', '0'))}"
    return word if word in choices else ""


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
