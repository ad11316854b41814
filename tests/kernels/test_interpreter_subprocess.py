"""Reruns the kernel tests in a child pytest with TRITON_INTERPRET=1 when this process cannot run
them (triton was imported before the variable could be set; see _env.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels._env import HAS_TRITON, KERNELS_RUN_HERE, ON_GPU

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.mark.skipif(KERNELS_RUN_HERE or ON_GPU or not HAS_TRITON,
                    reason="kernel tests run in this process (or triton is missing)")
def test_kernel_tests_pass_in_interpreter_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # --noconftest: the kernel tests need no fixtures from tests/conftest.py (which imports diffusers)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--noconftest",
           str(HERE / "test_lowrank_kernels.py"), str(HERE / "test_zero_sized.py"), str(HERE / "test_fused.py")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, out
    assert "cannot run in this process" not in out, "the child could not run the kernels either:\n" + out
