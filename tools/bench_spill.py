"""What `calibration.spill_activations` saves: peak resident memory of the svd pass with each
block's calibration activations in memory vs on disk (one file per batch).

A Flux-shaped model (hidden 512, 2 double + 4 single blocks, random init) calibrated on 64 inputs of
1024 image + 64 text tokens (16 batches of 4): activations of about 2.2 MB per input per stream, the
regime of full-size models at high resolution. `fisher: block` (so the asymmetric fit runs a second,
reference stream). Each mode runs in a fresh process and reports ru_maxrss and wall time.

    python tools/bench_spill.py
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from fresh import measured_in_temp  # tools/fresh.py

CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=64,
              num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=128,
              guidance_embeds=False, axes_dims_rope=(8, 28, 28))


def batches(n_batches: int = 16, batch: int = 4, img: int = 1024, txt: int = 64) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    side = int(img ** 0.5)
    img_ids = torch.zeros(img, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(img) // side, torch.arange(img) % side
    return [dict(hidden_states=torch.randn(batch, img, CONFIG["in_channels"], generator=gen),
                 encoder_hidden_states=torch.randn(batch, txt, CONFIG["joint_attention_dim"], generator=gen),
                 pooled_projections=torch.randn(batch, CONFIG["pooled_projection_dim"], generator=gen),
                 timestep=torch.rand(batch, generator=gen), img_ids=img_ids, txt_ids=torch.zeros(txt, 3))
            for _ in range(n_batches)]


def measure(spill: bool, work: Path) -> dict:
    from diffusers import FluxTransformer2DModel

    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from compress.recipe import CalibrationConfig

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**CONFIG).eval()
    data = batches()
    ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=model, run_dir=work,
                     calibration_inputs=lambda: data, fingerprint="",
                     calibration=CalibrationConfig(spill_activations=spill))
    start = time.perf_counter()
    SVDPass(SVDConfig(targets=["attention", "mlp"], fisher="block", multiple=16, progress=False)).run(model, ctx)
    seconds = time.perf_counter() - start
    digest = sum(float(p.double().sum()) for p in model.parameters())
    return dict(peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, seconds=seconds,
                digest=digest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["memory", "disk"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(measure(args.mode == "disk", args.work)))
        return
    rows = {}
    for mode in ("memory", "disk"):
        rows[mode] = r = measured_in_temp(__file__, "--mode", mode, "--threads", str(args.threads))
        print(f"activations in {mode}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB, svd pass {r['seconds']:.1f} s",
              flush=True)
    m, d = rows["memory"], rows["disk"]
    print(f"disk / memory: peak RSS {d['peak_rss'] / m['peak_rss']:.3f}, time {d['seconds'] / m['seconds']:.2f}; "
          f"same weights: {d['digest'] == m['digest']}")


if __name__ == "__main__":
    main()
