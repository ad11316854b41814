"""Benchmark the low-rank kernels against dense cuBLAS and two cuBLAS GEMMs at DiT shapes.

    python tools/bench_kernels.py                 # full grid (M x (K, N) x r), fp16, CUDA graphs
    python tools/bench_kernels.py --quick         # a small subset
    python tools/bench_kernels.py --dtype bf16 --no-graphs --json out.json
    python tools/bench_kernels.py --model-only    # roofline-ideal speedups only (no GPU needed)

Per row: milliseconds of dense (x @ Wᵀ + b), two GEMMs ((x @ downᵀ) @ upᵀ + b) and our kernel
(fused for r <= 256, else shrink/expand), TFLOP/s of each, the kernel's speedup over dense and over two
GEMMs, and the fraction of the roofline-ideal speedup it reaches (ideal = dense / low-rank time under
max(FLOPs / peak, bytes / bandwidth)). Goals on H100: >= 1.3x two GEMMs at r <= 256, >= 70% of ideal.
Fused rows also give the output-tile groups per row tile the autotuned launch ran with (fused.py) and the
same kernel's milliseconds at one group (the ungrouped launch), with the grouping's speedup over it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

M_VALUES = (1024, 4096)
KN_VALUES = ((1152, 1152), (1152, 4608), (4608, 1152), (3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360))
RANKS = (32, 64, 128, 256, 512, 1024)
QUICK = dict(m=(4096,), kn=((1152, 4608), (3072, 3072), (3072, 12288)), ranks=(64, 256, 1024))
GOAL_VS_TWO_GEMMS, GOAL_IDEAL_FRACTION, GOAL_MAX_RANK = 1.3, 0.70, 256
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small subset of the grid")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--no-graphs", action="store_true", help="time eager launches (do_bench) instead of CUDA graphs")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--model-only", action="store_true", help="print roofline-ideal speedups for --gpu-name; no GPU")
    p.add_argument("--gpu-name", default="NVIDIA H100 80GB HBM3", help="device for --model-only")
    return p.parse_args(argv)


def grid(quick: bool):
    ms, kns, ranks = (QUICK["m"], QUICK["kn"], QUICK["ranks"]) if quick else (M_VALUES, KN_VALUES, RANKS)
    return [(m, k, n, r) for m in ms for (k, n) in kns for r in ranks]


def make_layer(m, k, n, r, dtype, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=g)  # (M, K)
    down = (torch.randn(r, k, device=device, generator=g) / math.sqrt(k)).to(dtype)  # (r, K)
    up = (torch.randn(n, r, device=device, generator=g) / math.sqrt(r)).to(dtype)  # (N, r)
    bias = torch.randn(n, device=device, generator=g).to(dtype)  # (N,)
    return x, down, up, bias, up @ down  # dense W (N, K)


def timer(no_graphs: bool):
    from triton.testing import do_bench, do_bench_cudagraph

    def time_ms(fn) -> float:
        fn()  # autotune / warm up outside any graph capture
        torch.cuda.synchronize()
        if no_graphs:
            return do_bench(fn, warmup=25, rep=100)  # flushes L2 between calls
        return do_bench_cudagraph(fn, rep=100)  # no launch overhead; no L2 flush (same for every method)

    return time_ms


def check_kernel(x, down, up, bias, path, dtype) -> float:
    """Max abs error of the kernel vs the fp32 torch reference (outputs are O(1) by construction)."""
    from compress.kernels import lowrank_linear, lowrank_linear_ref

    err = (lowrank_linear(x, down, up, bias, path=path).float() - lowrank_linear_ref(x, down, up, bias).float())
    return err.abs().max().item()


def fused_grouping(x, down, up, bias, time_ms) -> dict:
    """Right after the fused kernel's timing: the group count its autotuned launch ran with (the
    autotuner's best_config is the last launch's) and the kernel's time at one group."""
    from compress.kernels import fused

    m, n = x.shape[0], up.shape[0]
    config = fused._lowrank_fused_kernel.best_config
    groups = fused.launch_groups(m, n, config.kwargs, x.device)
    t_one = time_ms(lambda: fused.fused_lowrank(x, down, up, bias, groups=1))
    blocks = "x".join(str(config.kwargs[b]) for b in ("BLOCK_M", "BLOCK_K", "BLOCK_N"))
    return dict(groups=groups, config=f"{blocks}/{config.num_warps}w", one_group_ms=t_one)


def bench_row(m, k, n, r, dtype, spec, time_ms) -> dict:
    from compress.kernels import ideal_speedup, lowrank_linear
    from compress.kernels.roofline import kernel_path

    x, down, up, bias, weight = make_layer(m, k, n, r, dtype)
    path = kernel_path(r)  # the path ideal_speedup models
    t_dense = time_ms(lambda: F.linear(x, weight, bias))
    t_two = time_ms(lambda: F.linear(F.linear(x, down), up, bias))
    t_kernel = time_ms(lambda: lowrank_linear(x, down, up, bias, path=path))
    grouping = fused_grouping(x, down, up, bias, time_ms) if path == "fused" else {}
    lr_flops, dense_flops = 2.0 * m * r * (k + n), 2.0 * m * k * n
    ideal = ideal_speedup(m, k, n, r, spec, elem_bytes=x.element_size())
    return dict(m=m, k=k, n=n, r=r, path=path, dense_ms=t_dense, two_gemms_ms=t_two, kernel_ms=t_kernel,
                dense_tflops=dense_flops / t_dense / 1e9, two_gemms_tflops=lr_flops / t_two / 1e9,
                kernel_tflops=lr_flops / t_kernel / 1e9, vs_dense=t_dense / t_kernel, vs_two_gemms=t_two / t_kernel,
                ideal=ideal, ideal_fraction=(t_dense / t_kernel) / ideal,
                max_err=check_kernel(x, down, up, bias, path, dtype), **grouping)


