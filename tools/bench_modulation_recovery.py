"""Issue 8 goal 3 after a recovery step: the modulation at rank 8, then output-only distillation.

For each toy teacher: the svd pass puts the modulation linears at rank 8 (the embedded default's
≥ 10x), then `distill` trains the student toward the teacher's prediction alone (lambda_task 0,
no feature loss) for each step count. Prints the teacher-relative prediction error on 256 held-out
inputs (the rise, since the teacher's own is 0) before and after, as bench_svd.py measures it.

    python tools/bench_modulation_recovery.py [--families pixart flux] [--steps 400 1200] [--lr 3e-5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from compress.io_output import load_transformer
from compress.recipe import load_recipe
from compress.runner import Runner
from compress.toy.evaluate import prediction_error
from compress.toy.weights import load_toy_teacher

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipe(family: str, steps: int, lr: float) -> dict:
    """The toy recipe's calibration with only the modulation pass (and, if steps, output KD)."""
    raw = yaml.safe_load((RECIPES / f"toy-{family}.yaml").read_text())
    raw["passes"] = [{"svd": {"targets": ["modulation"], "ranks": {"modulation": 8}}}]
    if steps:
        raw["passes"].append({"distill": dict(steps=steps, batch_size=32, lr=lr, warmup_steps=10,
                                              lambda_task=0.0, lambda_out=1.0, lambda_feat=0.0,
                                              progress=False, plot=False)})
    return raw


def rise(family: str, steps: int, lr: float, tmp: Path) -> tuple[float, float]:
    path = tmp / f"{family}-{steps}.yaml"
    path.write_text(yaml.safe_dump(recipe(family, steps, lr)))
    start = time.perf_counter()
    out = Runner(load_recipe(path, []), tmp / f"out-{family}-{steps}", tmp / f"run-{family}-{steps}").run()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return prediction_error(load_transformer(out), load_toy_teacher(family), family, n=256, seed=0), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"])
    parser.add_argument("--steps", nargs="+", type=int, default=[400, 1200])
    parser.add_argument("--lr", type=float, default=3e-5)
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            base, _ = rise(family, 0, args.lr, Path(tmp))
            parts = [f"svd only {base:.2e}"]
            for steps in args.steps:
                err, seconds = rise(family, steps, args.lr, Path(tmp))
                parts.append(f"+{steps} KD steps {err:.2e} ({err / base:.2f}x, {seconds:.0f} s)")
            lines.append(f"{family}: modulation rank 8, error rise: " + "; ".join(parts) + " (goal ≤ 1e-3)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
