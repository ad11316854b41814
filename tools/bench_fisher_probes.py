"""The output Fisher's probe count on the embedded default: run `recipes/toy-pixart.yaml` with its
attention/MLP svd pass's `fisher_probes` at 4 (the default), 16 and 64, and print each run's
teacher-relative error after that svd pass and after distillation, and that pass's seconds (what the
probe count changes; the first run's wall time also holds one-time start-up), as ratios to 4 probes
measured in this one run (the README's fisher_probes sentence). Also prints that svd pass's
global allocation against uniform as its report records it (parameter counts, the loss model's
predicted error ratios), at the recipe's ratio and at `--ratios` more.

    python tools/bench_fisher_probes.py [--probes 4 16 64] [--ratios 0.3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from compress.recipe import load_recipe
from compress.runner import Runner

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "toy-pixart.yaml"
SVD = 2  # the attention / cross-attention / MLP svd pass of the recipe


def run(tmp: Path, name: str, sets: list[str]) -> tuple[dict, float]:
    """(report.json, wall seconds) of the recipe with `sets`."""
    start = time.perf_counter()
    out = Runner(load_recipe(RECIPE, sets), tmp / name, tmp / f"run-{name}").run()
    return json.loads((Path(out) / "report.json").read_text()), time.perf_counter() - start


def svd_seconds(report: dict) -> float:
    return report["stages"][SVD]["seconds"]


def errors(report: dict) -> tuple[float, float]:
    """(error after the svd pass, error after the last pass)."""
    stages = report["stages"]
    return stages[SVD]["relative_error"], stages[-1]["relative_error"]


def global_line(ratio: float, report: dict) -> str:
    g = report["svd"]["global"]
    return (f"ratio {ratio}: uniform keeps {g['uniform_params']:,}, global {g['spent_params']:,} "
            f"(budget {g['budget_params']:,}); predicted error vs uniform {g['predicted_error_vs_uniform']:.2f} "
            f"at global's count, {g['predicted_error_vs_uniform_equal_params']:.2f} at uniform's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {k: run(Path(tmp), f"k{k}", [f"passes.{SVD}.svd.fisher_probes={k}"]) for k in args.probes}
        more = {r: run(Path(tmp), f"r{r}", [f"passes.{SVD}.svd.ratio={r}"])[0] for r in args.ratios}
    first = rows[args.probes[0]][0]
    (svd0, end0), t0 = errors(first), svd_seconds(first)
    print(f"\n{'probes':>7}{'svd err':>10}{'x':>7}{'final err':>11}{'x':>7}{'svd s':>8}{'x':>6}{'wall s':>8}")
    for k, (report, seconds) in rows.items():
        (svd, end), t = errors(report), svd_seconds(report)
        print(f"{k:>7}{svd:>10.5f}{svd / svd0:>7.3f}{end:>11.5f}{end / end0:>7.3f}{t:>8.1f}{t / t0:>6.2f}"
              f"{seconds:>8.0f}")
    print(global_line(load_recipe(RECIPE).passes[SVD].config.ratio, first))
    for ratio, report in more.items():
        print(global_line(ratio, report))


if __name__ == "__main__":
    main()
