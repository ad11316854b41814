"""A modulation linear's output Fisher kept as its gradient rows vs as F.

A linear that reads one row per sample (Flux's norm1.linear on silu(temb)) gets samples x probes
gradient rows per sweep: 1,400 for flux-dev-modulation.yaml (25 prompts x 14 steps x 4 probes)
against out = 18,432 (double blocks) or 9,216 (single blocks). This times building (L, L⁻¹) from
random rows of that count at a few widths both ways (`svd_fisher_roots.sqrt_pair`: eigh of the rows'
n x n Gram vs eigh of F after F = RᵀR), checks they agree, and prints the ratios of time and of
bytes held per target (rows in float32 vs F in float64). Widths stop where eigh of F takes
minutes on 2 cores; Flux.1-dev's 18,432 is 8x the cost of 9,216 for F, about 4x for the rows.

    python tools/bench_fisher_rows.py [--rows 1400] [--outs 3072 6144 9216]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.passes.svd_fisher import dense_fisher, fisher_bytes  # noqa: E402
from compress.passes.svd_fisher_roots import sqrt_pair  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1400)
    ap.add_argument("--outs", type=int, nargs="+", default=[3072, 6144, 9216])
    args = ap.parse_args()
    print(f"{'out':>6} {'rows s':>8} {'F s':>8} {'time F/rows':>12} {'bytes F/rows':>13} {'max |ΔL|/|L|':>14}")
    for out in args.outs:
        g = torch.Generator().manual_seed(out)
        scale = torch.logspace(0, -4, out)  # an anisotropic spectrum, like real gradients
        rows = torch.randn(args.rows, out, generator=g) * scale  # (n, out) float32, as kept
        (root, inv), t_rows = timed(lambda: sqrt_pair(rows, 1e-3))
        (want, want_inv), t_dense = timed(lambda: sqrt_pair(dense_fisher(rows), 1e-3))
        err = max(float((root - want).abs().max() / want.abs().max()),
                  float((inv - want_inv).abs().max() / want_inv.abs().max()))
        ratio = fisher_bytes(out, None) / fisher_bytes(out, args.rows)
        print(f"{out:>6} {t_rows:>8.2f} {t_dense:>8.2f} {t_dense / t_rows:>12.1f} {ratio:>13.1f} {err:>14.1e}")
        del root, inv, want, want_inv


if __name__ == "__main__":
    main()