HEADER = (f"{'M':>5} {'K':>6} {'N':>6} {'r':>5} {'path':>6} | {'dense':>8} {'2gemm':>8} {'kernel':>8} ms | "
          f"{'dense':>6} {'2gemm':>6} {'kernel':>6} TF/s | {'xdense':>6} {'x2gemm':>6} {'ideal':>6} {'%ideal':>6} "
          f"{'maxerr':>7} {'goals':>5} | {'groups':>6} {'1group':>8} ms {'xgroup':>6} {'BMxBKxBN/warps':>15}")


def format_row(row: dict) -> str:
    goals = ""
    if row["r"] <= GOAL_MAX_RANK:
        ok = row["vs_two_gemms"] >= GOAL_VS_TWO_GEMMS and row["ideal_fraction"] >= GOAL_IDEAL_FRACTION
        goals = "ok" if ok else "MISS"
    return (f"{row['m']:>5} {row['k']:>6} {row['n']:>6} {row['r']:>5} {row['path']:>6} | {row['dense_ms']:8.4f} "
            f"{row['two_gemms_ms']:8.4f} {row['kernel_ms']:8.4f}    | {row['dense_tflops']:6.1f} "
            f"{row['two_gemms_tflops']:6.1f} {row['kernel_tflops']:6.1f}      | {row['vs_dense']:6.2f} "
            f"{row['vs_two_gemms']:6.2f} {row['ideal']:6.2f} {100 * row['ideal_fraction']:5.1f}% "
            f"{row['max_err']:7.1e} {goals:>5} | {grouping_columns(row)}")


def grouping_columns(row: dict) -> str:
    """Fused rows: groups, the one-group milliseconds, the grouping's speedup, the autotuned config."""
    if "groups" not in row:
        return f"{'-':>6} {'-':>8}    {'-':>6}"
    return (f"{row['groups']:>6} {row['one_group_ms']:8.4f}    {row['one_group_ms'] / row['kernel_ms']:6.2f} "
            f"{row['config']:>15}")


def summarize(rows: list[dict]) -> str:
    small = [r for r in rows if r["r"] <= GOAL_MAX_RANK]
    if not small:
        return "no rows with r <= 256"

    def geomean(key):
        return math.exp(sum(math.log(r[key]) for r in small) / len(small))

    grouped = [r for r in small if "groups" in r]
    grouping = "" if not grouped else (
        f"; fused at its groups vs one group: geomean {geomean_of(grouped, 'one_group_ms', 'kernel_ms'):.2f}x")
    met = sum(r["vs_two_gemms"] >= GOAL_VS_TWO_GEMMS and r["ideal_fraction"] >= GOAL_IDEAL_FRACTION for r in small)
    return (f"r <= {GOAL_MAX_RANK}: geomean {geomean('vs_two_gemms'):.2f}x vs two GEMMs (goal {GOAL_VS_TWO_GEMMS}x), "
            f"{100 * geomean('ideal_fraction'):.0f}% of roofline-ideal (goal {100 * GOAL_IDEAL_FRACTION:.0f}%); "
            f"both goals met on {met}/{len(small)} rows{grouping}")


def geomean_of(rows: list[dict], num: str, den: str) -> float:
    return math.exp(sum(math.log(r[num] / r[den]) for r in rows) / len(rows))


def model_only(args) -> int:
    from compress.kernels import ideal_speedup, spec_for_name

    spec = spec_for_name(args.gpu_name)
    print(f"roofline model for {spec.name}: {spec.peak_flops / 1e12:.0f} TFLOP/s, {spec.bandwidth / 1e12:.2f} TB/s")
    print(f"{'M':>5} {'K':>6} {'N':>6} {'r':>5} {'ideal speedup over dense':>26}")
    for m, k, n, r in grid(args.quick):
        print(f"{m:>5} {k:>6} {n:>6} {r:>5} {ideal_speedup(m, k, n, r, spec):26.2f}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model_only:
        return model_only(args)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU here; this benchmark needs one (try --model-only for roofline numbers)")
        return 2
    from compress.kernels import HAS_TRITON, spec_for_name

    if not HAS_TRITON:
        print("bench_kernels: triton is not installed; the kernels need it (pip install triton)")
        return 2
    name = torch.cuda.get_device_name()
    spec = spec_for_name(name)
    print(f"GPU: {name} (roofline: {spec.peak_flops / 1e12:.0f} TFLOP/s, {spec.bandwidth / 1e12:.2f} TB/s), "
          f"dtype {args.dtype}, {'eager do_bench' if args.no_graphs else 'CUDA graphs'}")
    print(HEADER)
    rows, time_ms = [], timer(args.no_graphs)
    for m, k, n, r in grid(args.quick):
        rows.append(bench_row(m, k, n, r, DTYPES[args.dtype], spec, time_ms))
        print(format_row(rows[-1]), flush=True)
    print(summarize(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=name, dtype=args.dtype, graphs=not args.no_graphs, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
