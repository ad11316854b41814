"""The embedded default end to end: run `recipes/toy-pixart.yaml` and `recipes/toy-flux.yaml`, then
score each student with the toy evaluator (200 samples, 20 steps, guidance 3, seed 0) against its
teacher. Prints the README's embedded-default rows. `--set` overrides both recipes' keys as
`dit-compress run --set` does (e.g. the svd passes without compensation:
`--set passes.2.svd.compensate=false --set passes.3.svd.compensate=false`).

    python tools/bench_default.py [--set KEY.PATH=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from compress.io import load_teacher
from compress.io_output import load_transformer
from compress.recipe import load_recipe
from compress.runner import Runner
from compress.toy.evaluate import evaluate

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("pixart", "flux"):
            recipe = load_recipe(RECIPES / f"toy-{family}.yaml", args.overrides)
            start = time.perf_counter()
            out = Runner(recipe, Path(tmp) / family, Path(tmp) / f"run-{family}").run()
            seconds = time.perf_counter() - start
            teacher = load_teacher(recipe.teacher)
            student = load_transformer(out)
            n_t = sum(p.numel() for p in teacher.parameters())
            n_s = sum(p.numel() for p in student.parameters())
            rows.append((family, seconds, n_s, n_s / n_t, evaluate(student, family, teacher=teacher),
                         json.loads((out / "report.json").read_text())["stages"]))
    print(f"\n{'recipe':<18}{'run s':>7}{'params':>12}{'kept':>8}{'adher.':>8}{'FD':>8}"
          f"{'MMD2':>9}{'PSNR dB':>9}{'pred err':>10}")
    for family, seconds, n_s, kept, r, _ in rows:
        print(f"{'toy-' + family + '.yaml':<18}{seconds:>7.0f}{n_s:>12,}{kept:>8.1%}{r['adherence']:>8.3f}"
              f"{r['fd']:>8.1f}{r['mmd']:>9.4f}{r['psnr_vs_teacher']:>9.1f}{r['pred_rel_error']:>10.3f}")
    for family, *_, stages in rows:  # the run's own held-out teacher-relative error after each pass
        print(f"toy-{family}.yaml after each pass: "
              + " -> ".join(f"{s['pass']} {s['relative_error']:.4f}{_guided(s)} ({s['seconds']:.0f} s)"
                            for s in stages))


def _guided(stage: dict) -> str:
    """' guided 0.2243' where the stage recorded its guided error (runner_heldout), else ''."""
    g = stage.get("guided_error")
    return "" if g is None else f" guided {g:.4f}"


if __name__ == "__main__":
    main()
