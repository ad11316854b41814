"""Why the svd pass's global allocation stops short on a toy teacher: ratios measured in one run.

At 50% of attention + MLP (tools/bench_svd.py's 'whitened global (sensitivity)' against 'whitened
uniform'):

1. uniform and global held-out error and their ratio (and the loss model's prediction);
2. sub-additivity: on the calibration batches the sensitivities are measured on, the error with
   every layer factorized against √(Σ each layer's error alone²), at uniform's and at global's ranks
   (the share of the squared error that cancels);
3. allocation on measured per-layer curves (each layer alone at every 8th rank of its trust range;
   --wide: from rank 4 to break-even, allocated with and without the trust region): the ratio the
   additive model on those curves predicts, and the held-out ratio the pass measures with those ranks;
4. --rounds N: sensitivities re-measured at the ranks allocated, reallocated: held-out ratio per round.

Static errors swap a layer's teacher-activation factors into the teacher (no compensation); held-out
ratios are of the whole pass (compensation, student activations) with the ranks given.

    python tools/bench_alloc_limits.py [--family pixart|flux] [--parts 1 2 3 4] [--rounds 2] [--wide]

A shared 2-core machine, 216 s (PixArt) / 244 s (Flux): global/uniform held-out 0.857 / 0.753 (predicted
0.822 / 0.693); at uniform's ranks 15.6% / 6.6% of the squared calibration error cancels, at global's
10.0% / 5.1%; measured curves predict 0.825 / 0.699 and measure 0.855 / 0.747 (PixArt --wide: 0.827
and 0.826 without the trust region, both 0.856); re-measured sensitivities 0.857, 0.853 / 0.749, 0.749.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["pixart", "flux"], default="pixart")
    parser.add_argument("--parts", nargs="+", type=int, choices=[1, 2, 3, 4], default=[1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=2, help="part 4's reallocations (default 2)")
    parser.add_argument("--wide", action="store_true", help="part 3: curves from rank 4 to break-even")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help and bad arguments answered before torch loads
    ARGS = parse_args()

import contextlib  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compress.passes.svd_global as svd_global  # noqa: E402
from compress.alloc import DENSE, LayerSpec, global_greedy, trust_ranges  # noqa: E402
from compress.arch import get_adapter  # noqa: E402
from compress.linalg import normalized_curve  # noqa: E402
from compress.passes.base import predictions, relative_error  # noqa: E402
from compress.passes.svd import SVDConfig, SVDPass  # noqa: E402
from compress.passes.svd_layer import approximation, swapped_weight  # noqa: E402
from compress.passes.svd_targets import shape_spec  # noqa: E402
from compress.toy.weights import load_toy_teacher  # noqa: E402
from tools import bench_svd  # noqa: E402

MULTIPLE, TRUST = 4, 2.0  # as bench_svd's runs: ranks multiples of 4, the pass's default trust region


# ----------------------------------------------------------------------------- pure pieces


def rank_grid(lo: int, hi: int, extra=(), step: int = 8, multiple: int = MULTIPLE) -> list[int]:
    """Every `step`th rank from `lo` (rounded up to `multiple`) to `hi`, `hi` rounded down, and `extra`."""
    first, last = lo + (-lo) % multiple, hi - hi % multiple
    return sorted({*range(first, last + 1, step), last, *extra})


def measured_curve(curve, errors: dict) -> list[float]:
    """A layer's squared error alone at every rank: w(r)·curve(r), log w interpolated between the
    ranks of `errors` (rank -> relative error alone) and held flat past them."""
    c = np.asarray(curve, dtype=np.float64)
    rs = sorted(errors)
    logw = [math.log(errors[r] ** 2 / max(c[r], 1e-300)) for r in rs]
    return list(np.exp(np.interp(np.arange(len(c)), rs, logw)) * c)


def cancelled(combined: float, alone) -> tuple[float, float]:
    """(√Σ alone², the share of Σ alone² that the combined error's square lacks)."""
    additive = sum(e * e for e in alone)
    return math.sqrt(additive), 1 - combined**2 / additive


def predicted_ratio(curves: dict, ranks: dict, base: dict) -> float:
    """√(Σ curve[rank] / Σ curve[base rank]) over the layers of `curves` (dense: 0)."""
    def total(r):
        return sum(curves[n][r[n]] for n in curves if r[n] is not DENSE)
    return math.sqrt(total(ranks) / total(base))


# ----------------------------------------------------------------------------- runs of the pass


class Runs:
    """The pass on the toy teacher (bench_svd.compress, one calibration cache): uniform at 50%, then
    global at uniform's kept ratio, recording each measured target's factorization inputs and the
    allocation's specs, weights, budget; then the pass again with other ranks in place of global's."""

    def __init__(self, family: str, run_dir: Path):
        self.family, self.run_dir = family, run_dir
        student, rep, _ = bench_svd.compress(family, run_dir, ratio=0.5, multiple=MULTIPLE)
        self.uniform_error, self.kept = bench_svd.error(student, family), rep["kept_ratio"]
        self.uniform = {k: v.get("rank") for k, v in rep["layers"].items()}
        self.store, self.info = {}, {}
        student, rep = self._global(self._recording())
        self.global_error = bench_svd.error(student, family)
        self.predicted = rep["global"]["predicted_error_vs_uniform"]
        self.ranks = self.info["ranks"]
        self.specs = [shape_spec(i, normalized_curve(self.store[i.name][1].curve))
                      for i in self.info["targets"] if i.name in self.store]

    def _recording(self):
        info, pass_ranks = self.info, SVDPass._global_ranks

        def ranks(pass_self, model, adapter, targets, batches, fixed):
            r, got = pass_ranks(pass_self, model, adapter, targets, batches, fixed)
            info.update(got, ranks=r, targets=targets)
            return r, got
        return ranks

    def _global(self, ranks_method):
        approx = svd_global.approximation

        def recording(m, dec, rank, root=None, name=None):
            self.store[name] = (m, dec, root)
            return approx(m, dec, rank, root, name)
        saved = SVDPass._global_ranks
        svd_global.approximation, SVDPass._global_ranks = recording, ranks_method
        try:
            student, rep, _ = bench_svd.compress(self.family, self.run_dir, ratio=self.kept, multiple=MULTIPLE,
                                                 allocation="global")
        finally:
            svd_global.approximation, SVDPass._global_ranks = approx, saved
        return student, rep

    def ratio_with(self, ranks: dict) -> float:
        """Held-out error of the pass with `ranks` in place of global's, over uniform's."""
        student, _ = self._global(lambda _s, _m, _a, _t, _b, fixed: ({**fixed, **ranks}, {}))
        return bench_svd.error(student, self.family) / self.uniform_error


class Meter:
    """Static errors on calibration batches: the teacher with some layers swapped to their factors
    (made from the recorded teacher-activation factorization, as the sensitivity measurement does)."""

    def __init__(self, runs: Runs, batches: list[dict]):
        self.runs, self.batches, self.factors = runs, batches, {}
        self.model = load_toy_teacher(runs.family)
        self.adapter = get_adapter(self.model)
        self.ref = predictions(self.model, self.adapter, batches)

    def _factors(self, name: str, rank: int):
        if (name, rank) not in self.factors:
            m, dec, root = self.runs.store[name]
            up, down, shift = approximation(m, dec, rank, root, name)
            self.factors[name, rank] = ((up @ down).float(), shift.float() if shift is not None else None)
        return self.factors[name, rank]

    def error(self, ranks: dict) -> float:
        """Relative error with every layer of `ranks` factorized at its rank (dense: left alone)."""
        with contextlib.ExitStack() as stack, torch.no_grad():
            for name, rank in ranks.items():
                if rank is not DENSE:
                    stack.enter_context(swapped_weight(self.model, name, *self._factors(name, rank)))
            return relative_error(self.model, self.ref, self.adapter, self.batches)


# ----------------------------------------------------------------------------- the four parts


def part_errors(runs: Runs) -> list[str]:
    return [f"{runs.family}: held-out error uniform {runs.uniform_error:.5f}, global {runs.global_error:.5f}: "
            f"global/uniform {runs.global_error / runs.uniform_error:.3f} (the loss model predicted "
            f"{runs.predicted:.3f}); kept {runs.kept:.4f}"]


def part_subadditive(runs: Runs, meter: Meter) -> list[str]:
    lines = []
    for label, ranks in (("uniform", runs.uniform), ("global", runs.ranks)):
        own = {s.name: ranks[s.name] for s in runs.specs}
        combined = meter.error(own)
        additive, share = cancelled(combined, [meter.error({n: r}) for n, r in own.items() if r is not DENSE])
        lines.append(f"{runs.family}: calibration error at {label}'s ranks: combined {combined:.5f}, "
                     f"√Σ each layer alone² {additive:.5f}: {share:.1%} of the squared error cancels")
    return lines


def measured_specs(runs: Runs, meter: Meter, wide: bool) -> tuple[list[LayerSpec], dict]:
    """Specs whose curves are each layer's measured squared error alone (`measured_curve`), and the ranks
    measured per layer: every 8th of its trust range (wide: from 4 to break-even)."""
    ranges = trust_ranges(runs.specs, runs.kept, MULTIPLE, TRUST)
    specs, grids = [], {}
    for s in runs.specs:
        u = runs.uniform[s.name]
        lo, hi = (4, s.breakeven - 1) if wide else ranges[s.name]
        grids[s.name] = [r for r in rank_grid(lo, hi, [u] if u is not DENSE else []) if r < s.breakeven]
        errors = {r: meter.error({s.name: r}) for r in grids[s.name]}
        specs.append(LayerSpec(s.name, s.out_features, s.in_features, measured_curve(s.curve, errors), bias=s.bias))
    return specs, grids


def part_measured_curves(runs: Runs, meter: Meter, wide: bool):
    start = time.perf_counter()
    specs, grids = measured_specs(runs, meter, wide)
    curves = {s.name: s.curve for s in specs}
    uni = {s.name: runs.uniform[s.name] for s in specs}
    ranges = trust_ranges(runs.specs, runs.kept, MULTIPLE, TRUST)
    for trust, label in [(ranges, "trust region"), *([(None, "no trust region")] if wide else [])]:
        ranks = global_greedy(specs, runs.info["budget_params"], MULTIPLE, None, trust).ranks
        yield (f"{runs.family}: allocation on measured per-layer curves ({sum(map(len, grids.values()))} "
               f"errors, {'rank 4 to break-even' if wide else 'every 8th rank of the trust range'}, {label}): "
               f"predicted {predicted_ratio(curves, ranks, uni):.3f}, held-out {runs.ratio_with(ranks):.3f} "
               f"({time.perf_counter() - start:.0f}s)")


def part_rounds(runs: Runs, meter: Meter, rounds: int):
    """Each round: every layer's weight re-measured alone at the rank the last allocation gave it
    (error² / normalized loss, as the pass measures it at uniform's), then the pass's greedy again."""
    specs, weights = runs.specs, dict(runs.info["weights"])
    ranges = trust_ranges(specs, runs.kept, MULTIPLE, TRUST)
    ranks = {s.name: runs.ranks[s.name] for s in specs}
    for k in range(rounds):
        for s in specs:
            r = ranks[s.name]
            if r is not DENSE and float(s.curve[r]) >= 1e-6:
                weights[s.name] = meter.error({s.name: r}) ** 2 / float(s.curve[r])
        new = global_greedy(specs, runs.info["budget_params"], MULTIPLE, weights, ranges).ranks
        moved = sum(abs((new[n] or 0) - (ranks[n] or 0)) for n in new)
        ranks = new
        yield (f"{runs.family}: sensitivities re-measured at the allocated ranks, round {k + 1}: "
               f"ranks moved {moved}, held-out {runs.ratio_with(ranks):.3f}")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(args.family, Path(tmp))
        meter = Meter(runs, bench_svd.calibration_batches(args.family)[:SVDConfig().sensitivity_batches])
        parts = {1: lambda: part_errors(runs), 2: lambda: part_subadditive(runs, meter),
                 3: lambda: part_measured_curves(runs, meter, args.wide),
                 4: lambda: part_rounds(runs, meter, args.rounds)}
        for part in args.parts:
            for line in parts[part]():
                print(line, flush=True)
    print(f"{args.family}: {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main(ARGS)
