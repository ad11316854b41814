"""Compile the Triton kernels for sm_90 (H100) without a GPU and report registers/stack per kernel.

Run as a script (a process where TRITON_INTERPRET is unset): `python tests/kernels/compile_sm90.py`.
Prints one line per kernel: name, config, REG:n STACK:bytes. With --kept-configs: one line per
autotune config a GPU may run instead (kept_config_cases). Used by test_compile_sm90.py; catches
errors the CPU interpreter cannot (typing, layouts, register spills)."""

import os
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from compress.kernels import fused, split

I32 = "i32"


def compile_kernel(autotuner, pointers: dict, constexprs: dict, num_warps: int, num_stages: int):
    fn = autotuner.fn  # the JITFunction under the autotuner
    signature = {name: pointers.get(name, "constexpr" if name in constexprs else I32) for name in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def resources(kernel) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return "REG:? STACK:?"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"compile_sm90_{os.getpid()}.cubin"
    path.write_bytes(kernel.asm["cubin"])
    out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    path.unlink()
    line = next(l for l in out.splitlines() if "REG:" in l)
    return " ".join(line.split()[:2])


FUSED_PTRS = {n: "*fp16" for n in ("x_ptr", "down_ptr", "up_ptr", "bias_ptr", "y_ptr")}
KEPT_R_PADS = (16, 32, 64, 128, 256)  # every R_PAD the fused kernel runs at (FUSED_MAX_RANK is 256)


def _label(kernel: str, config) -> str:
    return f"{kernel} {config.kwargs} warps={config.num_warps} stages={config.num_stages}"


def kept_config_cases():
    """(name, kernel, pointers, constexprs, warps, stages) for every config autotuning may run on a GPU:
    the fused configs the prune keeps at each R_PAD (16 to 256), and every split config (shrink and expand)."""
    for r_pad in KEPT_R_PADS:
        for c in fused._prune(fused._GPU_CONFIGS, {}, R_PAD=r_pad):
            consts = dict(HAS_BIAS=True, ACT_GELU=True, PRECISION="tf32", R_PAD=r_pad, **c.kwargs)
            yield _label(f"fused R_PAD={r_pad}", c), fused._lowrank_fused_kernel, FUSED_PTRS, consts, \
                c.num_warps, c.num_stages
    bf16 = "*bf16"
    for c in split._GPU_CONFIGS:
        yield _label("shrink", c), split._shrink_kernel, dict(x_ptr=bf16, down_ptr=bf16, h_ptr="*fp32"), \
            dict(PRECISION="tf32", **c.kwargs), c.num_warps, c.num_stages
        yield _label("expand", c), split._expand_kernel, \
            dict(h_ptr="*fp32", up_ptr=bf16, bias_ptr=bf16, y_ptr=bf16), \
            dict(HAS_BIAS=True, ACT_GELU=True, PRECISION="tf32", **c.kwargs), c.num_warps, c.num_stages


def main() -> int:
    half, bf16 = "*fp16", "*bf16"
    cases = [
        ("fused fp16 r<=256 gelu", fused._lowrank_fused_kernel,
         {n: half for n in ("x_ptr", "down_ptr", "up_ptr", "bias_ptr", "y_ptr")},
         dict(HAS_BIAS=True, ACT_GELU=True, PRECISION="tf32", R_PAD=256, BLOCK_M=32, BLOCK_K=32, BLOCK_N=64), 8, 3),
        ("shrink bf16", split._shrink_kernel, dict(x_ptr=bf16, down_ptr=bf16, h_ptr="*fp32"),
         dict(PRECISION="tf32", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8), 8, 3),
        ("expand bf16 gelu", split._expand_kernel, dict(h_ptr="*fp32", up_ptr=bf16, bias_ptr=bf16, y_ptr=bf16),
         dict(HAS_BIAS=True, ACT_GELU=True, PRECISION="tf32", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8), 8, 3),
    ]
    if sys.argv[1:] == ["--kept-configs"]:
        cases = list(kept_config_cases())
    for name, kernel, pointers, constexprs, warps, stages in cases:
        print(f"{name}: {resources(compile_kernel(kernel, pointers, constexprs, warps, stages))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
