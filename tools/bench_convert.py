"""`dit-compress convert` holds one tensor at a time: peak memory of converting a full-width BFL Flux
file to a diffusers folder, tensor by tensor (`compress.io_convert.convert_file`) vs loading the whole
file and calling `save_pretrained` (what it did before). Memory is the peak of anonymous memory above
the process's baseline after imports (what cannot be dropped; see PeakAnon).

A random-init Flux at full width (hidden 3072, Flux.1's block shapes; `--blocks` double x single)
is written as a bf16 BFL single file; each way of converting runs in a fresh process that reports its
peak resident memory (ru_maxrss). Prints peak / file size for both and their ratio of times.

    python tools/bench_convert.py [--blocks 2x4] [--shard-gib 0.5]
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.bfl: the inverse of the BFL conversion
from bench_compile import FULL_WIDTH  # noqa: E402
from fresh import measured  # noqa: E402


def make(path: Path, cfg: Path, double: int, single: int) -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from tests.bfl import flux_to_bfl

    torch.manual_seed(0)
    with torch.device("cpu"):
        model = FluxTransformer2DModel(**dict(FULL_WIDTH, num_layers=double, num_single_layers=single))
    model = model.to(torch.bfloat16)
    model.save_config(cfg)
    save_file(flux_to_bfl(model, "model.diffusion_model."), str(path))


class PeakAnon:
    """Peak anonymous resident memory (RssAnon of /proc/self/status), sampled every 20 ms: what the
    kernel cannot drop under pressure. ru_maxrss also counts the pages of a memory-mapped file read
    through (safetensors maps it), which are page cache the kernel reclaims."""

    def __init__(self):
        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _anon())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _anon())


def _anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def convert(way: str, path: Path, cfg: Path, out: Path, shard_bytes: int) -> dict:
    for module in ("compress.io_convert", "compress.io_single"):  # imported before the baseline
        importlib.import_module(module)

    base = _anon()
    start = time.perf_counter()
    with PeakAnon() as peak:
        if way == "whole":
            from compress.io_single import load_single_file

            load_single_file(path, dtype=None, config=str(cfg)).save_pretrained(out)
        else:
            from compress.io_convert import convert_file

            convert_file(path, out, config=str(cfg), shard_bytes=shard_bytes)
    return {"seconds": time.perf_counter() - start, "peak_anon": peak.peak - base,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="2x4", help="DOUBLExSINGLE block counts")
    p.add_argument("--shard-gib", type=float, default=2.0, help="convert_file's shard size")
    p.add_argument("--stage", choices=["make", "whole", "tensors"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        path, cfg = args.work / "flux.safetensors", args.work / "cfg"
        if args.stage == "make":
            make(path, cfg, *map(int, args.blocks.split("x")))
            print(json.dumps({"bytes": path.stat().st_size}))
        else:
            print(json.dumps(convert(args.stage, path, cfg, args.work / args.stage, int(args.shard_gib * 2**30))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        common = ("--work", tmp, "--blocks", args.blocks, "--shard-gib", str(args.shard_gib))
        size = measured(__file__, "--stage", "make", *common)["bytes"]
        whole, tensors = (measured(__file__, "--stage", way, *common) for way in ("whole", "tensors"))
    print(f"{args.blocks} full-width BFL file {size / 2**30:.2f} GiB; shards of {args.shard_gib} GiB")
    for name, r in (("whole file + save_pretrained", whole), ("tensor by tensor (convert)", tensors)):
        print(f"  {name:30s} peak anonymous memory / file = {r['peak_anon'] / size:.2f} "
              f"(peak RSS, page cache of the mapped file included: {r['peak_rss'] / size:.2f})")
    print(f"  tensor by tensor / whole: peak anonymous memory {tensors['peak_anon'] / whole['peak_anon']:.2f}, "
          f"time {tensors['seconds'] / whole['seconds']:.2f}x")


if __name__ == "__main__":
    main()
