"""Where the kernel tests can run in this process.

Without a GPU the kernels run in Triton's CPU interpreter, which needs TRITON_INTERPRET=1 set before
`triton` is first imported: Triton decorates its own library functions (tl.zeros, tl.sigmoid, ...)
at import time. In a whole-suite run, tests/conftest.py imports diffusers, which imports triton, before
this directory is collected; then the kernel tests are skipped here and rerun in a child pytest with
TRITON_INTERPRET=1 from its start (test_interpreter_subprocess.py; --noconftest skips the diffusers
import, for speed). `TRITON_INTERPRET=1 pytest tests/kernels` and GPU machines run them in-process.
"""

import os
import sys

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # in time: triton is not imported yet

from compress.kernels import HAS_TRITON, interpreting  # noqa: E402


def _interpreter_works() -> bool:
    """Run a one-tile probe kernel that uses a Triton library function (tl.zeros)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(out_ptr, BLOCK: tl.constexpr):
        tl.store(out_ptr + tl.arange(0, BLOCK), tl.zeros((BLOCK,), dtype=tl.float32) + 1.0)

    out = torch.zeros(16)
    try:
        _probe[(1,)](out, BLOCK=16)
    except Exception:  # noqa: BLE001 - any failure means "not in this process"
        return False
    return bool((out == 1).all())


DEVICE = "cuda" if ON_GPU else "cpu"
KERNELS_RUN_HERE = HAS_TRITON and (ON_GPU or (interpreting() and _interpreter_works()))
SKIP_REASON = "Triton kernels cannot run in this process (see tests/kernels/_env.py); " \
              "test_interpreter_subprocess.py runs them in a child process"
