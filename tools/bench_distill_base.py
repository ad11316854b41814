"""Chained compression of the toy PixArt: distilling the second stage toward its own teacher (the first
stage's output) or toward the chain's base (`distill.kd_teacher: base`).

Stage 1 compresses toy:pixart (block 4 removed, attention / cross-attention / MLP factorized at ratio 0.6,
a short distill on teacher samples). Stage 2 takes that output as its teacher, removes one more block
(its block 1, or --block) and distills N steps on teacher samples, KD only, (a) toward the stage-1 output, the default,
and (b) toward toy:pixart, the chain's base. Each stage-2 student's teacher-relative prediction error on
the toy's 256 held-out (latent, timestep, prompt) triples (`compress.toy.evaluate.prediction_error`, as
`dit-compress eval` measures it) is printed against the base and against the stage-1 output, and the
ratio (b) / (a) against the base.

    nice -n 19 python tools/bench_distill_base.py [--steps 150] [--stage1-steps 100] [--block 1]   (about 5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "compress.cli"]
CALIBRATION = ("calibration: {num_prompts: 20, timesteps: 8, cfg_branches: true, batch_size: 64, seed: 0}\n"
               "export: {dtype: float32}\n")
DISTILL = "{{data: teacher_samples, num_samples: 256, lambda_task: 0.0, steps: {steps}, batch_size: 32, lr: 0.0005{more}}}"


def stage1(steps: int) -> str:
    return ("version: 1\nmodel: pixart\nteacher: toy:pixart\n" + CALIBRATION + "passes:\n"
            "  - remove_blocks: {blocks: {blocks: [4]}}\n"
            "  - svd: {targets: [attention, cross_attention, mlp], allocation: global, ratio: 0.6, multiple: 8}\n"
            f"  - distill: {DISTILL.format(steps=steps, more='')}\n")


def stage2(teacher: Path, steps: int, kd_teacher: str, block: int) -> str:
    return (f"version: 1\nmodel: pixart\nteacher: {teacher}\n" + CALIBRATION + "passes:\n"
            f"  - remove_blocks: {{blocks: {{blocks: [{block}]}}}}\n"
            f"  - distill: {DISTILL.format(steps=steps, more=f', kd_teacher: {kd_teacher}')}\n")


def run(text: str, name: str, tmp: Path) -> tuple[Path, float]:
    recipe, out = tmp / f"{name}.yaml", tmp / name
    recipe.write_text(text)
    t0 = time.perf_counter()
    done = subprocess.run(CLI + ["run", str(recipe), "--out", str(out), "--overwrite"], cwd=tmp,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out, time.perf_counter() - t0


def errors(out: Path, teachers: dict) -> dict[str, float]:
    from compress.io_output import load_transformer
    from compress.toy.evaluate import prediction_error

    student = load_transformer(out).eval()
    return {name: prediction_error(student, t, "pixart", n=256, seed=0) for name, t in teachers.items()}


def main() -> None:
    import argparse

    import torch

    from compress.io_output import load_transformer
    from compress.toy import load_toy_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150, help="stage 2's distill steps")
    ap.add_argument("--stage1-steps", type=int, default=100)
    ap.add_argument("--block", type=int, default=1, help="the block of stage 1's output that stage 2 removes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        first, seconds = run(stage1(args.stage1_steps), "stage1", tmp)
        teachers = {"base": load_toy_teacher("pixart").eval(), "stage1": load_transformer(first).eval()}
        print(f"stage 1 (toy:pixart, block 4 removed, svd 0.6, {args.stage1_steps} distill steps): "
              f"{seconds:.0f} s; its error against the base {errors(first, teachers)['base']:.4f}")
        print(f"stage 2: stage 1's block {args.block} removed, {args.steps} distill steps (teacher samples of stage 1, KD only)")
        print(f"{'distilled toward':<34} {'error vs base':>14} {'error vs stage 1':>17} {'time':>7}")
        found = {}
        for kd, label in (("teacher", "(a) the stage-1 output (default)"), ("base", "(b) toy:pixart (kd_teacher: base)")):
            out, seconds = run(stage2(first, args.steps, kd, args.block), f"stage2-{kd}", tmp)
            found[kd] = errors(out, teachers)
            print(f"{label:<34} {found[kd]['base']:>14.4f} {found[kd]['stage1']:>17.4f} {seconds:>6.0f}s")
        print(f"ratio (b) / (a) of the error against the base: {found['base']['base'] / found['teacher']['base']:.3f}")


if __name__ == "__main__":
    main()
