"""Weights against a dtype: NaN/Inf in an output's weight file, and finite values a cast to a
narrower dtype would make Inf (float16 stops at 65504), each said in one line naming the tensor, its
file and the dtypes that hold it; for outputs loaded (io_output), a resident teacher (runner_setup)
and streamed blocks (stream) alike."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from compress.errors import NumericError, UserError
from compress.io_tensors import nonfinite

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # by name, as diffusers


def check_finite_file(path: Path, tensors: dict[str, torch.Tensor], warn: bool = False) -> None:
    """NaN/Inf in a weight file of an output: a NumericError naming the first such tensor and the file
    (eval would sample for minutes and fail inside sklearn), or with `warn` a warning; what to do as
    fits where the file came from (`damaged_words`). One sum per tensor (io_tensors.nonfinite): a small
    part of reading the file."""
    for name, t in tensors.items():
        bad = nonfinite(t) if t.is_floating_point() else 0
        if not bad:
            continue
        message = f"{path}: weight {name} has {bad} NaN/Inf values; {damaged_words(path)}"
        if not warn:
            raise NumericError(message)
        from compress import report

        report.warn(message)
        return


def damaged_words(path) -> str:
    """What a NaN/Inf in the output weight file `path` (as load_transformer names it: io_output.shown)
    says to do: in the Hugging Face cache (a Hub id's output, a Hub teacher that is an output), download
    it again, which `hf download` does only forced (the file is there); a saved stage of a run folder
    (--resume), start over; a local output (or a teacher that is one), rerun the recipe that wrote it."""
    from compress.io_errors import download_again

    at = Path(_in_cache(str(path)))
    again = download_again(at.parent, [at.name])  # 'download it again online (hf download ...)' in a snapshot
    if again.endswith(")") and "hf download" in again:
        return (f"the output is damaged as the Hugging Face cache holds it: {again[:-1]} --force-download), "
                "and if it still holds them, so is the Hub's copy (rerun the recipe that wrote it)")
    if at.parent.parent.name == "stages" and re.fullmatch(r"\d+-\w+", at.parent.name):
        return "the run folder's saved stage is damaged: rerun with --restart to start over"
    return "the output is damaged (rerun the recipe that wrote it)"


def _in_cache(shown: str) -> str:
    """The file load_transformer names 'acme/out's FILE' (io_output.shown: a Hub id's output read from the
    cache's snapshot, io_output.READ_FOR) as the path it is there; any other as it is."""
    from compress.io_output import READ_FOR

    for snapshot, source in READ_FOR.items():
        if shown.startswith(f"{source}'s "):
            return str(snapshot / shown.removeprefix(f"{source}'s "))
    return shown


def check_castable(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """A finite tensor of the file `path` that `dtype` cannot hold (float16 stops at 65504; cast, it
    would be Inf): a UserError naming it, its largest value and the dtypes that hold it."""
    for name, t in tensors.items():
        big = largest_beyond(t, dtype)
        if big is not None:
            raise UserError(beyond_words(f"{path}: {name}", big, dtype, "load it as", " (dtype=)"))


def largest_beyond(t: torch.Tensor, dtype: torch.dtype) -> float | None:
    """The largest magnitude of `t` where casting `t` to `dtype` makes a finite value Inf, else None.
    Rounding is monotone, so the extremes overflow first: one aminmax, no copy of `t`."""
    if not t.is_floating_point() or not t.numel() or t.device.type == "meta" or \
            torch.finfo(t.dtype).max <= torch.finfo(dtype).max:
        return None
    lo, hi = torch.aminmax(t.detach())
    big = max(-float(lo), float(hi))
    return big if big == big and big != float("inf") and not held(big, dtype) else None  # NaN/Inf: its own


def held(value: float, dtype: torch.dtype) -> bool:
    """Whether `value` casts to `dtype` finitely (65519 does to float16, rounded to 65504)."""
    return bool(torch.isfinite(torch.tensor(value, dtype=torch.float64).to(dtype)))


def beyond_words(what: str, big: float, dtype: torch.dtype, use: str, where: str = "") -> str:
    """'`what` holds values up to `big`, beyond `dtype`'s range (max ...): `use` the dtypes that hold
    it `where`', narrowest first; where none does, that it may be damaged."""
    fits = sorted((n for n, d in DTYPES.items() if d != dtype and held(big, d)), key=lambda n: DTYPES[n].itemsize)
    advice = f"{use} {' or '.join(fits)}{where}" if fits else "no dtype holds them: the checkpoint may be damaged"
    return (f"{what} holds values up to {big:.3g}, beyond {str(dtype).removeprefix('torch.')}'s range "
            f"(max {torch.finfo(dtype).max:.6g}): {advice}")


def compute_beyond_words(what: str, name: str, path, big: float, dtype: torch.dtype) -> str:
    """beyond_words for `what`'s ('teacher', 'student') weight `name` of file `path`, cast to the
    compute dtype: a resident run's check (runner_setup) and a streamed block's read (stream) alike."""
    return beyond_words(f"the {what}'s weight {name} (in {path})", big, dtype, "use compute_dtype")


def overflow_hint(dtype: torch.dtype) -> str:
    """What a NaN/Inf that a forward or backward in compute dtype `dtype` made suggests, for the
    parenthesis of its error: float16's narrow range (65504), or where the dtype reaches its own far max
    (bfloat16 and float32 3.4e38, float64 1.8e308), weights that are damaged or that an earlier pass (a
    diverging distill) made so large."""
    if dtype == torch.float16:
        return "a float16 compute_dtype overflowing? try bfloat16"
    name, reach = str(dtype).removeprefix("torch."), f"{torch.finfo(dtype).max:.1e}".replace("e+", "e")  # 3.4e38
    return (f"{name} reaches {reach}, so not a narrow compute dtype: weights damaged, or grown that large by an "
            "earlier pass (a diverging distill)")
