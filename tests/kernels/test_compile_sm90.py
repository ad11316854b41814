"""The kernels compile for sm_90 on a CPU-only machine (ptxas ships with triton), without spills."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels._env import HAS_TRITON

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(HERE / "compile_sm90.py")], cwd=HERE.parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    for line in lines:
        stack = re.search(r"STACK:(\d+|\?)", line).group(1)
        assert stack == "?" or int(stack) <= 256, f"register spills: {line}"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_every_kept_autotune_config_compiles_for_sm90_without_spills():
    """The register-estimate prune (fused) and the config list (split) keep no config that spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(HERE / "compile_sm90.py"), "--kept-configs"], cwd=HERE.parents[1],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 20, proc.stdout  # 8 fused (R_PAD 128 and 256) + 8 shrink + 8 expand
    spilled = [line for line in lines if re.search(r"STACK:(\d+)", line) and "STACK:0" not in line]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
