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
    """The register-estimate prune (fused) and the config list (split) keep no config that spills: every
    config kept at every R_PAD the fused kernel runs at (16 up to FUSED_MAX_RANK), every split one. About
    a minute on two cores (compiles are cached after)."""
    from compress.kernels import fused, split
    from compress.kernels.roofline import FUSED_MAX_RANK

    r_pads = [16 * 2**i for i in range(FUSED_MAX_RANK.bit_length()) if 16 * 2**i <= FUSED_MAX_RANK]
    kept = {r: len(fused._prune(fused._GPU_CONFIGS, {}, R_PAD=r)) for r in r_pads}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(HERE / "compile_sm90.py"), "--kept-configs"], cwd=HERE.parents[1],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    for r, n in kept.items():  # R_PAD 16 .. 256: 8, 8, 7, 5, 3 kept
        assert sum(line.startswith(f"fused R_PAD={r} ") for line in lines) == n, (r, proc.stdout)
    assert sum(line.startswith(("shrink ", "expand ")) for line in lines) == 2 * len(split._GPU_CONFIGS)
    assert len(lines) == sum(kept.values()) + 2 * len(split._GPU_CONFIGS), proc.stdout
    spilled = [line for line in lines if re.search(r"STACK:(\d+)", line) and "STACK:0" not in line]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
