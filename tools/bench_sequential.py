"""Within-block sequential calibration (`svd.sequential`) vs block-level, on the shipped toy teachers.

Attention + MLP at 50% kept params, whitened, uniform: held-out teacher-relative error of the final
prediction and the svd pass's time, for several Fisher / compensation / asymmetric settings, each
block-level (`sequential: false`) and within-block sequential (`true`), with a fresh calibration
cache per run, so the times are whole runs (on a shared machine they vary by 10% or more).

    python tools/bench_sequential.py [--families pixart flux] [--runs NAME ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_svd import compress, error  # noqa: E402  (the pass on a toy teacher, held-out error)

BASE = dict(ratio=0.5, multiple=4)
RUNS = {  # name -> svd config (besides BASE)
    "default (Fisher, compensation)": {},
    "Fisher, no compensation": dict(compensate=False),
    "Fisher, no compensation, asymmetric": dict(compensate=False, asymmetric=True),
    "no Fisher": dict(fisher="none", asymmetric=False),
    "no Fisher, asymmetric": dict(fisher="none"),
    "block Fisher, asymmetric": dict(fisher="block"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for family in args.families:
        for name in args.runs:
            row = {}
            for sequential in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    student, _, seconds = compress(family, Path(tmp), **BASE, **RUNS[name], sequential=sequential)
                row[sequential] = (error(student, family), seconds)
            (e0, t0), (e1, t1) = row[False], row[True]
            print(f"{family:6s} {name:38s} block-level {e0:.5f} ({t0:5.1f}s)  sequential {e1:.5f} "
                  f"({t1:5.1f}s)  error ratio {e1 / e0:.3f}  time ratio {t1 / t0:.2f}", flush=True)


if __name__ == "__main__":
    main()
