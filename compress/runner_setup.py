"""What a run sets up and checks before its passes: the device, the teacher loaded in the compute
dtype and checked (family, finite weights), its held-out reference checked finite, SIGTERM as Ctrl-C."""

from __future__ import annotations

import functools
import signal
from contextlib import contextmanager

import torch

from compress.arch import get_adapter
from compress.errors import NumericError, UserError
from compress.io import load_teacher
from compress.io_source import TeacherSource, checked_sources
from compress.io_tensors import nonfinite
from compress.recipe import Recipe


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_reference(reference: list[torch.Tensor], dtype: str, locate=None) -> None:
    """The teacher's held-out predictions, which every error of the run is measured against, are
    finite. locate(batch index) -> (module, inputs finite) | None: where the NaN/Inf first appears."""
    bad = [i for i, r in enumerate(reference) if nonfinite(r)]
    if not bad:
        return
    found = locate(bad[0]) if locate is not None else None
    where = ""
    if found is not None:
        name, inputs_ok = found
        where = f": {name}'s output is the first to hold it" + (" (its inputs were finite)" if inputs_ok else "")
    hint = ("the checkpoint's weights overflow even in float32 there: it may be damaged, or not this model's"
            if dtype == "float32" else "try " + ("float32" if dtype == "bfloat16" else "bfloat16 or float32"))
    raise NumericError(f"the teacher's prediction holds NaN/Inf on held-out batch {bad[0] + 1} of "
                       f"{len(reference)} in compute_dtype {dtype}{where}; {hint}")


def load_checked_teacher(recipe: Recipe, teacher: str | None = None, config: str | None = None,
                         models=None, sources: TeacherSource | None = None):
    """(source, frozen teacher); `models` (runner_stream) may hold it streamed. `sources`: the
    recipe's checked already (io_source.checked_sources), for `teacher` and `config`."""
    src = sources or checked_sources(recipe, teacher, config)  # there, of the recipe's family: before any weights
    source = src.source
    load = functools.partial(load_teacher, src, dtype=DTYPES[recipe.compute_dtype], config=config,
                             family=recipe.model)
    model = models.teacher(source, load) if models is not None else load()
    family = get_adapter(model).family
    if family != recipe.model:
        raise UserError(f"{recipe.path}: model is '{recipe.model}' but the teacher {source} is a "
                        f"{type(model).__name__} ({family})")
    return source, model.requires_grad_(False).eval()


def resolve_device(recipe: Recipe) -> torch.device:
    """The recipe's device: auto is cuda when torch sees a GPU; a GPU asked for and not there is a
    one-line error. Streamed runs read each block to the CPU and compute on this device too."""
    name = recipe.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{recipe.path}: device {name}, but torch sees no CUDA GPU here "
                        f"(torch {torch.__version__}); set device: cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{recipe.path}: device {name}, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def check_finite(model: torch.nn.Module, what: str = "teacher") -> None:
    """NaN/Inf in weights is an error naming the parameter (and so the layer and block).
    Streamed blocks (on meta) are checked as they are read (CheckpointBlocks.read)."""
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            continue
        if not torch.isfinite(p).all():
            bad = (~torch.isfinite(p)).sum().item()
            raise NumericError(f"{what} weight {name} has {bad} NaN/Inf values")


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so passes checkpoint and the output is never half-written."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
