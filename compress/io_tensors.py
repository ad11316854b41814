"""Checkpoint tensors read and checked: `read_state_dict` (a safetensors file, or a pickle loaded as
data, never code), `nonfinite` (how many NaN/Inf a tensor holds, cheaply), the suffixes of
single-file checkpoints, and the one-line errors for what cannot be read (`unreadable`, `one_line`).
"""

from __future__ import annotations

import functools
import json
import pickletools
import re
import shlex
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from compress.errors import UserError

SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def unreadable(path, e: Exception) -> UserError:
    """The error for a safetensors file that cannot be opened."""
    return UserError(f"{path} is not a readable safetensors file ({one_line(e)}); it may be truncated or corrupted")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch's bold in "Weights only load failed ..."


def one_line(e: Exception) -> str:
    """The first line of an error's words, without terminal escapes; its type's name when it has none."""
    text = ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def needs_code(e: Exception) -> bool:
    """torch.load(weights_only=True) refused what the pickle holds (a class or function it names, an
    opcode of pickles torch.save does not write): all of its message is searched, whose first line
    (torch 2.6 on) is "Weights only load failed ..." without the words that say why."""
    return any(w in str(e) for w in ("Weights only load failed", "weights_only", "Unsupported global", "GLOBAL"))


def nonfinite(t: torch.Tensor, chunk: int = 2**22) -> int:
    """How many NaN/Inf values t holds (none in an integer or bool tensor). A NaN or Inf anywhere
    makes the sum NaN or Inf, so a finite sum (one reduction, no temporaries) settles it; otherwise
    they are counted in chunks (a whole-tensor isfinite of a bf16 weight has float temporaries
    several times its size: +0.16 GiB peak on full-width Flux). On a full-width Flux double block the
    sum took 0.03 s where counting took 1.8 s, most of what reading the block cost
    (tools/bench_stream_scan.py). float8 (an fp8 Flux file) has neither sum nor isfinite on the CPU:
    its bytes are counted (one bincount, no float copy; 0.16 s for 75M values where counting chunks
    upcast to float32 took 2.5 s) at the codes its format spends on NaN/Inf."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    if t.dtype.itemsize == 1:
        codes = _byte_nonfinite_codes(t.dtype)
        if not len(codes):
            return 0
        return int(torch.bincount(t.view(torch.uint8).reshape(-1), minlength=256)[codes].sum())
    if bool(torch.isfinite(t.sum())):
        return 0
    return sum(int((~torch.isfinite(c)).sum()) for c in t.reshape(-1).split(chunk))


@functools.lru_cache(maxsize=None)
def _byte_nonfinite_codes(dtype: torch.dtype) -> torch.Tensor:
    """The byte values a one-byte float format spends on NaN/Inf, as torch converts them: 0x7F/0xFF
    of float8_e4m3fn (no Inf), ±Inf and NaN from 0x7C of float8_e5m2, 0x80 of the fnuz formats, 0xFF
    of float8_e8m0fnu. float4_e2m1fn_x2 (two values a byte, none of them NaN or Inf) has none."""
    if dtype == getattr(torch, "float4_e2m1fn_x2", None):
        return torch.zeros(0, dtype=torch.long)
    values = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32)
    return (~torch.isfinite(values)).nonzero().flatten()


# ---- single files -----------------------------------------------------------------------------
def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file. Pickles are loaded with weights_only=True: data, never code;
    mmap: a pickle's tensors map the file, read as they are used (where its format allows it)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise unreadable(path, e) from None
    try:
        sd = _torch_load(path, mmap)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        if needs_code(e) and not cut_short(path):
            raise UserError(f"{path} needs arbitrary code to unpickle and was refused; checkpoints "
                            "are data, never code: convert it to safetensors") from None
        raise UserError(f"{path} is not a readable checkpoint: {not_torch_save(path, e)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            note_passed_over(path, key, [k for k, v in sd.items() if k != key and tensor_dict(v)])
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a dict of tensors")
    return sd


def tensor_dict(value) -> bool:
    """Whether a checkpoint's entry is a non-empty dict of tensors (weights: an EMA copy, another model),
    not an optimizer's state or a step count."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def note_passed_over(path: Path, read: str, others: list[str]) -> None:
    """A note, once a file, where a checkpoint holds weight dicts beside the one read (a training
    checkpoint's {"state_dict": ..., "state_dict_ema": ...}): which was read, which passed over, and
    how to compress another (no key picks one: it is saved alone, a file of its own)."""
    if not others or (path, read) in _NOTED:
        return
    from compress.report import note

    _NOTED.add((path, read))
    other = others[0]
    alone = path.with_name(f"{path.stem}-{other}{path.suffix}")
    code = f"import torch; torch.save(torch.load({json.dumps(str(path))}, weights_only=True)[{json.dumps(other)}], " \
           f"{json.dumps(str(alone))})"
    note(f"{path} holds {len(others) + 1} weight dicts: '{read}' is read, {', '.join(repr(k) for k in others)} "
         f"passed over; to compress '{other}' instead, save it alone and give that file as the teacher: "
         f"python -c {shlex.quote(code)}")


_NOTED: set = set()  # (file, key read) noted already: a file read again (plan, run, eval) says it once


def not_torch_save(path: Path, e: Exception) -> str:
    """Why torch.load refused a file, in words: a file torch.save did not write (its errors then
    are bare key and index errors, `KeyError: 101`), or a damaged one."""
    with open(path, "rb") as f:
        head = f.read(4)
    expected = (f"expected a .safetensors file or one torch.save wrote ({', '.join(SINGLE_FILE_SUFFIXES[1:])}: "
                "a zip archive or a pickle)")
    zip_start = head and b"PK\x03\x04".startswith(head)  # a zip's first entry (a zip cut to 1-3 bytes: its start)
    if not zip_start and head[:1] != b"\x80":  # pickle protocol 2+ starts with PROTO
        return f"{expected}, and it is neither"
    if needs_code(e):  # cut_short: torch's words would be about a class, one whose name the cut ended
        why = "it ends early"
    else:
        why = f"{type(e).__name__}: {e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)}"
    return f"{expected}; this one fails to load ({why}); it may be truncated or corrupted"


def cut_short(path: Path, pickles: int = 5) -> bool:
    """Whether a file torch.load refused as naming a class (needs_code) ends early instead: a zip
    without the central directory at its end (a zip cut to 1-3 bytes is no zip), or a pickle that
    ends before its STOP, where a class name cut in the middle ("torch._uti") reads as a class to
    refuse. torch.save's legacy format is 5 pickles (magic, protocol, sys info, the object, storage
    keys) then the tensors' bytes; a plain pickle is one. Only opcodes are read: no tensor, no code."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            try:
                zipfile.ZipFile(f).close()  # reads the central directory only
            except (zipfile.BadZipFile, OSError, ValueError):
                return True
            return False
        f.seek(0)
        for _ in range(pickles):
            if not f.read(1):  # the file ends where a pickle does
                return False
            f.seek(-1, 1)
            try:
                for _ in pickletools.genops(f):
                    pass
            except ValueError:  # no STOP before the end, or a byte no pickle opcode is
                return True
    return False


def _torch_load(path: Path, mmap: bool):
    if mmap:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # torch.save's legacy (pre-zipfile) format cannot be mapped
                raise
    return torch.load(str(path), map_location="cpu", weights_only=True)
