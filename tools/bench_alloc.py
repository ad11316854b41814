"""Global against uniform allocation on the embedded defaults: run `recipes/toy-pixart.yaml` (and
`toy-flux.yaml`) up to their attention/MLP svd pass (the modulation svd and distill passes cut) with
that pass's `allocation` uniform and global at each `--ratios`, and global also with
`sensitivity_batches` at each `--sensitivity-batches`, and print the held-out teacher-relative error
after that pass, global's over uniform's, the parameters each kept, and the loss model's prediction
(report.json's `predicted_error_vs_uniform`). The earlier passes (importance, remove_blocks) run once
per recipe; the other runs resume from a copy of that run folder.

    python tools/bench_alloc.py [--recipes toy-pixart toy-flux] [--ratios 0.3 0.6] [--sensitivity-batches 2 5]

Toy PixArt (`--recipes toy-pixart --sensitivity-batches 5`; 57 min on a shared 2-core machine when
last run whole): global/uniform held-out 0.962 (2 sensitivity batches) / 0.887 (5) at ratio 0.3 (0.1713
uniform; global keeps 394,368 parameters to uniform's 376,960), 1.020 / 1.005 at 0.6 (0.1745 uniform;
global 789,632 / 790,656 to 827,520); here the error after the pass is mostly the removed block's,
which the pass's compensation undoes (0.269 before it), so these ratios say little of the allocation
alone.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from compress.recipe import parse_recipe
from compress.runner import Runner

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SVD = 2  # the attention / (cross-attention) / MLP svd pass of both recipes


def trimmed(text: str) -> str:
    """The recipe without the passes after its first svd pass (modulation svd, distill)."""
    return re.sub(r"\n  - svd:\n      targets: \[modulation\].*?(?=\nexport:)", "\n", text, flags=re.S)


def run(text: str, name: str, sets: list[str], tmp: Path, base: Path | None) -> dict:
    """report.json of the trimmed recipe with `sets`; resumed from a copy of run folder `base`."""
    run_dir = tmp / f"run-{name}"
    if base is not None:
        shutil.copytree(base, run_dir)
    recipe = parse_recipe(text, f"{name}.yaml", sets)
    out = Runner(recipe, tmp / name, run_dir, resume=base is not None, overwrite=True).run()
    return json.loads((Path(out) / "report.json").read_text())


def row(recipe: str, ratio: float, batches: int | None, uni: dict, glob: dict) -> str:
    eu, eg = uni["stages"][SVD]["relative_error"], glob["stages"][SVD]["relative_error"]
    g = glob["svd"]["global"] if "global" in glob.get("svd", {}) else {}
    pred = g.get("predicted_error_vs_uniform")
    return (f"{recipe:<11}{ratio:>6}{batches if batches else 'default':>9}{eu:>10.4f}{eg:>10.4f}{eg / eu:>8.3f}"
            f"{g.get('uniform_params', 0):>11,}{g.get('spent_params', 0):>11,}"
            f"{pred if pred is None else format(pred, '.3f'):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["toy-pixart", "toy-flux"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.6])
    parser.add_argument("--sensitivity-batches", nargs="*", type=int, default=[],
                        help="global runs with these sensitivity_batches besides the default")
    args = parser.parse_args()
    lines = [f"{'recipe':<11}{'ratio':>6}{'sens.b':>9}{'uniform':>10}{'global':>10}{'g/u':>8}"
             f"{'uni params':>11}{'glob params':>11}{'pred':>7}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            text = trimmed((RECIPES / f"{name}.yaml").read_text())
            key = f"passes.{SVD}.svd"
            base = None
            for ratio in args.ratios:
                uni = run(text, f"{name}-u{ratio}", [f"{key}.allocation=uniform", f"{key}.ratio={ratio}"],
                          Path(tmp), base)
                base = base or Path(tmp) / f"run-{name}-u{ratio}"
                for b in [None, *args.sensitivity_batches]:
                    sets = [f"{key}.ratio={ratio}"] + ([f"{key}.sensitivity_batches={b}"] if b else [])
                    glob = run(text, f"{name}-g{ratio}-{b}", sets, Path(tmp), base)
                    lines.append(row(name, ratio, b, uni, glob))
                    print("\n".join(lines), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
