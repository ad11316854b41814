"""What streaming costs on the embedded teacher: `recipes/toy-pixart-stream.yaml` run resident
(`stream: false`) and streamed (`stream: true`), each in a fresh process with a fresh run folder.
Prints wall time, peak resident memory and the teacher-relative error after each pass, and the
streamed / resident ratios; the two runs must write the same weights.

    python tools/bench_stream.py
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from fresh import measured_in_temp  # tools/fresh.py

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "toy-pixart-stream.yaml"


def one(stream: bool, work: Path) -> dict:
    import torch

    from compress.io_output import load_transformer
    from compress.recipe import load_recipe
    from compress.runner import Runner

    start = time.perf_counter()
    out = Runner(load_recipe(RECIPE, [f"stream={str(stream).lower()}"]), work / "out", work / "run").run()
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    digest = sum(float(v.double().sum()) for v in load_transformer(out).state_dict().values()
                 if torch.is_floating_point(v))
    return dict(seconds=seconds, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                errors=[s["relative_error"] for s in report["stages"]], digest=digest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stream", choices=["true", "false"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stream:
        print(json.dumps(one(args.stream == "true", args.work)))
        return
    rows = {}
    for stream in ("false", "true"):
        rows[stream] = r = measured_in_temp(__file__, "--stream", stream)
        name = "streamed" if stream == "true" else "resident"
        print(f"{name}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB, errors after each "
              f"pass {', '.join(f'{e:.4g}' for e in r['errors'])}", flush=True)
    a, b = rows["false"], rows["true"]
    print(f"streamed / resident: time {b['seconds'] / a['seconds']:.2f}, peak RSS "
          f"{b['peak_rss'] / a['peak_rss']:.2f}; same errors: {a['errors'] == b['errors']}, "
          f"same weights: {a['digest'] == b['digest']}")


if __name__ == "__main__":
    main()
