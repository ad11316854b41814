"""The skip scan with block weights streamed against the resident scan, on a full-width Flux.

A random-init Flux at full width (hidden 3072; bench_compile's checkpoint: bf16 shards, one per
block) is scanned twice, each in a fresh process that reports its peak resident memory (ru_maxrss):
- resident: the whole model loaded (bf16), `importance.scan` replaying the clean forward's outputs;
- streamed: the model on meta but for its top level, `scan(..., loader=CheckpointBlocks)`, which
  runs the same block evaluations ordered by block and reads each block once per batch.
Both print the skip errors; the script prints peak RSS / checkpoint size, the time ratio, the block
reads of each, and the largest relative difference of the scores (expected 0).
Tokens are few (bench_compile's 16 image + 8 text per batch), so activations are small next to
weights: this measures what the weights cost, which is what streaming is for.

    python tools/bench_stream_scan.py                  # 2 double + 4 single blocks
    python tools/bench_stream_scan.py --blocks 4x8
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench_compile import calibration_batches
from fresh import measured  # tools/fresh.py


def scan_stage(ckpt: Path, streamed: bool) -> dict:
    from compress.arch import get_adapter
    from compress.passes.importance import scan
    from compress.stream import CheckpointBlocks, empty_transformer

    start = time.perf_counter()
    config = json.loads((ckpt / "config.json").read_text())
    model = empty_transformer(ckpt, torch.bfloat16).requires_grad_(False).eval()
    loader = CheckpointBlocks(model, ckpt)
    reads = []
    materialize = loader.materialize
    loader.materialize = lambda g, i, blk: (reads.append((g, i)), materialize(g, i, blk))[1]
    if streamed:
        loader.load_top()
    else:  # the whole model resident
        loader.load_top()
        for g, i, blk in get_adapter(model).iter_blocks(model):
            loader.materialize(g, i, blk)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    result = scan(model, get_adapter(model), calibration_batches(config), buckets=1, progress=False,
                  loader=loader if streamed else None)
    return dict(load_seconds=loaded, scan_seconds=time.perf_counter() - start, block_reads=len(reads),
                scores=[b.scan for b in result.blocks],
                peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="2x4", help="DOUBLExSINGLE block counts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage", choices=["make", "scan"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "scan":
        print(json.dumps(scan_stage(args.ckpt, args.streamed)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        measured(str(Path(__file__).parent / "bench_compile.py"), "--stage", "make", "--ckpt", str(ckpt),
                 "--blocks", args.blocks)
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        runs = {name: measured(__file__, "--stage", "scan", "--ckpt", str(ckpt), "--threads", str(args.threads),
                               *(["--streamed"] if name == "streamed" else []))
                for name in ("resident", "streamed")}
    a, b = runs["resident"], runs["streamed"]
    diff = max(abs(x - y) / abs(x) for x, y in zip(a["scores"], b["scores"]))
    print(f"full-width Flux {args.blocks} blocks, checkpoint {size / 2**30:.2f} GiB (bf16), "
          f"{len(a['scores'])} blocks, 2 batches")
    for name, r in runs.items():
        print(f"  {name:>8}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB = {r['peak_rss'] / size:.2f} x checkpoint, "
              f"load {r['load_seconds']:.1f} s, scan {r['scan_seconds']:.1f} s, {r['block_reads']} block reads")
    print(f"  streamed / resident: peak RSS {b['peak_rss'] / a['peak_rss']:.2f}x, scan time "
          f"{b['scan_seconds'] / a['scan_seconds']:.2f}x, load + scan "
          f"{(b['scan_seconds'] + b['load_seconds']) / (a['scan_seconds'] + a['load_seconds']):.2f}x; "
          f"largest relative score difference {diff:.2g}")


if __name__ == "__main__":
    main()
