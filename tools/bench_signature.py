"""What the teacher-file signature eval and bench compare costs (`io_signature.file_signature`, and
`tensors_digest`, the tensors' signature whatever files hold them, read after it), and
the weights checksum a run takes once for --resume and its caches (`runner_teacher_id.weights_checksum`,
every byte: resident, of the tensors in memory; streamed, of the files); and --resume's check of a
teacher whose files are unchanged (`runner_teacher_id.same_files`), which skips the digest there, against
the whole signature it read before (the files' and the digest).

Writes a safetensors file of --gib GiB in --tensors float32 tensors (780: about Flux.1-dev's
transformer count) to a temp folder, then times its signature with the file in the page cache
(warm) and after evicting it (cold, `posix_fadvise(DONTNEED)`), against a full sha256 of the file;
and the two weights checksums against loading the file into memory (cold), and prints the ratios
measured in this run. The file is removed at the end.

    python tools/bench_signature.py [--gib 1] [--tensors 780]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.io_signature import file_signature, teacher_signature, tensors_digest  # noqa: E402
from compress.runner_teacher_id import same_files, weights_checksum  # noqa: E402
from compress.runner_stream import ResidentModels, StreamedModels  # noqa: E402


def evict(path: Path) -> None:
    """Drop `path` from the page cache (Linux), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(call) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def full_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--tensors", type=int, default=780)
    args = ap.parse_args()
    per = int(args.gib * (1 << 30)) // args.tensors // 4
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.safetensors"
        save_file({f"t{i}": np.full(per, i, dtype=np.float32) for i in range(args.tensors)}, str(path))
        file_signature(path)  # in the page cache
        warm = min(timed(lambda: file_signature(path)) for _ in range(3))
        evict(path)
        cold = timed(lambda: file_signature(path))
        tensors = min(timed(lambda: tensors_digest([path])) for _ in range(3))  # after file_signature: cached
        evict(path)
        tensors_cold = timed(lambda: tensors_digest([path]))
        record = teacher_signature(str(path))  # as the run recorded it; the file in the page cache again
        skipped = min(timed(lambda: same_files(record, str(path))) for _ in range(5))
        whole = min(timed(lambda: teacher_signature(str(path))) for _ in range(5))  # what same_files read before
        full = timed(lambda: full_sha256(path))  # read whole, once
        size = path.stat().st_size / (1 << 30)
        load, resident, streamed = checksums(path, Path(folder))
    print(f"{size:.2f} GiB in {args.tensors} tensors: signature {warm * 1e3:.1f} ms warm, {cold * 1e3:.1f} ms cold; "
          f"a full sha256 {full:.2f} s ({full / warm:.0f}x the warm signature, {full / cold:.0f}x the cold one); "
          f"tensors digest {tensors * 1e3:.1f} ms warm, {tensors_cold * 1e3:.1f} ms cold")
    print(f"--resume's check of the unchanged file (warm): {skipped * 1e3:.2f} ms, the digest skipped; "
          f"{whole * 1e3:.2f} ms with it ({whole / skipped:.2f}x)")
    print(f"weights checksum (every byte): resident {resident / load:.2f}x, streamed (cold) {streamed / load:.2f}x "
          f"the time to load the file (cold: {size / load:.2f} GiB/s)")


def checksums(path: Path, folder: Path) -> tuple[float, float, float]:
    """Seconds to load `path` (cold), to checksum the loaded tensors (resident) and the file (streamed, cold)."""
    import torch
    from safetensors.torch import load_file

    evict(path)
    box = {}
    load = timed(lambda: box.update(state=load_file(str(path))))
    model = torch.nn.Module()
    for name, tensor in box["state"].items():
        model.register_buffer(name, tensor)
    resident = timed(lambda: weights_checksum(model, ResidentModels(folder)))
    models = StreamedModels(None)
    models.files = dict.fromkeys(box["state"], path)
    evict(path)
    streamed = timed(lambda: weights_checksum(None, models))
    return load, resident, streamed


if __name__ == "__main__":
    main()
