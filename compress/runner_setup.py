"""What a run sets up and checks before its passes: the device, the teacher loaded in the compute
dtype and checked (family, finite weights the compute dtype holds), its held-out reference checked
finite, SIGTERM (and SIGHUP) as Ctrl-C."""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from compress.arch import get_adapter
from compress.devices import unusable
from compress.errors import NumericError, UserError
from compress.interrupts import TERMINATIONS, as_ctrl_c, handled
from compress.io import load_teacher
from compress.dtype_range import compute_beyond_words, held
from compress.io_source_config import TeacherSource
from compress.io_single import OtherFamily
from compress.io_source_recipe import checked_sources, other_family_words
from compress.io_tensors import nonfinite
from compress.recipe import Recipe
from compress.recipe_where import recipe_where


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# what to try where the teacher's prediction overflows a compute dtype: float16 stops at 65504;
# bfloat16 has float32's exponent, so what overflows it overflows float32 but for its coarser rounding
OVERFLOW_HINTS = {
    "float32": "the checkpoint's weights overflow even in float32: it may be damaged, or not this model's",
    "bfloat16": ("bfloat16 reaches as far as float32 (3.4e38), so float32 overflows there too unless bfloat16's "
                 "coarser rounding caused it: the checkpoint may be damaged, or not this model's"),
}


def check_reference(reference: list[torch.Tensor], dtype: str, locate=None, what: str = "held-out") -> None:
    """The teacher's held-out predictions, which every error of the run is measured against, are
    finite. locate(batch index) -> words | None (`locate` below): where the NaN/Inf first appears.
    `what` batches they are (importance: the calibration batches its skip errors are measured on)."""
    bad = [i for i, r in enumerate(reference) if nonfinite(r)]
    if not bad:
        return
    found = locate(bad[0]) if locate is not None else None
    where = f": {found}" if found else ""
    hint = OVERFLOW_HINTS.get(dtype, "try bfloat16 or float32")
    raise NumericError(f"the teacher's prediction holds NaN/Inf on {what} batch {bad[0] + 1} of "
                       f"{len(reference)} in compute_dtype {dtype}{where}; {hint}")


@torch.no_grad()
def check_error(error: float, model: torch.nn.Module, adapter, batches: list[dict], dtype: str,
                what: str = "the model") -> None:
    """A teacher-relative `error` that is NaN/Inf (`model` predicting NaN/Inf where the teacher's
    predictions are finite: check_reference) is a NumericError naming the first held-out batch and,
    by `locate`, the layer where it first appears, never an error of nan. Streamed: the caller holds
    `model`'s forwards."""
    if math.isfinite(error):
        return
    bad = next((b for b, kw in enumerate(batches) if nonfinite(adapter.predict(model, kw))), None)
    if bad is None:  # every prediction finite: their distance overflowed float64
        raise NumericError(f"{what}'s error relative to the teacher is {error}: its held-out predictions are finite "
                           "but too far from the teacher's to measure (a damaged model?)")
    found = locate(model, adapter, batches[bad])
    raise NumericError(f"{what}'s prediction holds NaN/Inf on held-out batch {bad + 1} of {len(batches)} in "
                       f"compute_dtype {dtype}" + (f": {found}" if found else "") + f"; {_damaged_hint(dtype)}")


def _damaged_hint(dtype: str) -> str:
    """What a model predicting NaN/Inf where its teacher does not may be, in compute_dtype `dtype`."""
    if dtype == "float16":
        return "float16 stops at 65504: rerun the recipe with compute_dtype bfloat16, or the output may be damaged"
    return f"its weights overflow in {dtype}: the output may be damaged (rerun the recipe that wrote it)"


