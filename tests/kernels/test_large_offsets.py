"""Kernel pointer offsets past 2³¹ elements along every axis, not only rows: a column-strided x (K · stride)
or weight view (rank · stride) once wrapped int32 offsets and segfaulted. Run in a child process (a crash
must not take pytest with it) under the Triton interpreter, on a 4 GiB buffer of which a few pages are touched."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels._env import HAS_TRITON

REPO = Path(__file__).resolve().parents[2]

CODE = """
import torch
from compress.kernels import lowrank_linear, lowrank_linear_ref

S = 2**30  # fits int32; 2 S does not
big = torch.empty(2 * S + 16, dtype=torch.float16)  # virtual memory: only the touched pages are real
g = torch.Generator().manual_seed(0)
x = big.as_strided((4, 3), (1, S))  # (M, K), K stride S: x[:, 2] at 2 S + m
down = big.as_strided((2, 3), (1, S), 4)  # (r, K), K stride S
up = big.as_strided((5, 2), (1, 2 * S), 6)  # (N, r), r stride 2 S
for view, shape in ((x, (4, 3)), (down, (2, 3)), (up, (5, 2))):
    view.copy_(torch.randn(shape, generator=g).half())
ref = lowrank_linear_ref(x.contiguous(), down.contiguous(), up.contiguous())
for path in ("fused", "split"):
    torch.testing.assert_close(lowrank_linear(x, down, up, path=path), ref, atol=1e-3, rtol=2e-3)
print("ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_offsets_past_int32_along_k_and_rank():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", \
        f"rc {proc.returncode} (-11: segfault)\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
