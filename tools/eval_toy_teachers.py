"""Score the shipped toy teachers and real held-out digits with the toy evaluator; write sample grids.

    python tools/eval_toy_teachers.py                       # 20 samples per prompt, 20 steps, guidance 3.0
    python tools/eval_toy_teachers.py --guidance 1.0 --json scores.json

Grids (row d = "a handwritten d", 8 seeds per row) go to docs/toy_<family>_samples.png, and the real
held-out digits to docs/toy_real_digits.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compress.toy.evaluate import N_PER_PROMPT, evaluate, evaluate_real
from compress.toy.grid import save_real_grid, save_sample_grid
from compress.toy.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from compress.toy.weights import FAMILIES, load_toy_teacher

COLUMNS = ["adherence", "fd", "fd_floor", "mmd", "mmd_floor", "classifier_heldout_accuracy"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-prompt", type=int, default=N_PER_PROMPT)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--docs", default="docs", help="where the grid PNGs go ('' to skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write all scores here")
    return parser.parse_args()


def print_row(name: str, scores: dict) -> None:
    cells = "".join(f"{scores[c]:>12.4f}" for c in COLUMNS)
    print(f"{name:<8}{cells}{scores.get('seconds', 0):>9.1f}s", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{args.n_per_prompt} samples per prompt × 10 prompts, {args.steps} steps, guidance {args.guidance}, "
          f"seed {args.seed}")
    print(f"{'':<8}" + "".join(f"{c[:11]:>12}" for c in COLUMNS) + f"{'time':>10}")
    rows = {"real": evaluate_real(seed=args.seed, n=10 * args.n_per_prompt)}
    print_row("real", rows["real"])
    for family in FAMILIES:
        start = time.time()
        teacher = load_toy_teacher(family)
        rows[family] = evaluate(teacher, family, seed=args.seed, n_per_prompt=args.n_per_prompt,
                                num_inference_steps=args.steps, guidance_scale=args.guidance)
        rows[family]["seconds"] = time.time() - start
        print_row(family, rows[family])
        if args.docs:
            path = save_sample_grid(teacher, family, Path(args.docs) / f"toy_{family}_samples.png", seed=args.seed,
                                    num_inference_steps=args.steps, guidance_scale=args.guidance)
            print(f"  wrote {path}")
    if args.docs:
        print(f"  wrote {save_real_grid(Path(args.docs) / 'toy_real_digits.png')}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
