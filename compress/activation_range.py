"""Activations against an export dtype: the largest |output| of each block and linear on the forwards a
model runs (forward hooks), and a warning where float16 cannot hold them. The export measures its weights
in the compute dtype (float32 on CPU), where an activation beyond float16's range (65504) stays finite;
run in float16 (on a GPU) the same model gives inf/NaN. bfloat16 has float32's range: nothing to say."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

# warned from half of the dtype's max on: the measurement sees a few held-out inputs, and other prompts,
# seeds, timesteps or resolutions move the largest activation; half leaves one power of two of headroom
MARGIN = 0.5


def largest_abs(output) -> float:
    """The largest |x| over the floating tensors of a module's output (a tensor, or a tuple of them:
    Flux's double blocks return two), NaN counted as Inf; 0.0 where it holds none."""
    tensors = [output] if isinstance(output, torch.Tensor) else list(output) if isinstance(output, (tuple, list)) else []
    big = 0.0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            value = float(t.detach().abs().amax())
            big = max(big, float("inf") if value != value else value)
    return big


def block_names(model: nn.Module, adapter) -> list[str]:
    """The module names of `model`'s blocks ('transformer_blocks.3'), in execution order."""
    return [adapter.block_prefix(group, i)[:-1] for group, i, _ in adapter.iter_blocks(model)]


@contextmanager
def recording_maxima(model: nn.Module, adapter) -> Iterator[dict[str, float]]:
    """Within it, each forward of `model` records in the dict it yields the largest |output| of every block
    and every linear (LowRankLinear and its factors too), by module name, in the order they first ran."""
    from compress.arch.base import is_linear

    maxima: dict[str, float] = {}
    blocks = set(block_names(model, adapter))
    handles = [m.register_forward_hook(_recorder(maxima, name)) for name, m in model.named_modules()
               if name in blocks or is_linear(m)]
    try:
        yield maxima
    finally:
        for h in handles:
            h.remove()


def _recorder(maxima: dict[str, float], name: str):
    def hook(module, args, output):
        maxima[name] = max(maxima.get(name, 0.0), largest_abs(output))
    return hook


def per_block(maxima: dict[str, float], blocks: list[str]) -> dict[str, float]:
    """`maxima` by module folded into the block holding each module (a name of `blocks`), one outside
    every block under its own name; 4 significant digits (report.json), in the order they ran."""
    folded: dict[str, float] = {}
    for name, value in maxima.items():
        unit = next((b for b in blocks if name == b or name.startswith(b + ".")), name)
        folded[unit] = max(folded.get(unit, 0.0), float(f"{value:.4g}"))
    return folded


def near_range(maxima: dict[str, float], dtype: torch.dtype, margin: float = MARGIN) -> list[tuple[str, float]]:
    """(module, largest |activation|) of those beyond `margin` x `dtype`'s max, in the order they ran; none
    for a dtype with float32's range (bfloat16, float32)."""
    if not narrower(dtype, torch.float32):
        return []
    return [(name, value) for name, value in maxima.items() if value > margin * torch.finfo(dtype).max]


def narrower(dtype: torch.dtype, than: torch.dtype) -> bool:
    """Whether `dtype` has fewer exponent bits than `than` (float16 than float32 or bfloat16; bfloat16's
    max is float32's but for the mantissa's last bits: the same range)."""
    return torch.finfo(dtype).max * 2 < torch.finfo(than).max


def range_words(over: list[tuple[str, float]], dtype: torch.dtype, margin: float = MARGIN,
                who: str = "the exported model's activations") -> str:
    """One line on `near_range`'s modules: the largest activation and where, whether beyond `dtype`'s
    range or within `margin` of it, where it starts, and what to export instead (`who`: what was measured)."""
    name = str(dtype).removeprefix("torch.")
    top = torch.finfo(dtype).max
    where, big = max(over, key=lambda o: o[1])
    verdict = (f"beyond {name}'s range (max {top:.6g}): run in {name} it gives inf/NaN" if big > top else
               f"within {1 / margin:g}x of {name}'s max {top:.6g}: other inputs may overflow it (inf/NaN in {name})")
    first = f"; first at {over[0][0]} ({over[0][1]:.3g})" if over[0][0] != where else ""
    return (f"export.dtype {name}: on the held-out inputs {who} reach {big:.3g} at "
            f"{where}, {verdict}{first}; {len(over)} block or linear output(s) in all (report.json export.activation_max): "
            f"export bfloat16 (float32's range) or float32")


def checked_maxima(maxima: dict[str, float], dtype: torch.dtype, blocks: list[str]) -> dict[str, float]:
    """report.json's export.activation_max (per_block) of the recorded `maxima`, with a warning
    (range_words) where `dtype` cannot hold them."""
    over = near_range(maxima, dtype)
    if over:
        from compress.report import warn

        warn(range_words(over, dtype))
    return per_block(maxima, blocks)


