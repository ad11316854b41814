"""Within-block sequential calibration (`svd.sequential`) vs block-level, on the shipped toy teachers.

Attention + MLP at 50% kept params, whitened, uniform: held-out teacher-relative error of the final
prediction and the svd pass's time, for several Fisher / compensation / asymmetric settings, each
block-level (`sequential: false`) and within-block sequential (`true`), with a fresh calibration
cache per run, so the times are whole runs (on a shared machine they vary by 10% or more: `--repeat`
keeps the fastest of several). Also the seconds the calibration's block forwards took (`fwd`:
BlockCalibration._run and _reference_outputs, re-runs included) and, sequential, those of the
data-flow probes that merge a block's stages into levels (`probe`: BlockCalibration.dependencies).
`--per-stage` adds a column with one re-run per stage, as before levels (svd_walk.leveled off).
`--whole-forwards` adds a line per run with every calibration forward run whole (before re-runs and
student-mode stats forwards ended at their last reader, `calib._stopping`), and the ratios of the
two: the same errors, less forward time.

    python tools/bench_sequential.py [--families pixart flux] [--runs NAME ...] [--threads 1]
                                     [--repeat 1] [--per-stage] [--whole-forwards]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_svd import compress, error  # noqa: E402  (the pass on a toy teacher, held-out error)

import compress.calib as calib  # noqa: E402
from compress.calib import BlockCalibration  # noqa: E402
from compress.passes import svd_walk  # noqa: E402

BASE = dict(ratio=0.5, multiple=4)
RUNS = {  # name -> svd config (besides BASE)
    "default (Fisher, compensation)": {},
    "Fisher, no compensation": dict(compensate=False),
    "Fisher, no compensation, asymmetric": dict(compensate=False, asymmetric=True),
    "no Fisher": dict(fisher="none", asymmetric=False),
    "no Fisher, asymmetric": dict(fisher="none"),
    "block Fisher, asymmetric": dict(fisher="block"),
}
SPENT = {"fwd": 0.0, "probe": 0.0}


def _timed(cls, method: str, key: str) -> None:
    real = getattr(cls, method)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - start
    setattr(cls, method, wrapper)


def one(family: str, cfg: dict, sequential: bool, repeat: int) -> tuple[float, float, float, float]:
    """(error, fastest pass seconds, its block-forward seconds, its probe seconds) over `repeat` runs."""
    best = None
    for _ in range(repeat):
        SPENT.update(fwd=0.0, probe=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            student, _, seconds = compress(family, Path(tmp), **BASE, **cfg, sequential=sequential)
        if best is None or seconds < best[1]:
            best = (student, seconds, SPENT["fwd"], SPENT["probe"])
    student, seconds, fwd, probe = best
    return error(student, family), seconds, fwd, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of this many runs")
    parser.add_argument("--per-stage", action="store_true", help="also one re-run per stage (no levels)")
    parser.add_argument("--whole-forwards", action="store_true",
                        help="also with every calibration forward run whole (no early end)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _timed(BlockCalibration, "_run", "fwd")
    _timed(BlockCalibration, "_reference_outputs", "fwd")
    _timed(BlockCalibration, "dependencies", "probe")
    leveled = svd_walk.leveled
    for family in args.families:
        for name in args.runs:
            e0, t0, f0, _ = one(family, RUNS[name], False, args.repeat)
            line = f"{family:6s} {name:32s} block-level {e0:.5f} ({t0:5.1f}s, fwd {f0:4.1f}s)"
            modes = {"levels": leveled}
            if args.per_stage:
                modes = {"per stage": lambda cal, block, staged: staged, **modes}
            for mode, fn in modes.items():
                svd_walk.leveled = fn
                e1, t1, f1, p1 = one(family, RUNS[name], True, args.repeat)
                line += (f" | {mode} {e1:.5f} ({t1:5.1f}s, fwd {f1:4.1f}s, probe {p1:4.2f}s) error x{e1 / e0:.3f}"
                         f" time x{t1 / t0:.2f} fwd x{f1 / f0:.2f}")
            svd_walk.leveled = leveled
            print(line, flush=True)
            if args.whole_forwards:
                print(_against_whole(family, name, args.repeat, (e0, t0, f0), (e1, t1, f1)), flush=True)


def _against_whole(family: str, name: str, repeat: int, block_level: tuple, levels: tuple) -> str:
    """The run block-level and sequential (levels) with every forward whole: ratios ended / whole."""
    ending = calib._stopping
    calib._stopping = lambda model, readers, calls: ending(model, readers, None)
    try:
        line = f"{family:6s} {name:32s} ended early / whole forwards:"
        for label, sequential, (e, t, f) in (("block-level", False, block_level), ("levels", True, levels)):
            ew, tw, fw, _ = one(family, RUNS[name], sequential, repeat)
            line += f" | {label} error {e:.5f} / {ew:.5f}, time x{t / tw:.2f}, fwd x{f / fw:.2f}"
    finally:
        calib._stopping = ending
    return line


if __name__ == "__main__":
    main()
