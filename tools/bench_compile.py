"""Memory does not grow with depth: compress full-width Flux-shaped checkpoints block by block.

Two random-init Flux models at full width (hidden 3072 = 24 heads x 128), saved as bf16 safetensors
(one shard per block, with the `.index.json` that `save_pretrained` writes), are compressed by the
svd pass with block weights loaded just in time from the shards by `compress.stream` (model built on
the meta device; a block is materialized with `safe_open`, calibrated, factorized, written out and
sent back to meta). Each stage runs in a fresh process; the compress
process reports its peak resident memory (ru_maxrss). `--via run` measures the whole
`dit-compress run` path instead (recipe `stream: true`, synthetic calibration inputs): teacher and
student streamed in bfloat16 (`--dtype float32`: the recipe's default compute dtype), held-out
errors after the pass, stage checkpoint and sharded export.

    python tools/bench_compile.py                      # 2 double + 4 single, then 4 double + 8 single
    python tools/bench_compile.py --configs 2x4 --targets attention
    python tools/bench_compile.py --via run
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from fresh import measured  # tools/fresh.py

FULL_WIDTH = dict(patch_size=1, in_channels=64, attention_head_dim=128, num_attention_heads=24,
                  joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                  axes_dims_rope=(16, 56, 56))
# Default targets: the top-level input embedders (64 -> 3072 latent, 256 -> 3072 timestep/guidance,
# 768 -> 3072 pooled text). Every block is still materialized from its shard, calibrated on the
# captured inputs, written out and freed, which is what the memory claim is about; factorizing a
# 3072-wide block linear costs one float64 eigh of 3072 x 3072 (3.7 minutes measured on this shared
# 2-core machine), so block targets are opt-in: `--targets attention mlp`.
DEFAULT_TARGETS = [r"x_embedder", r"re:time_text_embed\..*\.linear_1$"]


def _shards(model):
    """(shard name, module prefix, module): the top level, then one shard per block."""
    from compress.arch import get_adapter

    adapter = get_adapter(model)
    yield "top", "", model
    for group, index, block in adapter.iter_blocks(model):
        yield f"{group}-{index}", adapter.block_prefix(group, index), block


def _top_level(model, state: dict) -> dict:
    blocks = ("transformer_blocks.", "single_transformer_blocks.")
    return {k: v for k, v in state.items() if not k.startswith(blocks)}


# ----------------------------------------------------------------------------- stage: make


def make(ckpt: Path, config: dict) -> None:
    """Random bf16 weights, written one shard at a time (never the whole model in memory)."""
    from safetensors.torch import save_file

    from compress.stream import INDEX, empty_transformer

    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(dict(config, _class_name="FluxTransformer2DModel")))
    model = empty_transformer(ckpt, torch.bfloat16)  # shapes only
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for shard, prefix, module in _shards(model):
        names = [n for n, _ in module.named_parameters()]
        if shard == "top":
            names = list(_top_level(model, dict.fromkeys(names)))
        tensors = {}
        for name in names:
            shape = module.get_parameter(name).shape
            t = torch.randn(shape, generator=gen) * 0.02 if len(shape) > 1 else (
                torch.ones(shape) if "norm" in name else torch.zeros(shape))
            tensors[prefix + name] = t.to(torch.bfloat16)
        save_file(tensors, str(ckpt / f"{shard}.safetensors"))
        weight_map.update(dict.fromkeys(tensors, f"{shard}.safetensors"))
    (ckpt / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))  # as save_pretrained


# ----------------------------------------------------------------------------- stage: compress


def calibration_batches(config: dict, n_img: int = 16, n_txt: int = 8) -> list[dict]:
    """Two tiny batches (one per CFG branch stand-in): 16 image tokens, 8 text tokens."""
    gen = torch.Generator().manual_seed(0)
    side = int(n_img ** 0.5)
    img_ids = torch.zeros(n_img, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(n_img) // side, torch.arange(n_img) % side
    batches = []
    for t in (0.3, 0.8):
        batches.append(dict(
            hidden_states=torch.randn(1, n_img, config["in_channels"], generator=gen).bfloat16(),
            encoder_hidden_states=torch.randn(1, n_txt, config["joint_attention_dim"], generator=gen).bfloat16(),
            pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=gen).bfloat16(),
            timestep=torch.tensor([t]).bfloat16(), img_ids=img_ids, txt_ids=torch.zeros(n_txt, 3),
            guidance=torch.tensor([3.5]).bfloat16()))
    return batches


def compress(ckpt: Path, out: Path, targets: list[str]) -> dict:
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass

    times, start = {}, time.perf_counter()
    from compress.stream import CheckpointBlocks, empty_transformer

    config = json.loads((ckpt / "config.json").read_text())
    model = empty_transformer(ckpt, torch.bfloat16)
    loader = CheckpointBlocks(model, ckpt, spill=out)  # compressed blocks land in out/
    loader.load_top()
    times["setup (meta model, top-level weights)"] = time.perf_counter() - start
    adapter = get_adapter(model)
    batches = calibration_batches(config)
    ctx = RunContext(adapter=adapter, family="flux", teacher=model, run_dir=out,
                     calibration_inputs=lambda: batches, fingerprint="")
    start = time.perf_counter()
    config = SVDConfig(targets=targets, ratio=0.5, multiple=16, fisher="none", progress=False)
    SVDPass(config, loader).run(model, ctx)
    times["svd pass (calibrate + factorize + write blocks)"] = time.perf_counter() - start
    start = time.perf_counter()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _top_level(model, model.state_dict()).items()},
              str(out / "top.safetensors"))
    times["export top level"] = time.perf_counter() - start
    report = ctx.report["svd"]
    return dict(times=times, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                layers=len(report["layers"]), max_loss_ratio=report["max_loss_ratio"],
                params_before=report["params_before"], params_after=report["params_after"])


RECIPE = """\
model: flux
teacher: {ckpt}
stream: true
compute_dtype: {dtype}
calibration: {{source: synthetic, num_prompts: 1, timesteps: 2, batch_size: 1, heldout: 1}}
passes:
  - svd: {{targets: {targets}, ratio: 0.5, multiple: 16, fisher: none, progress: false}}
