"""What a run sets up and checks before its passes: the device, the teacher loaded in the compute
dtype and checked (family, finite weights the compute dtype holds), its held-out reference checked
finite, SIGTERM (and SIGHUP) as Ctrl-C."""

from __future__ import annotations

import functools
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


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# what to try where the teacher's prediction overflows a compute dtype: float16 stops at 65504;
# bfloat16 has float32's exponent, so what overflows it overflows float32 but for its coarser rounding
OVERFLOW_HINTS = {
    "float32": "the checkpoint's weights overflow even in float32 there: it may be damaged, or not this model's",
    "bfloat16": ("bfloat16 reaches as far as float32 (3.4e38), so float32 overflows there too unless bfloat16's "
                 "coarser rounding caused it: the checkpoint may be damaged, or not this model's"),
}


def check_reference(reference: list[torch.Tensor], dtype: str, locate=None, what: str = "held-out") -> None:
    """The teacher's held-out predictions, which every error of the run is measured against, are
    finite. locate(batch index) -> (module, inputs finite) | None: where the NaN/Inf first appears.
    `what` batches they are (importance: the calibration batches its skip errors are measured on)."""
    bad = [i for i, r in enumerate(reference) if nonfinite(r)]
    if not bad:
        return
    found = locate(bad[0]) if locate is not None else None
    where = ""
    if found is not None:
        name, inputs_ok = found
        where = f": {name}'s output is the first to hold it" + (" (its inputs were finite)" if inputs_ok else "")
    hint = OVERFLOW_HINTS.get(dtype, "try bfloat16 or float32")
    raise NumericError(f"the teacher's prediction holds NaN/Inf on {what} batch {bad[0] + 1} of "
                       f"{len(reference)} in compute_dtype {dtype}{where}; {hint}")


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
    one-line error. Streamed runs read each block to the CPU and compute on this device too."""
    name = recipe.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if why := unusable(device):  # bench --device's words (devices.unusable)
        raise UserError(f"{recipe.path}: device {name}, but {why}"
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
