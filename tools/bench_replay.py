"""Cost of svd compensation with and without replaying the blocks before each stage (`replay.Prefix`).

Each compensated stage runs one forward + backward and 11 line-search forwards over its calibration
batches. Nothing before the stage's block changes during them, so the pass records that block's input
once per block and every forward runs from there on. This script runs the same svd pass (toy teacher,
attention + MLP at 50%, whitened, compensating) both ways, in one process, and prints the time of each,
their ratio, and both held-out errors (which must be equal: the replay changes what is computed, not
its result).

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

from compress.passes import svd  # noqa: E402
from compress.replay import Prefix  # noqa: E402


class FullForwards(Prefix):
    """The forwards as before the replay: every one runs the whole model."""

    def __init__(self, model, adapter, batches, start):
        super().__init__(model, adapter, batches, 0)


def timed(family: str, prefix_cls, run_dir: Path) -> tuple[float, float]:
    svd.Prefix = prefix_cls
    try:
        start = time.perf_counter()
        student, _, _ = bench_svd.compress(family, run_dir, ratio=0.5, multiple=4)
        seconds = time.perf_counter() - start
    finally:
        svd.Prefix = Prefix
    return seconds, bench_svd.error(student, family)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest of each counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            times = {"full": [], "replay": []}
            errors = {}
            for _ in range(args.repeats):
                for name, cls in (("full", FullForwards), ("replay", Prefix)):
                    seconds, errors[name] = timed(family, cls, Path(tmp))
                    times[name].append(seconds)
            full, replay = min(times["full"]), min(times["replay"])
            print(f"{family}: svd pass with compensation {full:.1f}s with full forwards, {replay:.1f}s replaying "
                  f"the blocks before each stage: {replay / full:.2f}x the time; held-out error "
                  f"{errors['full']:.6f} vs {errors['replay']:.6f}", flush=True)


if __name__ == "__main__":
    main()
