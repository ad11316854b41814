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
    for r, n in kept.items():  # R_PAD 16 .. 256: 8, 8, 7, 5, 3 kept (triton 3.4 to 3.6: 8, 8, 6, 5, 2)
        assert sum(line.startswith(f"fused R_PAD={r} ") for line in lines) == n, (r, proc.stdout)
    assert sum(line.startswith(("shrink ", "expand ")) for line in lines) == 2 * len(split._GPU_CONFIGS)
    assert len(lines) == sum(kept.values()) + 2 * len(split._GPU_CONFIGS), proc.stdout
    spilled = [line for line in lines if re.search(r"STACK:(\d+)", line) and "STACK:0" not in line]
    assert not spilled, "register spills:\n" + "\n".join(spilled)


def _split_keys(triton_version) -> set:
    from compress.kernels import split

    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
            for c in split.gpu_configs(triton_version)}


def _fused_keys(r_pad: int, triton_version) -> set:
    from compress.kernels import fused

    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"], c.num_warps)
            for c in fused.kept_configs(fused._GPU_CONFIGS, r_pad, triton_version)}


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_an_older_triton_keeps_no_config_its_sm90_compile_spilled():
    """What compile_sm90.py --kept-configs spilled with each triton pyproject accepts (3.4.0, 3.5.1, 3.6.0;
    3.7.1 to 3.9.0 none; stop 55) is kept from it: the fused kernel's (BM 16, BK 32, BN 32, 4 warps) at
    R_PAD 256 (3.4 to 3.6), split's (64, 64, 64, 4 warps, 4 stages) expand (3.4 to 3.6), its (128, 128, 64,
    8, 3) shrink and expand and (64, 128, 64, 8, 4) expand (3.4). The slow test above checks the installed one."""
    every = _split_keys((3, 9))
    assert len(every) == 8 and _split_keys((3, 7)) == every
    assert every - _split_keys((3, 4)) == {(128, 128, 64, 8, 3), (64, 128, 64, 8, 4), (64, 64, 64, 4, 4)}
    assert every - _split_keys((3, 5)) == every - _split_keys((3, 6)) == {(64, 64, 64, 4, 4)}
    for older in ((3, 4), (3, 5), (3, 6)):
        assert (16, 32, 32, 4) not in _fused_keys(256, older)
        assert [len(_fused_keys(r, older)) for r in (16, 32, 64, 128, 256)] == [8, 8, 6, 5, 2]
    assert (16, 32, 32, 4) in _fused_keys(256, (3, 7))
    assert [len(_fused_keys(r, (3, 9))) for r in (16, 32, 64, 128, 256)] == [8, 8, 7, 5, 3]
