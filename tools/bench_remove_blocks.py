"""Which block to remove, judged after recovery: on the shipped toy teachers, remove each block of a group
in turn, distill every such student the same way, and rank the candidates by their held-out
teacher-relative prediction error after distillation (the brute-force optimum a removal criterion aims
at). Then print the block each `remove_blocks` criterion picks (scan: the skip-one-block error; proxy:
1 − cos of the block's input and output; learned: TinyFusion-style, with and without the weight update,
with either gradient estimator for the logits) and where its pick ranks.

    python tools/bench_remove_blocks.py [--families pixart flux] [--remove 1] [--steps 150] [--seeds 0 1]
        [--oracle FILE] [--criteria NAME ...]   # the README table: --remove 1, then --families pixart --remove 2
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
from compress.recipe import parse_recipe
from compress.runner import Runner
from compress.toy.evaluate import prediction_error

GROUPS = {"pixart": ["blocks"], "flux": ["double", "single"]}
CRITERIA = {"scan": {}, "proxy": {"criterion": "proxy"},
            "learned (defaults)": {"criterion": "learned"},
            "learned, seed 1": {"criterion": "learned", "seed": 1},
            "learned, logits only": {"criterion": "learned", "estimator": "gumbel", "learn_lr": 0.0},
            "learned score": {"criterion": "learned", "estimator": "score"},
            "learned score, seed 1": {"criterion": "learned", "estimator": "score", "seed": 1},
            "learned score, logits only": {"criterion": "learned", "estimator": "score", "learn_lr": 0.0},
            "learned, rank 32": {"criterion": "learned", "learn_rank": 32},
            "learned, rank 32, seed 1": {"criterion": "learned", "learn_rank": 32, "seed": 1}}


def recipe(family: str, steps: int) -> str:
    return f"""version: 1
model: {family}
teacher: toy:{family}
calibration: {{num_prompts: 20, timesteps: 8, cfg_branches: true, batch_size: 64, seed: 0}}
passes:
  - distill: {{steps: {steps}, batch_size: 32, lr: 0.0005, lambda_task: 0.0, lambda_out: 1.0,
              lambda_feat: 0.1, checkpoint_every: 0, progress: false, plot: false}}
"""


def error(student, runner, family: str) -> float:
    with torch.no_grad():
        return prediction_error(student, runner.teacher, family, n=256, seed=0)


def oracle(runner, family: str, group: str, k: int, seeds: list[int]) -> dict[tuple, tuple[float, float]]:
    """{blocks removed: (error after removing them, mean error after distilling over seeds)}."""
    out = {}
    for i in itertools.combinations(range(runner.adapter.block_counts(runner.teacher)[group]), k):
        removed = copy.deepcopy(runner.teacher)
        runner.adapter.remove_blocks(removed, {group: list(i)})
        runner.ctx.block_map = {g: [j for j in range(n) if g != group or j not in i]
                                for g, n in runner.adapter.block_counts(runner.teacher).items()}
        after = []
        for seed in seeds:
            runner.ctx.seed = seed
            runner.ctx.report.pop("distill", None)
            after.append(error(runner.passes[0].run(copy.deepcopy(removed), runner.ctx), runner, family))
        out[i] = (error(removed, runner, family), sum(after) / len(after))
        print(f"  {family} {group} {name(i)}: removed {out[i][0]:.4f}, distilled {out[i][1]:.4f} "
              f"({' '.join(f'{a:.4f}' for a in after)})", flush=True)
    runner.ctx.seed, runner.ctx.block_map = 0, None
    return out


def name(blocks: tuple) -> str:
    return "+".join(map(str, blocks))


def pick(runner, group: str, k: int, options: dict) -> tuple[tuple, float]:
    """(the blocks the criterion removes, seconds)."""
    runner.ctx.report.pop("remove_blocks", None)
    runner.ctx.block_map = None  # the teacher's blocks: an earlier pick set the map of its removal
    runner.ctx.seed = options.get("seed", 0)
    step = RemoveBlocksPass(RemoveBlocksConfig(count={group: k}, **{o: v for o, v in options.items() if o != "seed"}))
    start = time.perf_counter()
    step.run(copy.deepcopy(runner.teacher), runner.ctx)
    runner.ctx.seed = 0
    return tuple(runner.ctx.report["remove_blocks"]["removed"][group]), time.perf_counter() - start


def cached_oracle(runner, family: str, group: str, k: int, seeds: list[int], cache: Path | None) -> dict:
    """`oracle`, kept in (and read back from) the JSON file `cache` by family, group, k, seeds and steps."""
    key = f"{family} {group} {k} {seeds} {runner.passes[0].config.steps}"
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if key in known:
        return {tuple(map(int, i.split("+"))): tuple(v) for i, v in known[key].items()}
    table = oracle(runner, family, group, k, seeds)
    if cache is not None:
        known[key] = {name(i): v for i, v in table.items()}
        cache.write_text(json.dumps(known, indent=1))
    return table


def bench(family: str, k: int, steps: int, seeds: list[int], work: Path, cache: Path | None,
          criteria: list[str]) -> list[str]:
    runner = Runner(parse_recipe(recipe(family, steps), path=f"<bench {family}>"), out=work / "out",
                    run_dir=work / "run")
    runner.prepare()
    lines = []
    for group in GROUPS[family]:
        if k >= runner.adapter.block_counts(runner.teacher)[group]:
            continue
        table = cached_oracle(runner, family, group, k, seeds, cache)
        order = sorted(table, key=lambda i: table[i][1])
        best = table[order[0]][1]
        lines.append(f"{family} {group}, {k} removed: after distillation ({steps} steps, seeds {seeds}) best "
                     f"{name(order[0])} {best:.4f}, worst {name(order[-1])} {table[order[-1]][1]:.4f}; "
                     f"the removal's own error ranks them "
                     f"{' '.join(name(i) for i in sorted(table, key=lambda i: table[i][0]))}, "
                     f"recovery {' '.join(name(i) for i in order)}")
        for label in criteria:
            options = CRITERIA[label]
            i, seconds = pick(runner, group, k, options)
            lines.append(f"  {label:<26} removes {name(i)}: rank {order.index(i) + 1} of {len(order)}, "
                         f"{table[i][1] / best:.3f}x the best after distillation ({seconds:.0f} s)")
        print("\n".join(lines[-1 - len(criteria):]), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["pixart", "flux"], choices=list(GROUPS))
    parser.add_argument("--remove", type=int, default=1, help="blocks removed from a group")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--oracle", type=Path, help="JSON file keeping the distilled candidates' errors")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA), metavar="NAME")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            lines += bench(family, args.remove, args.steps, args.seeds, Path(tmp) / family, args.oracle,
                           args.criteria)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
