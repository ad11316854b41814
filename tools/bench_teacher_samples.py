"""Distillation data for the toy recipes: the toy digits vs teacher samples, unguided and guided.

Runs `recipes/toy-pixart.yaml` (and `toy-flux.yaml`) with its distill pass on the toy digits and on
`data: teacher_samples` (1,024 samples, 20 sampler steps) at `guidance_scale` 1 (no classifier-free
guidance in the sampler) and 3 (the guidance the toy is evaluated at), each with the task loss on
(`lambda_task: 1`) and off (knowledge distillation only, what the recipes do), and scores every
student like `dit-compress eval` (200 samples at guidance 3): Fréchet distance and MMD² to real
digits, PSNR of its samples against the teacher's from the same noise, and the teacher-relative
prediction error.

    python tools/bench_teacher_samples.py [--families pixart flux]   (about 6 + 11 minutes)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "compress.cli"]
LOSSES = {1.0: "task + KD", 0.0: "KD only"}  # lambda_task
SETTINGS = [*[(f"toy digits, {LOSSES[lt]}", {"data": "toy", "lambda_task": lt}) for lt in LOSSES],
            *[(f"teacher samples, guidance {g}, {LOSSES[lt]}",
               {"data": "teacher_samples", "num_samples": 1024, "guidance_scale": g, "lambda_task": lt})
              for lt in LOSSES for g in (1.0, 3.0)]]


def run(family: str, label: str, distill: dict, tmp: Path) -> dict:
    out = tmp / f"{family}-{label.replace(' ', '_').replace(',', '')}"
    sets = [a for k, v in distill.items() for a in ("--set", f"passes.4.distill.{k}={v}")]
    subprocess.run(CLI + ["run", str(ROOT / "recipes" / f"toy-{family}.yaml"), "--out", str(out), "--overwrite",
                          *sets], check=True, cwd=ROOT, capture_output=True)
    scores = subprocess.run(CLI + ["eval", str(out), "--json"], check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(scores.stdout)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["pixart", "flux"])
    families = ap.parse_args().families
    print(f"{'family':<7} {'distill data':<42} {'FD':>7} {'MMD²':>8} {'PSNR vs teacher':>16} {'pred. error':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for family, (label, distill) in ((f, s) for f in families for s in SETTINGS):
            s = run(family, label, distill, Path(tmp))
            print(f"{family:<7} {label:<42} {s['fd']:>7.1f} {s['mmd']:>8.4f} {s['psnr_vs_teacher']:>13.1f} dB "
                  f"{s['pred_rel_error']:>12.4f}")


if __name__ == "__main__":
    main()
