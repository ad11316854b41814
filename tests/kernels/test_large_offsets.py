"""Kernel pointer offsets past 2³¹ elements along every input axis, not only rows: index · stride of a
column-strided x (K), a weight view strided along the rank (down and up) or along N (up) once wrapped
int32 offsets and segfaulted (each case below crashed both paths before the int64 offsets). A stride
that fits int32 is the one that wraps (2³⁰ with index 2): a stride of 2³¹ or more is passed as int64
and promotes the product. Not covered: the y store along N, whose output the wrapper allocates
contiguous (its offsets reach 2³¹ only with M · N past 2³¹, 4 GiB written). Run in a child process (a
crash must not take pytest with it) under the Triton interpreter, on a 4 GiB buffer of which a few
pages are touched."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels._env import HAS_TRITON

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
import torch
from compress.kernels import lowrank_linear, lowrank_linear_ref

S = 2**30  # fits int32; 2 S does not
big = torch.empty(2 * S + 64, dtype=torch.float16)  # virtual memory: only the touched pages are real
g = torch.Generator().manual_seed(0)
x, down, up = (torch.randn(shape, generator=g).half() for shape in ((4, 3), (3, 3), (5, 3)))
axis = sys.argv[1]
if axis == "k":
    x = big.as_strided((4, 3), (1, S))  # (M, K), K stride S: x[:, 2] at 2 S + m
    down = big.as_strided((3, 3), (1, S), 4)  # (r, K), K stride S
    views = (x, down)
elif axis == "rank":
    down = big.as_strided((3, 3), (S, 1), 8)  # (r, K), rank stride S: down[2] at 2 S + 8
    up = big.as_strided((5, 3), (1, S), 16)  # (N, r), rank stride S: up[:, 2] at 2 S + 16 + n
    views = (down, up)
else:  # n
    up = big.as_strided((3, 3), (S, 1), 32)  # (N, r), N stride S: up[2] at 2 S + 32
    views = (up,)
for view in views:
    view.copy_(torch.randn(tuple(view.shape), generator=g).half())
ref = lowrank_linear_ref(x.contiguous(), down.contiguous(), up.contiguous())
for path in ("fused", "split"):
    torch.testing.assert_close(lowrank_linear(x, down, up, path=path), ref, atol=1e-3, rtol=2e-3)
print("ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("axis", ["k", "rank", "n"])
def test_offsets_past_int32_along_each_axis(axis):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CODE, axis], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", \
        f"rc {proc.returncode} (-11: segfault)\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