def computed_wider_words(out, held: str, computed: str, recorded) -> str | None:
    """eval's note on the output `out` held in `held` (its export.dtype) that it computes in `computed` (the
    recipe's compute_dtype, as the run measured it), where `held` has the narrower range (float16): an
    activation beyond it, inf/NaN run in `held`, stays finite here; the run's largest (`recorded`: report.json
    export.activation_max) where there is one. None where `computed`'s range is no wider."""
    from compress.dtype_range import DTYPES

    if not narrower(DTYPES[held], DTYPES[computed]):
        return None
    top = torch.finfo(DTYPES[held]).max
    text = (f"{out} holds {held} weights, computed here in {computed} (its recipe's compute_dtype, as the run "
            f"measured them): an activation beyond {held}'s range (max {top:.6g}), inf/NaN run in {held}, "
            "does not show in this error")
    if isinstance(recorded, dict) and recorded:
        where, big = max(recorded.items(), key=lambda kv: kv[1])
        text += f"; the run recorded activations up to {big:.3g} ({where}; report.json export.activation_max)"
    return text


# a streamed run measures no exported weights (its export writes the blocks from disk): its last held-out
# check measures the final student, in the compute dtype before the export's rounding (float32 maxima are
# what overflows float16 anyway); the stage keeps what its export reads back, --resume re-exports included
STREAMED = "the last pass's student's activations (its held-out check, before the export's rounding)"


@contextmanager
def recording_if(wanted: bool, model: nn.Module, adapter) -> Iterator[dict[str, float] | None]:
    """recording_maxima's dict where `wanted`, else None (nothing hooked)."""
    if not wanted:
        yield None
        return
    with recording_maxima(model, adapter) as maxima:
        yield maxima


def stage_maxima(maxima: dict[str, float], blocks: list[str]) -> dict:
    """A streamed run's last stage record of its held-out check's `maxima`: per block (report.json's
    export.activation_max) and, by module in the order they ran, those near float16's range (the
    warning's), 4 significant digits."""
    near = near_range(maxima, torch.float16)
    return {"activation_max": per_block(maxima, blocks),
            "activation_near_float16": [[name, float(f"{value:.4g}")] for name, value in near]}


def streamed_maxima(stage: dict, dtype: torch.dtype) -> dict:
    """report.json export's activation_max of a streamed run, read from its last `stage` record
    (stage_maxima), with range_words' warning where `dtype` cannot hold them; {} where the stage has
    none (a stage measured before they were recorded: said where `dtype` is float16, unmeasured_words)."""
    if "activation_max" not in stage:
        if narrower(dtype, torch.float32):
            from compress.report import warn

            warn(unmeasured_words(dtype))
        return {}
    over = near_range(dict(stage.get("activation_near_float16", [])), dtype)
    if over:
        from compress.report import warn

        warn(range_words(over, dtype, who=STREAMED))
    return {"activation_max": stage["activation_max"]}


def unmeasured_words(dtype: torch.dtype) -> str:
    """What a streamed export in `dtype` (float16) says of a last stage saved before stages recorded their
    maxima (667c647; a --resume that only changes export.dtype): nothing measured, so nothing checked. The
    run's earlier stages are gone (a streamed run keeps its last), so measuring them means running again."""
    name = str(dtype).removeprefix("torch.")
    return (f"export.dtype {name}: the activations of this output were not measured (its last stage was saved "
            f"before runs recorded them): {name}'s range is unchecked; run it again with --restart to measure "
            "them (report.json export.activation_max), or export bfloat16 (float32's range)")


def loaded_range_words(out, report: dict, dtype: torch.dtype) -> str | None:
    """What load_transformer / load_pipeline say of the output `out` loaded in `dtype` where its run's
    report.json (`report`) records in export.activation_max a block or top-level linear whose largest
    |activation| `dtype` cannot hold (float16 past 65504: a forward gives inf/NaN): the largest, where,
    how many, and the dtypes to load it in. None where `dtype` has float32's range or none is beyond."""
    maxima = (report.get("export") or {}).get("activation_max") if isinstance(report, dict) else None
    if not isinstance(maxima, dict) or not narrower(dtype, torch.float32):
        return None
    top = torch.finfo(dtype).max
    over = [(name, v) for name, v in maxima.items() if isinstance(v, (int, float)) and v > top]  # (module, max)
    if not over:
        return None
    name = str(dtype).removeprefix("torch.")
    where, big = max(over, key=lambda o: o[1])
    more = f" ({len(over)} blocks or layers in all)" if len(over) > 1 else ""
    return (f"{out}: loaded in {name}, but its run recorded activations up to {big:.3g} at {where}{more}, beyond "
            f"{name}'s range (max {top:.6g}; report.json export.activation_max): a forward in {name} gives "
            "inf/NaN; load it with torch_dtype=torch.bfloat16 (float32's range) or torch.float32")


def warn_loaded_range(out, folder, dtype: torch.dtype) -> None:
    """loaded_range_words' warning for the output `out` (its folder `folder`, or the pipeline folder above
    it: its report.json) loaded in `dtype`; reads report.json alone (report.read_report, as the commands read
    it), and only for a float16-like dtype. A report that cannot be read, or one read_report refuses as
    damaged, says nothing here (the commands that read it say so)."""
    if not narrower(dtype, torch.float32):
        return
    from pathlib import Path

    from compress.errors import UserError
    from compress.report import read_report, warn

    for place in dict.fromkeys([Path(folder), Path(out).expanduser()]):
        if (place / "report.json").is_file():
            try:
                text = loaded_range_words(out, read_report(place), dtype)
            except UserError:
                return
            if text is not None:
                warn(text)
            return