@torch.no_grad()
def locate(model: torch.nn.Module, adapter, batch: dict, held: str = "it") -> str | None:
    """Where `model`'s prediction on `batch` first holds NaN/Inf, in words ("X's output is the first to
    hold it (its inputs were finite)"; `held`: what it holds, "NaN/Inf" where the words before them
    name no NaN/Inf, as a non-finite loss's), or None where it holds none. Where X's inputs were finite, and
    an earlier layer's output passed the square root of its dtype's largest value (past it a product, a
    norm's variance, overflows: a norm with no weights a block later is where the huge weight shows),
    that layer too, with its largest weight. Leaf modules, in execution order; streamed blocks are read
    as the forward runs, so each layer's weights are measured in its hook."""
    seen: dict[str, tuple] = {}  # "nan": (name, inputs finite); "past": (name, (largest output, dtype), largest weight)

    def hook(module, args, kwargs, output, name=""):
        if "nan" in seen:
            return
        if "past" not in seen and (big := _largest_past_root(output)) is not None:
            seen["past"] = name, big, _largest_weight(module)
        if _holds_nonfinite(output):
            seen["nan"] = name, not _holds_nonfinite((args, kwargs))
    handles = [m.register_forward_hook(functools.partial(hook, name=n), with_kwargs=True)
               for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    try:
        adapter.predict(model, batch)
    finally:
        for h in handles:
            h.remove()
    return _located_words(seen, held) if "nan" in seen else None


def _located_words(seen: dict[str, tuple], held: str) -> str:
    """locate's words from what its hooks saw (a "nan" entry at least)."""
    name, inputs_ok = seen["nan"]
    words = f"{name}'s output is the first to hold {held}" + (" (its inputs were finite)" if inputs_ok else "")
    if not inputs_ok or "past" not in seen or seen["past"][0] == name:
        return words
    past, (big, dtype), weight = seen["past"]
    held = f"its largest weight is {weight:.3g}" if weight is not None else "it has no weights of its own"
    root = torch.finfo(dtype).max ** 0.5
    return (f"{words}; {past}'s output is the first past {root:.3g}, the square root of "
            f"{str(dtype).removeprefix('torch.')}'s largest value (it reaches {big:.3g}; {held})")


def _floats(x):
    """The floating tensors in nested tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _floats(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _floats(v)


def _holds_nonfinite(x) -> bool:
    return any(bool((~torch.isfinite(t)).any()) for t in _floats(x))


def _largest_past_root(x) -> tuple[float, torch.dtype] | None:
    """(largest magnitude, its dtype) in `x`'s tensors where one passes the square root of its dtype's
    largest value (Inf counts; NaN alone does not), else None."""
    tops = [(float(t.detach().abs().nan_to_num(nan=0.0, posinf=float("inf")).max()), t.dtype)
            for t in _floats(x) if t.numel()]
    return max((top for top in tops if top[0] > torch.finfo(top[1]).max ** 0.5), key=lambda top: top[0], default=None)


def _largest_weight(module: torch.nn.Module) -> float | None:
    """The largest magnitude among the module's own parameters; None where it has none."""
    tops = [float(p.detach().abs().max()) for p in module.parameters(recurse=False)
            if p.numel() and p.device.type != "meta"]
    return max(tops) if tops else None


def load_checked_teacher(recipe: Recipe, teacher: str | None = None, config: str | None = None,
                         models=None, sources: TeacherSource | None = None):
    """(source, frozen teacher); `models` (runner_stream) may hold it streamed. `sources`: the
    recipe's checked already (io_source_recipe.checked_sources), for `teacher` and `config`."""
    src = sources or checked_sources(recipe, teacher, config)  # there, of the recipe's family: before any weights
    source = src.source
    load = functools.partial(load_teacher, src, dtype=DTYPES[recipe.compute_dtype], config=config,
                             family=recipe.model)
    try:  # a pickle's family is known as it loads: refused as checked_sources refuses another's
        model = models.teacher(source, load) if models is not None else load()
    except OtherFamily as e:
        raise UserError(other_family_words(recipe, source, teacher, e.found)) from None
    family = get_adapter(model).family
    if family != recipe.model:
        raise UserError(other_family_words(recipe, source, teacher, family))
    check_finite(model, source=src)
    return source, model.requires_grad_(False).eval()


def resolve_device(recipe: Recipe) -> torch.device:
    """The recipe's device: auto is cuda when torch sees a GPU; a GPU asked for and not there is a
    one-line error naming the recipe's device: line (or its --set). Streamed runs read each block to the CPU
    and compute on this device too."""
    name = recipe.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if why := unusable(device):  # bench --device's words (devices.unusable)
        raise UserError(f"{recipe_where(recipe, 'device', recipe.device)}: device {name}, but {why}"
                        + ("; set device: cpu or auto" if not torch.cuda.is_available() else ""))
    return device


def check_finite(model: torch.nn.Module, what: str = "teacher", source: TeacherSource | None = None) -> None:
    """NaN/Inf in weights is an error naming the parameter (and so the layer and block) and, where
    `source` (the checkpoint it was read from) tells, its file; a weight finite there that the compute
    dtype cannot hold (float16 stops at 65504) says so, and which dtypes hold it. Streamed blocks (on
    meta) are checked as they are read (CheckpointBlocks.read)."""
    for name, p in model.named_parameters():
        if p.device.type != "meta" and nonfinite(p.detach()):
            raise NumericError(_nonfinite_words(name, p.detach(), what, _stored(source, name)))


def _nonfinite_words(name: str, p: torch.Tensor, what: str, stored: tuple[Path, torch.Tensor] | None) -> str:
    """Why the weight `name` (`p`, as loaded) holds NaN/Inf: its file's values, or the cast of finite
    ones to p's dtype; `stored`: (file, the tensor as it is there), None where not known."""
    if stored is None:
        words = f"{what} weight {name} has {nonfinite(p)} NaN/Inf values"
        if p.dtype == torch.float16 and not torch.isnan(p).any():  # Inf alone, as a cast's overflow makes it
            words += (" in float16, which stops at 65504 (finite values beyond it become Inf: if the "
                      "checkpoint's are finite, use compute_dtype bfloat16 or float32)")
        return words
    path, t = stored
    bad = nonfinite(t)
    if bad:
        return f"{what} weight {name} in {path} has {bad} NaN/Inf values"
    big = float(t.to(torch.float64).abs().max())
    if held(big, p.dtype):  # finite there and in range: not the cast's doing
        return f"{what} weight {name} has {nonfinite(p)} NaN/Inf values as loaded (none in {path})"
    return compute_beyond_words(what, name, path, big, p.dtype)


def _stored(source: TeacherSource | None, name: str) -> tuple[Path, torch.Tensor] | None:
    """(file, tensor as stored) of the weight `name` where the checkpoint holds it by that name (a toy
    teacher, a local diffusers folder, a safetensors file in diffusers' names); else None (a Hub id,
    .bin files, a single file in its original names: the message then names no file)."""
    from safetensors import safe_open

    from compress.stream_files import checkpoint_of, file_map

    try:
        if source is not None and source.kind in ("toy", "folder"):
            files = checkpoint_of(source.source)[1]
        elif source is not None and source.kind == "file" and source.source.endswith(".safetensors"):
            files = file_map(Path(source.source).expanduser())
        else:
            return None
        if name not in files:
            return None
        with safe_open(str(files[name]), framework="pt") as f:
            return files[name], f.get_tensor(name)
    except (UserError, OSError, SafetensorError):  # not read here: the message names no file
        return None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (and SIGHUP: a terminal closed) unwinds like Ctrl-C, so passes checkpoint and the output
    is never half-written; the signal is noted for the exit status (interrupts.took). One the caller
    ignores (SIG_IGN: SIGHUP under nohup, nohup-like launchers, a parent that wants the run immune)
    stays ignored, as cli_entry and StopSignals leave an ignored SIGINT, SIGTERM or SIGHUP. The handler
    is interrupts.as_ctrl_c, so interrupts_held holds these too over a safetensors read (stream.py)."""
    with handled(TERMINATIONS, as_ctrl_c):
        yield
