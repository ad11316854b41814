"""A mid-size random Flux teacher and a streamed recipe for it, to measure plan's memory estimate
between the toys (about 1 GiB) and Flux.1-dev (no machine here holds it): a diffusers
FluxTransformer2DModel at Flux.1-dev's head width (128) and text widths (T5 4096, CLIP pooled 768),
with fewer heads and blocks, randomly initialised, saved as a transformer folder with its
recipe beside it (synthetic calibration: there is no pipeline to sample).

    python tools/make_mid_flux.py /tmp/flux-mid                     # hidden 1024, 2 double + 4 single blocks
    python tools/bench_plan_memory.py /tmp/flux-mid/recipe.yaml     # planned vs measured peak
    python tools/make_mid_flux.py /tmp/flux-mid --heads 12 --double 3 --single 6 --no-stream

The default model has about 149M parameters (0.54 GiB in float32); the recipe factorizes its
modulation linears (10%) and attention + MLP linears (60%) in two svd passes with block Fishers, as
recipes/flux-dev-stream.yaml does for Flux.1-dev.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

HEAD_DIM = 128  # Flux.1-dev's; its RoPE axes (16, 56, 56) add up to it


def flux_config(heads: int, double: int, single: int) -> dict:
    """A FluxTransformer2DModel config as Flux.1-dev's but for `heads` heads and the block counts."""
    return dict(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                attention_head_dim=HEAD_DIM, num_attention_heads=heads, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def recipe(teacher: Path, stream: bool, timesteps: int) -> dict:
    """The streamed Flux.1-dev recipe's passes on `teacher` (an absolute path: a relative teacher is
    taken from the current folder) with synthetic inputs."""
    return {"version": 1, "model": "flux", "teacher": str(teacher), "stream": stream,
            "calibration": {"source": "synthetic", "num_prompts": 8, "timesteps": timesteps,
                            "batch_size": 2, "cfg_branches": False},
            "passes": [{"svd": {"targets": ["modulation"], "fisher": "block", "ratio": 0.1, "multiple": 16}},
                       {"svd": {"targets": ["attention", "mlp"], "fisher": "block", "ratio": 0.6, "multiple": 64}}],
            "export": {"dtype": "float32"}}


def main(argv: list[str] | None = None) -> int:
    from diffusers import FluxTransformer2DModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="written: FOLDER/transformer and FOLDER/recipe.yaml")
    parser.add_argument("--heads", type=int, default=8, help="attention heads of 128 (hidden = 128 x heads)")
    parser.add_argument("--double", type=int, default=2, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=4, help="single-stream blocks")
    parser.add_argument("--timesteps", type=int, default=2, help="calibration.timesteps of the recipe")
    parser.add_argument("--no-stream", action="store_true", help="recipe without stream: true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = FluxTransformer2DModel(**flux_config(args.heads, args.double, args.single))
    args.folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.folder / "transformer")
    (args.folder / "recipe.yaml").write_text(yaml.safe_dump(recipe((args.folder / "transformer").resolve(), not args.no_stream, args.timesteps), sort_keys=False))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.folder}/transformer: {params / 1e6:.1f}M parameters, hidden {HEAD_DIM * args.heads}; "
          f"recipe {args.folder}/recipe.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
