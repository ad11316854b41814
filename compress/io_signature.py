"""What a local teacher's weight files hold, cheaply: a content signature a run records of its
teacher (`teacher_signature`), so that eval and bench notice files replaced since the run
(`signature_change`), e.g. a fine-tune saved over the same folder."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import re
from pathlib import Path

from compress import json_read
from compress.errors import UserError

SIGNATURE = ("size, sha256 of the safetensors header, each tensor's first and last 4 KiB and 16 evenly "
             "spaced 64 KiB chunks")  # the method's name: a record of another method is not compared
PICKLED = ("size, sha256 of 16 evenly spaced 64 KiB chunks (not a safetensors file: no header or tensor ends hashed; "
           "its tensors, mapped, make the tensors digest where there is one)")
# PICKLED's words before the tensors digest read a pickle's tensors too (stop 49), the same hashing of the files
PICKLED_49 = "size, sha256 of 16 evenly spaced 64 KiB chunks (not a safetensors file: no header or tensors read)"
METHODS = (SIGNATURE, PICKLED, PICKLED_49)  # one hashing: a record says its files' kind's words (older: SIGNATURE)
CHUNKS, CHUNK, END = 16, 1 << 16, 1 << 12
SHARD = r"-\d+-of-\d+"


def is_weight_file(name: str, variant: str | None) -> bool:
    """Whether `name` is a diffusers weight file of `variant` (None: none): diffusion_pytorch_model
    with an optional shard number, the variant before or after it (diffusers names a variant's shards
    `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`), .safetensors or .bin."""
    v = "" if variant is None else rf"\.{re.escape(variant)}"
    return re.fullmatch(rf"diffusion_pytorch_model(?:(?:{SHARD})?{v}|{v}{SHARD})\.(?:safetensors|bin)",
                        name) is not None


def weight_files(source: str) -> dict[str, Path]:
    """{name: path} of the weight files a local teacher's loader reads, named from the source (a
    single file: its name; a folder: `diffusion_pytorch_model*.safetensors` / `.bin` and their shards,
    of its weights variant, under its transformer/ for a pipeline folder); {} for a toy teacher, a Hub
    id, or a path that is not there or not a teacher (its loader says why)."""
    from compress.io import transformer_folder
    from compress.io_variants import weights_variant

    path = Path(source).expanduser()
    if source.startswith("toy:") or not path.exists():
        return {}
    if path.is_file():
        return {path.name: path}
    try:
        folder = transformer_folder(path)
        variant = weights_variant(folder)
    except UserError:
        return {}
    found = [f for f in sorted(folder.iterdir()) if is_weight_file(f.name, variant) and f.is_file()]
    if any(f.suffix == ".safetensors" for f in found):  # what the loader reads then: .bin left alone
        found = [f for f in found if f.suffix == ".safetensors"]
    prefix = folder.relative_to(path)
    return {(prefix / f.name).as_posix(): f for f in found}


def file_signature(path: Path) -> dict:
    """{"bytes": size, "sha256": of the safetensors header and each tensor's first and last END bytes
    (a .safetensors file: a fine-tune of one tensor anywhere shows), and of CHUNKS evenly spaced
    CHUNK-byte pieces of the data (all of it when smaller)}: the file's content, not its mtime;
    1 MiB plus 8 KiB per tensor read whatever its size. OSError where it cannot be read."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        start, ends = 0, []
        if path.suffix == ".safetensors" and size >= 8:
            head = f.read(8)
            start = min(size, 8 + int.from_bytes(head, "little"))  # a damaged length: the whole file
            header = f.read(start - 8)
            h.update(head + header)
            ends = [(start + a, start + b) for a, b in tensor_spans(header, size - start)]
        for a, b in ends:
            for offset, length in sorted({(a, min(END, b - a)), (max(a, b - END), min(END, b - a))}):
                f.seek(offset)
                h.update(f.read(length))
        rest = size - start
        if rest <= CHUNKS * CHUNK:
            offsets, length = [start], rest
        else:
            offsets, length = [start + i * (rest - CHUNK) // (CHUNKS - 1) for i in range(CHUNKS)], CHUNK
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(length))
    return {"bytes": size, "sha256": h.hexdigest()}


