"""Cost of svd compensation: whole forwards and the whole β ladder (as before), the blocks before each
stage replayed (`replay.Prefix`), and, on top, the β ladder walked from the previous stage's step
(`svd.compensate_search: walk`, the pass's default; `ladder` tries it whole).

Each compensated stage runs one forward + backward and up to 11 line-search forwards over its
calibration batches. Nothing before the stage's block changes during them, so the replay records
that block's input once per block and every forward runs from there on; the walk tries fewer β.
This script runs the same svd pass (toy teacher, attention + MLP at 50%, whitened, compensating)
the three ways, in one process, and prints each one's time (the fastest of --repeats), its ratio to
the first, the line-search candidates tried, and the held-out error (equal when the shortcuts
change what is computed, not its result).

    python tools/bench_replay.py [--families pixart flux] [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_svd  # noqa: E402  (calibration batches, the pass on a toy teacher, held-out error)

from compress.passes import svd_stages  # noqa: E402  (where the pass builds each stage's Prefix)
from compress.replay import Prefix  # noqa: E402


class FullForwards(Prefix):
    """Forwards as without the replay: every one runs the whole model."""
    built = 0  # how many the pass built: a variant the pass no longer reads must not time the default

    def __init__(self, model, adapter, batches, start):
        FullForwards.built += 1
        super().__init__(model, adapter, batches, 0)


VARIANTS = {  # name -> (Prefix class, svd.compensate_search)
    "whole forwards, whole ladder": (FullForwards, "ladder"),
    "replayed, whole ladder": (Prefix, "ladder"),
    "replayed, walked ladder (default)": (Prefix, "walk"),
}


def timed(family: str, variant: str) -> tuple[float, float, int]:
    prefix, search = VARIANTS[variant]
    svd_stages.Prefix, FullForwards.built = prefix, 0
    try:
        with tempfile.TemporaryDirectory() as run_dir:  # a cold calibration cache for every run
            start = time.perf_counter()
            student, report, _ = bench_svd.compress(family, Path(run_dir), ratio=0.5, multiple=4,
                                                    compensate_search=search)
            seconds = time.perf_counter() - start
    finally:
        svd_stages.Prefix = Prefix
    if prefix is FullForwards and not FullForwards.built:
        raise SystemExit("bench_replay: the svd pass no longer builds its stages' Prefix in svd_stages; "
                         "patch where it does")
    candidates = sum(s["candidates"] for s in report["compensation"].values())
    return seconds, bench_svd.error(student, family), candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for family in args.families:
        times = {v: [] for v in VARIANTS}
        found = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                seconds, error, candidates = timed(family, variant)
                times[variant].append(seconds)
                found[variant] = (error, candidates)
        base = min(times[next(iter(VARIANTS))])
        for variant in VARIANTS:
            error, candidates = found[variant]
            print(f"{family}: {variant:34s} {min(times[variant]):5.1f}s ({min(times[variant]) / base:.2f}x), "
                  f"{candidates} candidates, held-out error {error:.6f}", flush=True)


if __name__ == "__main__":
    main()