export: {{dtype: bfloat16}}
"""


def run(ckpt: Path, out: Path, targets: list[str], dtype: str = "bfloat16") -> dict:
    """The same compression through the runner (`dit-compress run` with stream: true), teacher
    and student in `dtype` (bfloat16: the checkpoint's, as the svd-pass stage computes)."""
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    start = time.perf_counter()
    recipe = parse_recipe(RECIPE.format(ckpt=ckpt, targets=json.dumps(targets), dtype=dtype), "bench.yaml")
    runner = Runner(recipe, out, out.parent / f"{out.name}-run")
    runner.run()
    report = json.loads((out / "report.json").read_text())
    seconds = time.perf_counter() - start
    return dict(times={"dit-compress run (load, calibrate, factorize, held-out error, export)": seconds},
                peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                layers=len(report["svd"]["layers"]), max_loss_ratio=report["svd"]["max_loss_ratio"],
                params_before=report["teacher_params"], params_after=report["student_params"])


# ----------------------------------------------------------------------------- driver


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _child(*args: str) -> dict:
    return measured(__file__, *args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["2x4", "4x8"], help="DOUBLExSINGLE block counts")
    p.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--via", choices=["pass", "run"], default="pass",
                   help="pass: the svd pass with compress.stream; run: the whole dit-compress run")
    p.add_argument("--dtype", default="bfloat16", help="--via run: the recipe's compute_dtype")
    p.add_argument("--stage", choices=["make", "compress", "run"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--blocks", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "make":
        double, single = map(int, args.blocks.split("x"))
        start = time.perf_counter()
        make(args.ckpt, dict(FULL_WIDTH, num_layers=double, num_single_layers=single))
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    if args.stage in ("compress", "run"):
        if args.stage == "compress":
            print(json.dumps(compress(args.ckpt, args.out, args.targets)))
        else:
            print(json.dumps(run(args.ckpt, args.out, args.targets, args.dtype)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = {}
        for blocks in args.configs:
            ckpt, out = Path(tmp) / f"ckpt-{blocks}", Path(tmp) / f"out-{blocks}"
            made = _child("--stage", "make", "--ckpt", str(ckpt), "--blocks", blocks)
            stage = "compress" if args.via == "pass" else "run"
            res = _child("--stage", stage, "--ckpt", str(ckpt), "--out", str(out), "--dtype", args.dtype,
                         "--threads", str(args.threads), "--targets", *args.targets)
            res.update(make_s=made["seconds"], ckpt=_size(ckpt), out=_size(out))
            rows[blocks] = res
            print(f"{blocks}: checkpoint {res['ckpt'] / 2**30:.2f} GiB -> {res['out'] / 2**30:.2f} GiB, "
                  f"peak RSS {res['peak_rss'] / 2**30:.2f} GiB = {res['peak_rss'] / res['ckpt']:.2f}x "
                  f"checkpoint; {res['layers']} layers, loss/opt ≤ {res['max_loss_ratio']:.6f}", flush=True)
            print(f"    make checkpoint {made['seconds']:.1f}s; " + "; ".join(
                f"{k} {v:.1f}s" for k, v in res["times"].items()), flush=True)
            for p_ in ckpt.glob("*.safetensors"):  # keep disk use at one checkpoint
                p_.unlink()
        if len(rows) == 2:
            (a, ra), (b, rb) = rows.items()
            print(f"peak RSS {b} / {a} = {rb['peak_rss'] / ra['peak_rss']:.3f} (target ≤ 1.15); "
                  f"{b}: peak / checkpoint = {rb['peak_rss'] / rb['ckpt']:.3f} (target < 0.5)")


if __name__ == "__main__":
    main()
