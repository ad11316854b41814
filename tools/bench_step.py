"""Time per denoising step, parameters and weight memory of the toy teachers vs their students at
50% kept parameters of the block linears (whitened SVD, uniform ratio 0.5, no distillation),
on this machine's CPU with the torch path. Prints ratios measured in one run.

    python tools/bench_step.py [--repeats 30] [--batch 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from compress.bench import bench
from compress.recipe import parse_recipe
from compress.runner import Runner

RECIPE = """\
model: {family}
teacher: toy:{family}
calibration: {{num_prompts: 10, timesteps: 4, batch_size: 64, heldout: 32}}
passes:
  - svd: {{targets: {targets}, ratio: 0.5, multiple: 8, progress: false}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="images per step (CFG doubles it)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("pixart", "flux"):
            targets = "[attention, cross_attention, mlp]" if family == "pixart" else "[attention, mlp]"
            text = RECIPE.format(family=family, targets=targets)
            recipe = parse_recipe(text, f"bench-{family}.yaml")
            out = Runner(recipe, Path(tmp) / family, Path(tmp) / f"run-{family}").run()
            rows.append((family, bench(out, repeats=args.repeats, batch=args.batch, device="cpu")))
    print(f"\n{'toy':<8}{'device':<8}{'batch':>6}{'params':>9}{'weights':>9}{'step time':>11}{'speedup':>9}")
    for family, r in rows:
        print(f"{family:<8}{r['device']:<8}{r['batch']:>6}{r['params_ratio']:>9.3f}"
              f"{r['weight_bytes_ratio']:>9.3f}{1 / r['speedup']:>11.3f}{r['speedup']:>8.2f}×")
    print("(student / teacher ratios; step time = median forward of one denoising step)")


if __name__ == "__main__":
    main()