def tensors_digest(paths: list[Path]) -> str | None:
    """A sha256 of the tensors weight files hold, whatever files they lie in (a folder re-saved
    sharded otherwise, the same tensors, has the same; so has a .bin folder written again as
    safetensors): each tensor's name, dtype (safetensors' name) and shape, its first and last END
    bytes, in name order, and CHUNKS evenly spaced CHUNK-byte pieces of their data laid end to end in
    that order (all of it when smaller): file_signature's reads again, in the page cache then. A
    safetensors file's tensors are read at their place in it (header_entries), a pickle's (.bin, .pth:
    torch.save's zip) mapped (pickled_entries). None where a file is neither (torch.save's legacy
    format, a header that does not parse), or a name is in two files (no digest: the files' signatures
    are compared alone). OSError where one cannot be read."""
    with contextlib.ExitStack() as stack:
        entries = []  # (name, dtype, shape, bytes, read): read(offset, length), of that tensor's data
        for path in paths:
            found = file_entries(path, stack)
            if found is None:
                return None
            entries += found
        entries.sort(key=lambda e: e[0])
        if len({e[0] for e in entries}) < len(entries):
            return None
        h = hashlib.sha256()
        for name, dtype, shape, size, read in entries:
            h.update(json.dumps([name, dtype, shape]).encode())
            for offset in sorted({0, max(0, size - END)}):
                h.update(read(offset, min(END, size)))
        starts = [0] + list(itertools.accumulate(e[3] for e in entries))
        total = starts[-1]
        pieces = [(0, total)] if total <= CHUNKS * CHUNK else \
            [(i * (total - CHUNK) // (CHUNKS - 1), CHUNK) for i in range(CHUNKS)]
        for offset, length in pieces:  # a piece across tensors: each one's part of it
            i = bisect.bisect_right(starts, offset) - 1
            while length > 0 and i < len(entries):
                part = min(length, starts[i + 1] - offset)
                h.update(entries[i][4](offset - starts[i], part))
                offset, length, i = offset + part, length - part, i + 1
    return h.hexdigest()


def file_entries(path: Path, stack: contextlib.ExitStack) -> list[tuple] | None:
    """tensors_digest's entries [(name, dtype, shape, bytes, read)] of one weight file (its files
    opened on `stack`); None where it has none to give."""
    if path.suffix != ".safetensors":
        return pickled_entries(path)
    if (found := header_entries(path)) is None:
        return None
    f = stack.enter_context(open(path, "rb"))

    def reader(begin: int):
        def read(offset: int, length: int) -> bytes:
            f.seek(begin + offset)
            return f.read(length)
        return read
    return [(k, dtype, shape, end - begin, reader(begin)) for k, dtype, shape, _, begin, end in found]


# torch dtypes by safetensors' names (its header's), so that a pickle's tensors digest as their safetensors copy's
DTYPE_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
               "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def pickled_entries(path: Path) -> list[tuple] | None:
    """tensors_digest's entries of a pickle's tensors (the dict a single-file teacher's load reads: a
    training checkpoint's state_dict, else model, module), mapped (torch.load(mmap=True)), so only
    the bytes asked for are read: each one's data as safetensors would hold it (row-major,
    little-endian). None where the file is no torch.save zip (the legacy format cannot be mapped: read
    whole it is no cheap signature) or holds no dict of tensors."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unpickling errors have many types: no digest, the files are compared
        return None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        return None

    def reader(t):
        def read(offset: int, length: int) -> bytes:
            return t.reshape(-1).view(torch.uint8)[offset:offset + length].numpy().tobytes()
        return read
    return [(k, DTYPE_NAMES.get(str(v.dtype).removeprefix("torch."), str(v.dtype)), list(v.shape),
             v.numel() * v.element_size(), reader(v)) for k, v in sd.items()]


def header_entries(path: Path) -> list[tuple] | None:
    """[(name, dtype, shape, path, begin, end)] of a safetensors file's tensors, their data's place in
    the file; None where its header does not parse or a place lies outside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
        if size < start:
            return None
        header = f.read(start - 8)
    try:
        items = [(k, e["dtype"], e["shape"], e["data_offsets"]) for k, e in json_read.parse(header).items()
                 if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    spans = [s for *_, s in items if isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s)]
    if len(spans) < len(items) or any(not 0 <= a <= b <= size - start for a, b in spans):
        return None
    return [(k, dtype, shape, path, start + a, start + b) for k, dtype, shape, (a, b) in items]


def tensor_spans(header: bytes, size: int | None = None) -> list[tuple[int, int]]:
    """The data offsets [(begin, end)] of a safetensors header's tensors, in file order, those that
    are two integers within the `size` bytes of data (where given); [] where the header does not
    parse (its bytes are hashed all the same: a damaged header is still the file's content)."""
    try:
        entries = json_read.parse(header)
        spans = [e["data_offsets"] for k, e in entries.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    fine = [tuple(s) for s in spans if isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s)]
    return sorted((a, b) for a, b in fine if 0 <= a <= b and (size is None or b <= size))


def teacher_signature(source: str) -> dict | None:
    """What a run records of its teacher's weight files ({"method": method_of(files), "files": {name:
    file_signature}, "tensors": tensors_digest, where it has one}), for eval and bench to notice files
    replaced since; None for a toy teacher or a Hub id (nothing local of its own to read)."""
    return signature_against(None, source)


def signature_against(recorded, source: str, same=None, renames_only: bool = True) -> dict | None:
    """teacher_signature(source) to compare with the record `recorded` (teacher_signature's; None: the
    whole signature), its tensors digest read only where it can change what the comparison concludes:
    the record holds one, `same(now, recorded)` (default `same_named_files`: each file, by name, of the
    same signature) is false and, where `renames_only`, the files differ only where `renamed` allows the
    digest a say. Where the files' signatures say the same, so does the comparison, with the digest or
    without (it tells resharded files of the same tensors apart from other tensors), and the digest's
    reads are spared (tools/bench_signature.py --compare); so they are, where `renames_only` (eval and
    bench's signature_change), where a file of one name holds other bytes. Not `renames_only` (--resume
    before the teacher loads, runner_teacher_id.same_files): read there too, where equal digests say
    only the loaded teacher's checksum can tell (a copy re-saved with other metadata or tensor order)."""
    files = weight_files(source)
    if not files:
        return None
    try:
        record = {"method": method_of(files), "files": {name: file_signature(p) for name, p in files.items()}}
        if recorded is not None and (not isinstance(recorded, dict) or recorded.get("tensors") is None
                                     or (same or same_named_files)(record, recorded)
                                     or (renames_only and not renamed(record, recorded))):
            return record
        if (tensors := tensors_digest(list(files.values()))) is not None:
            record["tensors"] = tensors
        return record
    except (OSError, ValueError, OverflowError):  # the run loaded them: not to fail over a record
        return None


def renamed(now: dict, recorded: dict) -> bool:
    """Whether two teacher_signature records differ only in which files there are (files gone, files
    new: a folder resharded, its .bin written as safetensors, a single file renamed), no file of one
    name in both holding other bytes: where the tensors digest may say they hold the same tensors.
    A file of one name whose bytes changed is a change whatever the digest says: it samples the
    tensors (each one's ends and 16 pieces of them all) at other places than the file's signature
    does, so a byte changed in a piece the signature read, and the digest did not, escaped it."""
    before, files = recorded.get("files"), now.get("files")
    return isinstance(before, dict) and isinstance(files, dict) and \
        all(before[name] == files[name] for name in before.keys() & files.keys())


def tensors_say_same(now: dict, recorded: dict) -> bool:
    """Whether two teacher_signature records whose files differ hold the same tensors: both record
    the tensors digest, equal (`same_digest`), and their files differ only by name (`renamed`)."""
    return same_digest(now, recorded) and renamed(now, recorded)


def same_digest(now: dict, recorded: dict) -> bool:
    """Whether two teacher_signature records both record the tensors digest, equal: the same tensors
    where their files differ only by name (`tensors_say_same`); where a file of one name holds other
    bytes, a copy re-saved otherwise (other metadata, tensor order or split) or a byte changed where the
    digest does not sample, which only a checksum of every byte tells apart."""
    return recorded.get("tensors") is not None and recorded.get("tensors") == now.get("tensors")


def same_named_files(now: dict, recorded: dict) -> bool:
    """Whether two teacher_signature records name the same files holding the same (signature_change's
    'nothing differs')."""
    return bool(now.get("files")) and now.get("files") == recorded.get("files")


def same_contents(now: dict, recorded: dict) -> bool:
    """Whether two teacher_signature records hold files of the same signatures, whatever their names
    (a single file renamed, a folder moved)."""
    def contents(signature: dict) -> list:
        files = signature.get("files")
        return sorted(json.dumps(f, sort_keys=True) for f in files.values()) if isinstance(files, dict) else []
    return bool(contents(now)) and contents(now) == contents(recorded)


def method_of(files: dict[str, Path]) -> str:
    """The words of what file_signature hashes of `files`: a .safetensors file's header and tensor ends
    too (SIGNATURE), a pickle's (.pth, .bin) size and chunks only (PICKLED); a folder's are of one kind
    (weight_files)."""
    return SIGNATURE if any(p.suffix == ".safetensors" for p in files.values()) else PICKLED


def comparable(*records) -> bool:
    """Whether teacher_signature records compare: each one of this hashing (METHODS), naming its files
    (a record of an older or newer dit-compress, or none, does not)."""
    return all(isinstance(r, dict) and r.get("method") in METHODS and isinstance(r.get("files"), dict)
               for r in records)


def signature_change(recorded, source: str, signature: dict | None = None) -> str | None:
    """What differs between a recorded `teacher_signature` and the teacher `source`'s files now, in
    words ('NAME holds other bytes'), naming the first file that differs; None where nothing does, and
    where the record is missing or of another method (an output of an older or newer dit-compress) or
    the files cannot be read now (the loader says why); None too where both record the same tensors
    (tensors_digest: the files re-written otherwise, resharded, the tensors in them the same) and no
    file of one name holds other bytes (`tensors_say_same`).
    `signature`: teacher_signature(source) read already, not read again."""
    if not comparable(recorded):
        return None
    try:  # teacher_signature's None: no files, or one not read; its weight_files may raise OSError
        signature = (signature if signature is not None else signature_against(recorded, source)) or {"files": {}}
    except (OSError, ValueError, OverflowError):
        return None
    now = signature["files"]
    if not now:  # the teacher is gone, or is no teacher now: its loader says so
        return None
    if tensors_say_same(signature, recorded):
        return None
    before, differ = recorded["files"], []
    for name in sorted(before.keys() | now.keys()):
        was, is_ = before.get(name), now.get(name)
        if is_ is None or not isinstance(was, dict):
            differ.append(f"{name} is {'gone' if is_ is None else 'new'}")
        elif was != is_:
            size = was.get("bytes")
            resized = isinstance(size, int) and size != is_["bytes"]
            differ.append(f"{name} is {is_['bytes']:,} bytes, was {size:,}" if resized else f"{name} holds other bytes")
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    if not differ:
        return None
    return differ[0] + more + (REWRITTEN if "tensors" not in recorded and before.keys() != now.keys() else "")


# where a record without tensors_digest (an output of an older dit-compress) names other files than there are now
REWRITTEN = (": the weights were re-written into other files (as re-saving them sharded otherwise does), and where "
             "their tensors are the same, so is the error measured against them")


def lora_signature(source: str) -> dict | None:
    """{name: file_signature} of a local LoRA's safetensors (a file: "" for it; a folder: each
    .safetensors in it), recorded when it is merged so that its new place given to eval or bench
    (--lora) can be checked to hold the same; None for a Hub id or what cannot be read."""
    path = Path(source).expanduser()
    try:
        if path.is_file():
            return {"": file_signature(path)}
        if path.is_dir():
            return {f.name: file_signature(f) for f in sorted(path.glob("*.safetensors")) if f.is_file()} or None
    except (OSError, ValueError, OverflowError):
        return None
    return None


def pipeline_signature(source: str) -> dict | None:
    """{name: file_signature} of the files of a local pipeline folder that shape the inputs sampled
    in it: model_index.json and each component's folder it names (scheduler, text encoders,
    tokenizers, VAE) but the transformer, which the run replaces by the teacher (whose weights are
    checksummed apart). A calibration cache keyed by it is not read back for a pipeline whose
    scheduler config or text encoder was edited since. None for a toy pipeline, a Hub id or a
    folder without model_index.json (loading it says why); UserError where a part cannot be read."""
    path = Path(source).expanduser()
    index = path / "model_index.json"
    if source.startswith("toy:") or not index.is_file():
        return None
    try:
        components = json_read.read(index)
        names = sorted(k for k in components if not k.startswith("_") and k != "transformer") \
            if isinstance(components, dict) else []
        files = [index] + [f for name in names if (path / name).is_dir()
                           for f in sorted((path / name).rglob("*")) if f.is_file()]
        return {f.relative_to(path).as_posix(): file_signature(f) for f in files}
    except (OSError, ValueError, OverflowError) as e:
        raise UserError(f"cannot read the calibration pipeline {source}: {e}") from None
