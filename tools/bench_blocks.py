"""Which blocks to remove: importance scan vs its cosine proxy vs random, on the toy teachers.

For k = 1, 2, 3 removed blocks, the teacher-relative error ||pred_student - pred_teacher|| / ||pred_teacher||
on held-out (noised latent, timestep, prompt) inputs when removing:
  scan    the k blocks whose skip hurts least (one-shot, scored on training-split calibration inputs)
  greedy  the same, re-scanning after each removal (`iterative: true`)
  proxy   the k blocks with the highest cos(block input, block output)
  random  k uniformly drawn blocks (mean ± std over --draws draws)
For Flux, k counts over all blocks of both groups (double + single); no choice may empty a group.

    python tools/bench_blocks.py                 # both toy teachers, markdown table on stdout
    python tools/bench_blocks.py --tiny          # tiny random models (no trained weights needed)
    python tools/bench_blocks.py --json out.json --weights-dir DIR   # other toy weights
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics

import torch

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.importance import scan
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass, least_important


def load(family: str, tiny: bool, weights_dir: str | None = None):
    """(teacher, calibration batches, held-out batch)."""
    if tiny:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import model_inputs, tiny_flux, tiny_pixart

        model = tiny_pixart(num_layers=6) if family == "pixart" else tiny_flux(num_single_layers=4)
        return model, [model_inputs(model, batch=8, seed=s) for s in range(2)], model_inputs(model, batch=16, seed=9)
    from compress.toy import load_toy_teacher
    from compress.toy.data import model_inputs

    calib = [model_inputs(family, 64, seed=s, split="train") for s in range(2)]
    return load_toy_teacher(family, weights_dir=weights_dir), calib, model_inputs(family, 256, seed=123, split="heldout")


@torch.no_grad()
def rel_error(student, kwargs: dict, ref: torch.Tensor) -> float:
    pred = student(**kwargs).sample.double()[:, :ref.shape[1]]
    return float((pred - ref).norm() / ref.norm())


def pruned_error(teacher, drop: dict, heldout: dict, ref: torch.Tensor) -> float:
    student = copy.deepcopy(teacher)
    get_adapter(student).remove_blocks(student, drop)
    return rel_error(student, heldout, ref)


def random_drops(counts: dict[str, int], k: int, draws: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    blocks = [(g, i) for g, n in counts.items() for i in range(n)]
    out = []
    while len(out) < draws:
        pick = rng.sample(blocks, k)
        drop = {g: sorted(i for h, i in pick if h == g) for g in counts}
        if all(len(drop[g]) < counts[g] for g in counts):  # never empty a group
            out.append({g: v for g, v in drop.items() if v})
    return out


def greedy_error(teacher, calib, heldout, ref, k: int) -> tuple[float, list[str]]:
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    ctx = RunContext(adapter=adapter, family=adapter.family, teacher=teacher, run_dir=None,
                     calibration_inputs=lambda: calib)
    RemoveBlocksPass(RemoveBlocksConfig(count=k, iterative=True)).run(student, ctx)
    return rel_error(student, heldout, ref), ctx.report["remove_blocks"]["order"]


def bench(family: str, tiny: bool, draws: int, ks=(1, 2, 3), weights_dir: str | None = None) -> dict:
    teacher, calib, heldout = load(family, tiny, weights_dir)
    adapter = get_adapter(teacher)
    counts = adapter.block_counts(teacher)
    result = scan(teacher, adapter, calib, progress=True)
    c = teacher.config.in_channels
    ref = teacher(**heldout).sample.double()[:, :c]
    scores = {crit: {(b.group, b.index): b.score(crit) for b in result.blocks} for crit in ("scan", "proxy")}
    rows = []
    for k in ks:
        row = {"k": k}
        for crit in ("scan", "proxy"):
            drop = least_important(scores[crit], counts, k)
            row[crit] = pruned_error(teacher, drop, heldout, ref)
            row[f"{crit}_blocks"] = [f"{g}.{i}" for g, idx in drop.items() for i in idx]
        row["greedy"], row["greedy_blocks"] = greedy_error(teacher, calib, heldout, ref, k)
        errs = [pruned_error(teacher, d, heldout, ref) for d in random_drops(counts, k, draws, seed=k)]
        row["random_mean"], row["random_std"] = statistics.mean(errs), statistics.pstdev(errs)
        rows.append(row)
    levels = get_adapter(family).noise_level(heldout["timestep"])
    return {"family": family, "tiny": tiny, "blocks": counts, "spearman": result.spearman,
            "calibration_samples": sum(b["timestep"].numel() for b in calib),
            "heldout_samples": int(levels.numel()), "importance": result.to_dict(), "rows": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| teacher | blocks | k | scan | greedy scan | proxy (cos) | random (mean ± std) | removed by scan | by greedy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        blocks = " + ".join(f"{n} {g}" for g, n in r["blocks"].items())
        name = f"{'tiny random' if r['tiny'] else 'toy'} {r['family']}"
        for row in r["rows"]:
            lines.append(f"| {name} | {blocks} | {row['k']} | {row['scan']:.4f} | {row['greedy']:.4f} | "
                         f"{row['proxy']:.4f} | {row['random_mean']:.4f} ± {row['random_std']:.4f} | "
                         f"{', '.join(row['scan_blocks'])} | {', '.join(row['greedy_blocks'])} |")
    lines.append("")
    lines += [f"Spearman(proxy, scan), {r['family']}: {r['spearman']:.3f}" for r in results]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["pixart", "flux"], action="append")
    ap.add_argument("--tiny", action="store_true", help="tiny random models instead of the toy teachers")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--weights-dir", help="toy teacher weights folder (default: the shipped ones)")
    ap.add_argument("--json", help="also write the full results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = [bench(f, args.tiny, args.draws, weights_dir=args.weights_dir) for f in args.family or ["pixart", "flux"]]
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
