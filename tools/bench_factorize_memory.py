"""What factorizing one target holds against plan's count of it (plan_factorize.factorize_bytes): the
peak resident memory above what was resident before, of one target factorized as the svd pass does it
(svd_stages.factorize: the asymmetric step where fitted, then svd_layer.compress_layer with an output
weighting), in a fresh child process per shape, one thread, with MALLOC_MMAP_THRESHOLD_=65536 so
that freed matrices are given back at once. Synthetic statistics: a full-rank Gram, a cross term near it.

    python tools/bench_factorize_memory.py 256x1280 512x2560 1024x256     # OUTxIN, fitted
    python tools/bench_factorize_memory.py 1536x256 --plain --center       # not fitted, centered
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# prints the peak RSS above what was resident before (VmHWM reset through /proc/self/clear_refs)
MEASURE = """
import json, os, sys, torch
from torch import nn
from compress.arch.base import LinearInfo
from compress.calib_stats import Stats
from compress.linalg_steps import asymmetric_step, centered_asymmetric_step
from compress.passes.svd_layer import compress_layer
torch.set_num_threads(1)
out, inp, fitted, center = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
F64 = torch.float64
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(inp, out))
x = torch.randn(128, inp, dtype=F64)
gram = x.T @ x
gram.diagonal().add_(1.0)
stats = Stats(gram, x.sum(0), 10 * inp)
if fitted:
    stats.cross, stats.ref_total = gram + 0.01 * torch.randn(inp, inp, dtype=F64), stats.total.clone()
root = torch.eye(out, dtype=F64) + 0.01 * torch.triu(torch.randn(out, out, dtype=F64), 1)
roots = (root, torch.linalg.inv(root))
info = LinearInfo(name="0", role="mlp", part="out", group="g", block=0, in_features=inp, out_features=out,
                  input_key="k")
del x, gram
base = rss()
open("/proc/self/clear_refs", "w").write("5")
w, step, offset = model[0].weight, None, None
if fitted and center:
    step, offset = centered_asymmetric_step(w, stats.gram, stats.cross, stats.total, stats.ref_total, stats.rows,
                                            1e-2, name="0")
elif fitted:
    step = asymmetric_step(w, stats.gram, stats.cross, 1e-2, name="0")
compress_layer(model, info, stats, method="whitened", alpha=0.5, center=center, gram_is_output=False,
               choose_rank=lambda dec: min(out, inp) // 2, out_root=roots, step=step, offset=offset, fitted=fitted)
print(json.dumps(hwm() - base))
"""


def measured(out: int, inp: int, fitted: bool = True, center: bool = False) -> int:
    """Peak bytes above the resident ones of factorizing an (out, inp) target on its input Gram."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(out), str(inp), str(int(fitted)), str(int(center))],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapes", nargs="+", help="OUTxIN")
    p.add_argument("--plain", action="store_true", help="not fitted to a reference (no asymmetric step)")
    p.add_argument("--center", action="store_true", help="centered Gram, the mean error in the bias")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from compress.plan_factorize import factorize_bytes

    print("| out x in | fitted | centered | measured MiB | planned MiB | measured / planned |\n|---|---|---|---:|---:|---:|")
    for shape in args.shapes:
        out, inp = (int(n) for n in shape.lower().split("x"))
        size = measured(out, inp, not args.plain, args.center)
        planned = factorize_bytes(out, inp, False, not args.plain, args.center)
        print(f"| {out} x {inp} | {not args.plain} | {args.center} | {size / 2**20:.1f} | {planned / 2**20:.1f} "
              f"| {size / planned:.2f} |", flush=True)


if __name__ == "__main__":
    main()
