"""Benchmark of the distill pass on the toy teachers: compress each to ≤ 50% of its transformer-block
parameters (whitened SVD, uniform allocation), then distill; print toy quality before/after.

    python tools/bench_distill.py                       # both families
    python tools/bench_distill.py --family pixart --steps 300 --json out.json

Targets (issue 5): after distillation, adherence ≥ 0.97 × teacher, Fréchet distance ≤ 1.2 × teacher,
teacher-relative prediction error ≤ 0.5 × its value before distillation. Distillation must fit in
10 minutes on 2 CPU cores (the wall time is printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# (compression passes, distill options) per family; the compression reaches ≤ 50% of block params
COMPRESS = {
    "pixart": """
  - svd: {targets: [attention, cross_attention, mlp], allocation: uniform, ratio: 0.5, multiple: 8,
          progress: false}
""",
    "flux": """
  - svd: {targets: [attention, mlp], allocation: uniform, ratio: 0.5, multiple: 8, progress: false}
  - svd: {targets: [modulation], ratio: 0.25, multiple: 4, progress: false}
""",
}


def recipe_text(family: str, steps: int, batch_size: int, lr: float, lambdas: tuple) -> str:
    task, out, feat = lambdas
    return f"""version: 1
model: {family}
teacher: toy:{family}
calibration: {{num_prompts: 10, timesteps: 4, cfg_branches: true, batch_size: 80, seed: 0, heldout: 64}}
passes:{COMPRESS[family]}  - distill: {{steps: {steps}, batch_size: {batch_size}, lr: {lr}, warmup_steps: 10,
              lambda_task: {task}, lambda_out: {out}, lambda_feat: {feat}, checkpoint_every: 0}}
"""


def block_params(model, adapter) -> int:
    return sum(p.numel() for _, _, block in adapter.iter_blocks(model) for p in block.parameters())


class Scorer:
    """Toy quality scores (compress.toy.evaluate) with the teacher's samples drawn once."""

    def __init__(self, teacher, family: str, n_per_prompt: int):
        from compress.toy.evaluate import prompts_and_labels, sample

        self.teacher, self.family, self.n = teacher, family, n_per_prompt
        self.labels = prompts_and_labels(n_per_prompt)[1]
        self.teacher_samples = sample(teacher, family, n_per_prompt=n_per_prompt)

    def __call__(self, model) -> dict:
        from compress.toy.evaluate import prediction_error, psnr, quality_scores, sample

        samples = self.teacher_samples if model is self.teacher else \
            sample(model, self.family, n_per_prompt=self.n)
        result = quality_scores(samples, self.labels)
        result["psnr_vs_teacher"] = psnr(samples, self.teacher_samples)
        result["pred_rel_error"] = prediction_error(model, self.teacher, self.family)
        return result


def compressed_student(runner, family: str, cache: Path | None):
    """Runs the compression passes, or loads their result from `cache` (keyed by teacher + recipe)."""
    import hashlib

    from compress.io_export import save_compressed
    from compress.io_output import load_transformer

    key = hashlib.sha256(f"{runner.ctx.fingerprint}|{COMPRESS[family]}".encode()).hexdigest()[:12]
    folder = cache / f"{family}-{key}" if cache else None
    if folder is not None and (folder / "config.json").exists():
        return load_transformer(folder), 0.0
    student, t0 = copy.deepcopy(runner.teacher), time.perf_counter()
    for p in runner.passes[:-1]:
        student = p.run(student, runner.ctx)
    seconds = time.perf_counter() - t0
    if folder is not None:
        save_compressed(student, folder, overwrite=True)
    return student, seconds


def bench(family: str, args) -> dict:
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    work = Path(tempfile.mkdtemp(prefix=f"bench-distill-{family}-"))
    recipe = parse_recipe(recipe_text(family, args.steps, args.batch_size, args.lr, args.lambdas),
                          path=f"<bench {family}>")
    runner = Runner(recipe, out=work / "out", run_dir=work / "run")
    runner.prepare()
    ctx, teacher, adapter = runner.ctx, runner.teacher, runner.adapter
    student, compress_s = compressed_student(runner, family, args.cache)
    ratio = block_params(student, adapter) / block_params(teacher, adapter)
    print(f"[{family}] compressed in {compress_s:.0f}s: block params {ratio:.1%} of the teacher", flush=True)
    scores = Scorer(teacher, family, args.n_per_prompt)
    rows = {"teacher": scores(teacher), "before": scores(student)}
    t0, c0 = time.perf_counter(), time.process_time()
    student = runner.passes[-1].run(student, ctx)
    distill_s, distill_cpu = time.perf_counter() - t0, time.process_time() - c0
    rows["after"] = scores(student)
    return {"family": family, "block_param_ratio": ratio, "distill_seconds": distill_s, "distill_cpu_seconds": distill_cpu,
            "compress_seconds": compress_s, "scores": rows, "report": ctx.report.get("distill")}


def table(result: dict) -> str:
    rows, lines = result["scores"], []
    t = rows["teacher"]
    lines.append(f"{result['family']}: block params {result['block_param_ratio']:.1%} of teacher, distill "
                 f"{result['distill_seconds']:.0f} s wall, {result['distill_cpu_seconds']:.0f} s CPU "
                 f"(≈ {result['distill_cpu_seconds'] / 2:.0f} s on 2 free cores)")
    lines.append(f"{'':10}{'adherence':>12}{'/teacher':>10}{'fd':>10}{'/teacher':>10}{'mmd':>10}"
                 f"{'pred_err':>10}{'psnr':>8}")
    for name in ("teacher", "before", "after"):
        r = rows[name]
        lines.append(f"{name:10}{r['adherence']:12.3f}{r['adherence'] / t['adherence']:10.3f}{r['fd']:10.2f}"
                     f"{r['fd'] / t['fd']:10.3f}{r['mmd']:10.4f}{r['pred_rel_error']:10.4f}"
                     f"{min(r['psnr_vs_teacher'], 99):8.1f}")
    b, a = rows["before"], rows["after"]
    checks = {"adherence ≥ 0.97× teacher": a["adherence"] >= 0.97 * t["adherence"],
              "fd ≤ 1.2× teacher": a["fd"] <= 1.2 * t["fd"],
              "pred_err ≤ 0.5× before": a["pred_rel_error"] <= 0.5 * b["pred_rel_error"],
              "block params ≤ 50%": result["block_param_ratio"] <= 0.5,
              "distill ≤ 600 s on 2 cores (CPU/2)": result["distill_cpu_seconds"] / 2 <= 600}
    lines.append(f"pred_err after/before = {a['pred_rel_error'] / b['pred_rel_error']:.3f}; "
                 + ", ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["pixart", "flux", "both"], default="both")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lambdas", type=float, nargs=3, default=(0.1, 1.0, 0.1), metavar=("TASK", "OUT", "FEAT"))
    p.add_argument("--n-per-prompt", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path)
    p.add_argument("--cache", type=Path, help="folder caching the compressed students between runs")
    p.add_argument("--weights-dir", type=Path, help="toy weights folder to use instead of the shipped one "
                   "(text_encoder + <family>.json/.safetensors), e.g. while teachers are retrained")
    args = p.parse_args(argv)
    if args.weights_dir:
        import compress.toy.weights as toy_weights

        toy_weights.WEIGHTS_DIR = args.weights_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for family in (["pixart", "flux"] if args.family == "both" else [args.family]):
        results.append(bench(family, args))
        print(table(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
