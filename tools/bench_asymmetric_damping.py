"""What `svd.asymmetric_damping` costs and buys, on the shipped toy teachers.

Attention + MLP at 50% kept params, whitened, uniform, fitted asymmetrically (`fisher: none` and
`fisher: block`, where `asymmetric: auto` fits every block target): for each damping, the report's
fit_excess / fit_optimal over the fitted layers (each layer's fit to the uncompressed model's outputs
on the calibration data above the least-squares minimum, against the rank-r minimum of that without
damping; 1 = the undamped optimum) and fit_gap (their difference, a share of the layer's output
energy), and the held-out teacher-relative error of the final prediction, as a ratio to the default
damping's (1e-2) in the same run.

    python tools/bench_asymmetric_damping.py [--families pixart flux] [--dampings 1e-6 1e-4 1e-2 1e-1 1]
                                             [--fishers none block] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_svd import compress, error  # noqa: E402  (the pass on a toy teacher, held-out error)

DEFAULT = 1e-2


def one(family: str, fisher: str, damping: float) -> tuple[float, list[float]]:
    """(held-out error, the fitted layers' (excess / optimum, gap)) of one pass."""
    with tempfile.TemporaryDirectory() as tmp:
        student, report, _ = compress(family, Path(tmp), ratio=0.5, multiple=4, fisher=fisher,
                                      asymmetric_damping=damping)
    fits = [(r["fit_excess"] / r["fit_optimal"] if r["fit_optimal"] > 0 else float("inf"), r["fit_gap"])
            for r in report["layers"].values() if "fit_gap" in r]
    return error(student, family), fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--dampings", nargs="+", type=float, default=[1e-6, 1e-4, 1e-2, 1e-1, 1.0])
    parser.add_argument("--fishers", nargs="+", default=["none", "block"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dampings = sorted(set(args.dampings) | {DEFAULT})
    for family in args.families:
        for fisher in args.fishers:
            runs = {d: one(family, fisher, d) for d in dampings}
            base = runs[DEFAULT][0]
            for d, (err, fits) in runs.items():
                ratios, gaps = [f[0] for f in fits], [f[1] for f in fits]
                print(f"{family:6s} fisher {fisher:5s} damping {d:7.0e}: {len(fits)} fitted layers, excess / undamped "
                      f"optimum median {statistics.median(ratios):.4f} worst {max(ratios):.4f}, gap (of output "
                      f"energy) median {statistics.median(gaps):.1e} worst {max(gaps):.1e}; held-out error "
                      f"{err:.5f} = x{err / base:.3f} of damping {DEFAULT:g}'s", flush=True)


if __name__ == "__main__":
    main()
