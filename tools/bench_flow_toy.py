"""Issue 8's numbers on the rectified-flow toy PixArt that shipped before the ε-trained one
(commit 7590034, 800 steps; the kind of teacher the issue's prototype numbers came from): whitened vs
plain SVD and global vs uniform at 50% of attention + MLP, the rank-8 adaLN-single rise, and the
PCA floor of its adaLN-single outputs. Inputs are noised as it was trained: x_σ = (1−σ)·x0 + σ·ε,
timestep 1000·σ (σ uniform held out, logit-normal for calibration). The weights come from git
history (this repository's own commit); nothing is trained.

    python tools/bench_flow_toy.py
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # --help says what it measures; it takes no options: both answered before torch loads
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import bench_svd  # noqa: E402
from compress.toy import pipeline as toy_pipeline  # noqa: E402
from compress.toy import pixart as toy_pixart  # noqa: E402
from compress.toy.weights import load_toy_teacher  # noqa: E402

COMMIT = "7590034"  # "toy: ship trained PixArt teacher (rectified flow, DPM-Solver flow mode, 800 steps)"
RUNS = ["svd uniform", "whitened uniform", "whitened global (sensitivity)", "modulation r8 (grid, centered)"]


def flow_noised(latents, generator, training=True):
    """The ε toy's `noised` signature, rectified flow inside: (noisy, timestep 1000·σ, target)."""
    noisy, sigma, target = toy_pipeline.flow_noised(latents, generator, training)
    return noisy, toy_pixart.NUM_TRAIN_TIMESTEPS * sigma, target


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pixart.safetensors", "pixart.json"):
            got = subprocess.run(["git", "-C", str(ROOT), "show", f"{COMMIT}:compress/toy/weights/{name}"],
                                 capture_output=True)
            if got.returncode:
                raise SystemExit(f"needs this repository's history (commit {COMMIT}); a shallow clone "
                                 f"lacks it: {got.stderr.decode().strip()}")
            (Path(tmp) / name).write_bytes(got.stdout)
        load = functools.partial(load_toy_teacher, weights_dir=tmp)
        bench_svd.load_toy_teacher = lambda family, **kw: load(family, **kw)  # error(), the floor
        bench_svd.compress.__defaults__ = (bench_svd.load_toy_teacher, "-flow")  # make=, tag=
        toy_pixart.noised = flow_noised  # model_inputs: calibration and held-out inputs
        rows = bench_svd.bench("pixart", Path(tmp), {k: bench_svd.RUNS[k] for k in RUNS})
        r = {k: rows[k]["error"] for k in rows}
        print(f"flow toy PixArt: whitened/svd at 50% = {r['whitened uniform'] / r['svd uniform']:.3f}; "
              f"global/uniform at 50% = {r['whitened global (sensitivity)'] / r['whitened uniform']:.3f}; "
              f"modulation rank 8: {rows['modulation r8 (grid, centered)']['reduction']:.1f}x fewer params, "
              f"rise {r['modulation r8 (grid, centered)']:.2e}")
        print("flow toy " + bench_svd.modulation_floor())


if __name__ == "__main__":
    main()
