"""Greedy against exact global allocation on the toy recipes' real svd pass: run `recipes/toy-pixart.yaml`
(and `toy-flux.yaml`) up to the allocation of their global svd pass, take what it allocates from (the
targets' normalized loss curves, measured sensitivity weights, trust ranges, budget), and print the
weighted loss Σ weight·normalized loss of `alloc.global_greedy` and of `alloc_exact.exact_allocation`
(their ratio, and its square root: the prediction error the loss model expects of greedy over exact),
the parameters each keeps, the targets they rank differently and the seconds each took; with the trust
region the recipe runs and without it.

    python tools/bench_alloc_exact.py [--recipes toy-pixart toy-flux] [--flux-sized]

--flux-sized adds a synthetic FLUX.1-dev-sized instance (19 double + 38 single blocks, hidden 3072,
MLP 12288: 418 targets; power-law spectra, log-normal weights) at ratios 0.6 and 0.3, multiple 16.

A shared 2-core machine (exact's seconds include the greedy run it starts from), greedy/exact weighted loss:
toy PixArt (50 targets, trust 2.0) 1.00844 (2 targets ranked otherwise; 789,632 and 790,656 of 791,424
kept; 0.08 s), 1.00000 without the trust region; toy Flux (39) 1.00753 (4; 0.06 s), 1.00654 without;
FLUX-sized at 0.6 1.00014 (2.5 s; 6.7 s without the trust region), at 0.3 1.00000 (3.1 s; 6.0 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class Captured(BaseException):
    """Raised by the hook once the pass's allocation inputs are recorded: the run stops there."""


def captured_inputs(name: str, tmp: Path) -> tuple:
    """(specs, budget, multiple, weights, ranges) the recipe's global svd pass allocates from."""
    import compress.passes.svd_global as svd_global
    from compress.recipe import parse_recipe
    from compress.runner import Runner
    from tools.bench_alloc import trimmed

    seen = []

    def hook(*args):
        seen.append(args)
        raise Captured

    original, svd_global.global_greedy = svd_global.global_greedy, hook
    try:
        recipe = parse_recipe(trimmed((RECIPES / f"{name}.yaml").read_text()), f"{name}.yaml", [])
        Runner(recipe, tmp / name, tmp / f"run-{name}", overwrite=True).run()
    except Captured:
        return seen[0]
    finally:
        svd_global.global_greedy = original
    raise RuntimeError(f"{name}: the run allocated nothing globally")


def flux_sized(ratio: float, multiple: int = 16, trust: float = 2.0) -> tuple:
    import numpy as np
    import torch

    from compress.alloc import LayerSpec, budget_for_ratio, trust_ranges

    rng, hidden, mlp = np.random.default_rng(0), 3072, 12288
    shapes = []
    for b in range(19):
        for s in ("img", "txt"):
            shapes += [(f"double.{b}.{s}.{n}", hidden, hidden) for n in ("q", "k", "v", "out")]
            shapes += [(f"double.{b}.{s}.ff_up", mlp, hidden), (f"double.{b}.{s}.ff_down", hidden, mlp)]
    for b in range(38):
        shapes += [(f"single.{b}.{n}", hidden, hidden) for n in ("q", "k", "v")]
        shapes += [(f"single.{b}.proj_mlp", mlp, hidden), (f"single.{b}.proj_out", hidden, hidden + mlp)]
    specs = []
    for name, out_f, in_f in shapes:
        k = min(out_f, in_f)  # squared singular values of a power law with jitter
        energies = np.sort((np.arange(1, k + 1) ** -rng.uniform(0.3, 1.5)) * rng.uniform(0.8, 1.2, k))[::-1] ** 2
        curve = np.append(np.cumsum(energies[::-1])[::-1], 0.0)
        specs.append(LayerSpec(name, out_f, in_f, torch.tensor(curve / curve[0])))
    weights = {s.name: float(np.exp(rng.normal(0, 1.5))) for s in specs}
    return specs, budget_for_ratio(specs, ratio), multiple, weights, trust_ranges(specs, ratio, multiple, trust)


def compare(label: str, specs, budget, multiple, weights, ranges) -> str:
    from compress.alloc import global_greedy, weighted_loss
    from compress.alloc_exact import exact_allocation

    start = time.perf_counter()
    greedy = global_greedy(specs, budget, multiple, weights, ranges)
    middle = time.perf_counter()
    exact = exact_allocation(specs, budget, multiple, weights, ranges, max_work=None)
    end = time.perf_counter()
    g, e = weighted_loss(specs, greedy.ranks, weights), weighted_loss(specs, exact.ranks, weights)
    ratio = g / e if e > 0 else 1.0
    differ = sum(greedy.ranks[s.name] != exact.ranks[s.name] for s in specs)
    return (f"{label:<32}{len(specs):>8}{budget:>15,}{g:>12.5g}{e:>12.5g}{ratio:>9.5f}{ratio ** 0.5:>8.5f}"
            f"{greedy.spent:>15,}{exact.spent:>15,}{differ:>6}{middle - start:>11.2f}{end - middle:>10.2f}")


HEADER = (f"{'instance':<32}{'targets':>8}{'budget':>15}{'greedy':>12}{'exact':>12}{'g/e':>9}{'√g/e':>8}"
          f"{'greedy kept':>15}{'exact kept':>15}{'diff':>6}{'greedy s':>11}{'exact s':>10}")  # compare's columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", default=["toy-pixart", "toy-flux"])
    parser.add_argument("--flux-sized", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # the runs print their own lines first: the table follows
        rows = [(f"{name} (trust region)", f"{name} (no trust region)", captured_inputs(name, Path(tmp)))
                for name in args.recipes]
    print(HEADER, flush=True)
    for with_trust, without, (specs, budget, multiple, weights, ranges) in rows:
        print(compare(with_trust, specs, budget, multiple, weights, ranges), flush=True)
        print(compare(without, specs, budget, multiple, weights, None), flush=True)
    for ratio in (0.6, 0.3) if args.flux_sized else ():
        specs, budget, multiple, weights, ranges = flux_sized(ratio)
        print(compare(f"flux-sized {ratio} (trust 2.0)", specs, budget, multiple, weights, ranges), flush=True)
        print(compare(f"flux-sized {ratio} (no trust)", specs, budget, multiple, weights, None), flush=True)


if __name__ == "__main__":
    main()
