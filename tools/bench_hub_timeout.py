"""How long a calibration pipeline load waits on a Hub that answers its file list, then never its files.

It times the product's path (`calib_pipeline_load.load_pipeline_for`, diffusers'
requests inside io_hub_bounded.bounded_hub) -- "after" -- against plain diffusers
`DiffusionPipeline.from_pretrained` without bounded_hub -- "before", behind --uncapped (about 6.5 min at
2 s: hf_hub_download asks each held file's HEAD again 6 times with a 60 s wait of its own).

The Hub is tests/hub_server.holding_files on 127.0.0.1 (a thread): it answers model_info, the file
tree and model_index.json of acme/pix, a tiny PixArt-Sigma pipeline tests/pipelines.py writes (its
files are the siblings), and holds every other request without an answer. HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT are --timeout (default 2 s), HF_HOME a temp folder, each load its own empty
cache and its own server. Prints each load's wall seconds, the requests the server saw by kind
(answered, held), the error line the load ended with (the product's timeout line), the ratio, and
huggingface_hub's backoff pauses between retries (1, 2, 4, 8, 8 s; `utils._http.http_backoff`,
recorded, not shortened): how many, their sum over threads, and the most one thread slept, against
the wall time.

    python tools/bench_hub_timeout.py [--timeout 2] [--uncapped]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/pix"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=2, help="HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT, s")
    ap.add_argument("--uncapped", action="store_true", help="also time plain diffusers without bounded_hub (~7 min)")
    return ap.parse_args()


class Pauses:
    """huggingface_hub's backoff sleeps (utils._http's `time.sleep`), each (thread, seconds, start)."""

    def __init__(self):
        self.slept: list[tuple[int, float, float]] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append((threading.get_ident(), seconds, time.monotonic()))
        time.sleep(seconds)

    def words(self, wall: float) -> str:
        if not self.slept:
            return "no backoff pauses"
        per_thread = Counter()
        for thread, seconds, _ in self.slept:
            per_thread[thread] += seconds
        longest = max(per_thread.values())
        each = Counter(seconds for _, seconds, _ in self.slept)
        return (f"{len(self.slept)} backoff pauses ({', '.join(f'{n} x {s:g} s' for s, n in sorted(each.items()))}) "
                f"in {len(per_thread)} threads, {sum(per_thread.values()):g} s summed; the most one thread slept: "
                f"{longest:g} s = {100 * longest / wall:.0f}% of the {wall:.1f} s wall")


def kind(line: str) -> str:
    """A request line ('HEAD /acme/pix/resolve/main/vae/config.json HTTP/1.1') by what it asks."""
    method, path = line.split()[:2]
    if "/api/agent-harnesses" in path:
        return f"{method} registry"
    if path.startswith(f"/api/models/{REPO}"):
        return f"{method} file tree" if "/tree/" in path else f"{method} model_info"
    if path.endswith("/model_index.json"):
        return f"{method} model_index.json"
    return f"{method} other file"


def seen_words(seen: list, held: set[str]) -> list[str]:
    """The requests the server saw, by kind, each 'answered' or 'held'."""
    counts = Counter((kind(line), "held" if line in held else "answered") for line, *_ in seen)
    return [f"  {n:3d} {what} ({how})" for (what, how), n in sorted(counts.items())]


def timed_load(load, files: list[str], index: bytes, cache: Path, timeout: int) -> dict:
    """`load()` against a fresh holding_files server and the empty cache `cache`: its wall seconds,
    the error line it ended with, the requests seen, the backoff pauses."""
    import pytest
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    from tests.hub_server import holding_files

    pauses = Pauses()
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.sleep = pauses.sleep
    mp = pytest.MonkeyPatch()
    server = holding_files(mp, REPO, index, files)
    seen = next(server)
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):  # holding_files sets 1 s, as tests want
        mp.setattr(constants, var, timeout)
    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    mp.setattr(_http, "time", clock)
    start = time.monotonic()
    try:
        load()
        ended = "loaded (no error)"
    except Exception as e:  # noqa: BLE001 - what the load ended with is the measurement
        ended = f"{type(e).__name__}: {' '.join(str(e).split())}"
    wall = time.monotonic() - start
    held = {line for line, *_ in seen if kind(line).endswith(" other file")}  # holding_files answers the rest
    lines = seen_words(seen, held)
    mp.undo()
    next(server, None)  # closes the server and the connections it held
    return {"wall": wall, "ended": ended, "seen": lines, "pauses": pauses.words(wall), "requests": len(seen)}


def after(teacher):
    """The product's path: the calibration pipeline as a run loads it."""
    from compress.calib_pipeline_load import load_pipeline_for

    return lambda: load_pipeline_for(teacher, REPO)


def before(teacher):
    """Plain diffusers, no bounded_hub: huggingface_hub's own waits (60 s for a retried HEAD)."""
    from diffusers import DiffusionPipeline

    return lambda: DiffusionPipeline.from_pretrained(REPO, transformer=teacher)


def report(name: str, result: dict) -> None:
    print(f"\n{name}: {result['wall']:.1f} s wall, {result['requests']} requests seen by the server")
    print("\n".join(result["seen"]))
    print(f"  ended: {result['ended']}")
    print(f"  {result['pauses']}")


def main() -> None:
    args = parse()
    home = Path(tempfile.mkdtemp(prefix="bench_hub_timeout-"))
    os.environ.update(HF_HOME=str(home / "hf"), HF_HUB_ETAG_TIMEOUT=str(args.timeout),
                      HF_HUB_DOWNLOAD_TIMEOUT=str(args.timeout), HF_HUB_DISABLE_PROGRESS_BARS="1")
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.pop("HF_HUB_CACHE", None)
    sys.path.insert(0, str(ROOT))
    from huggingface_hub.utils import logging as hub_logging

    from tests.conftest import tiny_pixart
    from tests.pipelines import pixart_pipeline

    hub_logging.set_verbosity_error()  # 'Retrying in 1s' per pause: counted below instead
    folder = pixart_pipeline(home / "pipe")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    index = (folder / "model_index.json").read_bytes()
    print(f"{REPO}: {len(files)} files ({', '.join(files)}); HF_HUB_ETAG_TIMEOUT = HF_HUB_DOWNLOAD_TIMEOUT = "
          f"{args.timeout} s; HF_HOME {home / 'hf'}")
    results = {"after (bounded_hub, load_pipeline_for)": timed_load(after(tiny_pixart()), files, index,
                                                                    home / "hub-after", args.timeout)}
    if args.uncapped:
        results["before (plain DiffusionPipeline.from_pretrained)"] = timed_load(
            before(tiny_pixart()), files, index, home / "hub-before", args.timeout)
    for name, result in results.items():
        report(name, result)
    if args.uncapped:
        walls = [r["wall"] for r in results.values()]
        print(f"\nbefore / after: {walls[1]:.1f} s / {walls[0]:.1f} s = {walls[1] / walls[0]:.1f}x")


if __name__ == "__main__":
    main()
