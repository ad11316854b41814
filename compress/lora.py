"""LoRAs trained on the teacher, merged exactly into a compressed student.

diffusers applies a LoRA by wrapping `nn.Linear` modules in peft layers, and peft refuses our
`LowRankLinear`, so `load_lora_weights` cannot take a student. `merge_lora` adds each LoRA's
ΔW = s·B A (B (out, r'), A (r', in), s its scaling) into the student instead:
- a LowRankLinear (up (out, r), down (r, in)) grows to rank r + r': down' = [down; A], up' = [up, s·B],
  so up'·down' = up·down + s·B A exactly, with no refactorization (a fused GELU stays outside the sum);
  where r + r' would reach the break-even rank out·in / (out + in) (more parameters than dense, and
  past min(out, in) a rank no output may hold), the layer is stored dense instead: W = up·down + s·B A
  (a fused GELU applied again by diffusers' own activation module; reported as "densified");
- a dense linear: W += s·B A.
A bias on lora_B (peft `lora_bias=True`: y += s·(B A x + b_B)) adds s·b_B to the layer's bias (peft
itself cannot merge one into a layer without a bias, nor could a saved student hold it: an error).

DoRA (peft `use_dora=True`) computes W' = diag(m / n) (W + s·B A), n the row norms ‖W + s·B A‖ (peft's
`get_weight_norm`, dim=1, detached, recomputed at each forward from the weight the adapter wraps), the
bias untouched. A row scaling merges exactly: a dense W' as written, a LowRankLinear as up' = diag(m/n)
[up, s·B], down' = [down; A]. n is taken from the TEACHER's W + s·B A, the weight the DoRA was trained
on, so the student's layer changes exactly as the teacher's does (its compression error is scaled by
the same m/n, ≈ 1); the student's own W_lowrank + s·B A would give other norms, so other outputs. The
teacher's weights of the adapted layers are taken from `teacher` (a loaded model), else from a teacher
source (`teacher`, else the one the student recorded), classified once (io_source.checked), read alone
from a diffusers folder, a toy or a Hub id (its config and safetensors index, then only the shards
holding those layers; a note says so); a single-file teacher, or any teacher of a student that took
LoRAs before (the DoRA was trained on the teacher with them), is loaded as eval loads it
(compress.io.load_teacher_of). A model without a compression record is a teacher: its own weights. A
dit-compress output (a folder, a Hub id or a model with a compression record) is no DoRA teacher: its
weights are factorized, not the teacher's (compress.lora_teacher reads the teacher's weights, or refuses).

How the LoRA is read (its format, each module's scaling, text-encoder weights it also holds, which are
reported and not merged) is compress.lora_read; what it refuses in a LoRA's keys, compress.lora_keys.
Block indices are the base's, the model the LoRA was trained on: the student's teacher, or where that is
itself an output the first teacher of the chain it leads to (report_teacher.teacher_chain); they are mapped
to the student's through the block map of every link (compress.lora_teacher.lora_base: a chain that
cannot be followed is refused), and a LoRA's weights for blocks removed anywhere along it are dropped
(reported). Needs peft (the `lora` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.arch import get_adapter
from compress.errors import NumericError, UserError
from compress.io_export import unwrapped
from compress.lora_keys import STATE_DICT
from compress.lora_read import LoraLayer, label, read_lora
from compress.lora_teacher import LoraBase, check_given, dora_weights, lora_base, naming_moved, note_unread, noted_moved
from compress.lowrank import LowRankLinear


def merge_lora(student: nn.Module, lora, scale: float = 1.0, teacher: nn.Module | str | None = None,
               teacher_config: str | None = None, *, own_blocks: bool = False, blocks: dict | None = None,
               blocks_of: str | None = None) -> dict:
    """Merge `lora` (a file, a folder or a state dict; see the module docstring) into `student` (from
    `load_transformer`, or a teacher) in place, times `scale`. `teacher`: where a DoRA's norms come from (a
    model or a source; default: the base the student's chain of teachers leads to, lora_teacher.lora_base),
    read only for a DoRA (given for a plain LoRA: a note says so; a local one not there: a UserError
    whatever the LoRA; given for a DoRA: refused where its block counts are not those of the model the
    LoRA's blocks are read as, the base as the chain records it or the student's teacher (there or not) as
    the student does, lora_replay_moved.given_numbered_otherwise: exactly where its compression record keeps
    them, teacher_blocks, else its block map's "at least");
    `teacher_config`: a single-file teacher's config (as --teacher-config). Returns {"merged": modules,
    "rank_added": {module: r'} of the low-rank ones, "dropped": base modules of removed blocks,
    "not_merged": text-encoder modules of the LoRA, "densified": low-rank modules stored dense, their grown
    rank past break-even, "blocks_of": the base whose blocks the LoRA's were read as (None for a teacher, or
    a student recording none), "moved": the student's own teacher, not there now, read as the base
    (LoraBase.moved), where it was noted (lora_teacher.noted_moved: not where `teacher` is given and is no
    output; else None)}; a LoRA none of whose layers the student has is refused. The student's config
    records the new ranks, so saving it again keeps them. All or nothing: each layer is merged and checked
    before any is taken, and again as it is taken (twice the merge's compute, never all merged layers held
    at once).
    `own_blocks`: the LoRA's block i is the model's own block i, with no block map (lora_replay: a LoRA
    read as the model's own blocks, or recorded before records named the base, read then as the recording
    output's teacher's). `blocks`: as own_blocks, the model's block i taking the LoRA's block
    blocks[group][i] (-1: none; lora_replay's LoRA read as another output's blocks, mapped to the model's
    through their base). Either way, where no `teacher` is given, a DoRA's norms are those of the weight
    it was trained on top of: the model's block i is the LoRA's block it takes, whose weight is that of
    the base block it descends from (in_base, through the model's chain: lora_base), read from that base
    (its immediate teacher, on a chain an output, is refused as a DoRA's teacher); so two teachers of one
    base given the same LoRA give each base block's modules the same weights. `blocks_of`: the
    model the LoRA's blocks are of, whose block counts a LoRA block past the map's last is checked
    against (check_teacher_count), not those of the model's own teacher."""
    check_scale(scale)
    check_given(teacher)  # a --teacher that is not there: an error, whether or not the LoRA reads it
    given = teacher
    student = unwrapped(student)  # a torch.compile'd student: the model it wraps, merged in place
    adapter = get_adapter(student)
    own_blocks = own_blocks or blocks is not None
    base = LoraBase(blocks or {}, blocks_of, None, []) if own_blocks else lora_base(student)  # the chain's base's
    moved = base.moved  # the LoRA's blocks read as those of the student's teacher, not there now
    base = base._replace(moved=noted_moved(base.moved, teacher))  # said once, where putting it back would help
    if teacher is None:  # the base (its config as recorded) for a DoRA's norms and the base's block counts
        teacher, teacher_config = base.source, teacher_config or base.config
    layers, text_encoder, targets = _read_against(student, adapter, lora, base, teacher, teacher_config)
    kept = {name: target for name, target in targets.items() if target is not None}
    if not kept:
        whose = f"the base model {base.source}'s" if base.source else "the base model's"  # as check_blocks says
        none, where, more = ("its 1 layer is not", "in a removed block", "") if len(layers) == 1 else \
            (f"none of its {len(layers)} layers is", "all in removed blocks", " …")
        raise UserError(f"{label(lora)}: {none} in a block the student kept ({where}, or past {whose} last: "
                        f"{sorted(layers)[0]}{more}); merging it would change nothing")
    dora = [name for name in kept if layers[name].magnitude is not None]
    if dora and given is not None and base.source and not own_blocks:  # norms of its blocks, numbered as the base's
        from compress.lora_replay_moved import given_numbered_otherwise

        if (refused := given_numbered_otherwise(student, given, teacher_config, base, moved)):
            raise refused
    of = {name: name for name in dora}  # the DoRA layer's name in the model its norms are read from
    if dora and own_blocks and given is None:  # norms of the base blocks the student's descend from
        chain_base = lora_base(student)
        teacher, teacher_config = chain_base.source, teacher_config or chain_base.config
        of = {name: in_base(adapter, kept[name], chain_base.block_map) for name in dora}
    read = dora_weights(student, {of[name]: kept[name] for name in dora}, teacher, teacher_config) if dora else {}
    weights = {name: read[of[name]] for name in dora}
    if given is not None and not dora:
        note_unread(given)
    for name, target in kept.items():  # all or nothing: every layer merged and checked first, one at a
        _merged(student, target, layers[name], scale, weights.get(name))  # time, before the student takes any
    added, densified = {}, []
    for name, target in kept.items():  # then merged again and taken: one merged layer held at a time
        module, merged = _merged(student, target, layers[name], scale, weights.get(name))
        _take(student, target, module, merged)
        if "rank" in merged:
            added[target] = merged["rank"]
        if "linear" in merged:
            densified.append(target)
    _say(text_encoder, base.chain)
    _record(student, lora, scale, len(kept), base.source)
    return {"merged": len(kept), "rank_added": added, "dropped": [n for n, t in targets.items() if t is None],
            "not_merged": text_encoder, "densified": densified, "blocks_of": base.source, "moved": base.moved}


def in_base(adapter, target: str, block_map: dict) -> str:
    """The model's module `target` ("transformer_blocks.3.attn1.to_q") named as in its base: block i of
    a group with a block map (lora_teacher.LoraBase.block_map) is the base's block block_map[group][i]."""
    for g in adapter.groups:
        head = f"{g.attr}."
        index, _, rest = target[len(head):].partition(".")
        if target.startswith(head) and index.isdigit() and g.name in block_map:
            return f"{head}{block_map[g.name][int(index)]}.{rest}"
    return target


def _read_against(student: nn.Module, adapter, lora, base: LoraBase, teacher, teacher_config: str | None):
    """(the LoRA's layers, its text-encoder modules, {layer: the student's module, None in a removed
    block}) read against `base`'s blocks, its blocks checked against the base's counts; where those
    are a moved teacher's, noted (LoraBase.moved), a block past them says so (lora_teacher.naming_moved)."""
    with naming_moved(base.moved):
        layers, text_encoder = read_lora(student, adapter, lora, base.block_map, base.source)
        targets = {name: adapter.renumbered(name, base.block_map) for name in layers}  # the base's -> the student's
        check_teacher_count(student, adapter, base, [n for n, t in targets.items() if t is None], label(lora),
                            teacher, teacher_config)
    return layers, text_encoder, targets


def _say(text_encoder: list[str], chain: list[str]) -> None:
    """Notes: the LoRA's text-encoder modules, not merged; the base its blocks were read as, where the
    student's teacher is itself an output (`chain`: lora_teacher.LoraBase.chain)."""
    from compress.report import note

    if text_encoder:
        modules = f"{len(text_encoder)} text-encoder module{'s' if len(text_encoder) != 1 else ''}"
        note(f"{modules} not merged: the student is the transformer only")
    if len(chain) > 1:
        note(f"the LoRA's blocks read as those of {chain[-1]}: {chain[0]} was compressed from "
             f"{', compressed from '.join(chain[1:])}")


def check_teacher_count(student: nn.Module, adapter, base: LoraBase, dropped: list[str], where: str,
                        teacher=None, teacher_config: str | None = None) -> None:
    """A UserError (lora_keys.check_blocks) where a LoRA module counted as in a removed block is past
    the last block of a group with a block map, in a block the model the LoRA's blocks are read as never
    had: its block count, which the block map does not record (a removed last block). For a student's
    own chain (`base`: lora_teacher.LoraBase), the counts it reads its blocks as
    (lora_replay_moved.read_as_counts, exact ones only: the chain's base as the chain records it, else the
    student's teacher as its compression record keeps it, else either's config read offline), never a
    given teacher's, whose weights a plain LoRA does not read; for a LoRA read as the model's own blocks
    (own_blocks, blocks: lora_replay), the count of `teacher` (a model), else of the config of the source
    given or recorded. The error names the model the count is of."""
    from compress.lora_keys import blocks_named, check_blocks

    bounds = None
    for g in adapter.groups:
        kept = base.block_map.get(g.name)
        past = blocks_named(g.attr, dropped)
        if not kept or not past or max(past) <= max(kept):
            continue
        bounds = bounds if bounds is not None else _bounds(student, adapter, base, teacher, teacher_config)
        count, of = bounds[g.name]
        if count is not None:
            check_blocks(g.attr, count, past, where, of)


def _bounds(student: nn.Module, adapter, base: LoraBase, teacher, config: str | None) -> dict:
    """{group: (the block count check_teacher_count bounds a LoRA's blocks by, None: not known exactly;
    the model it is of, None: unnamed: the teacher given, where that model is not there now, is named as
    where the user says it is)}."""
    if base.chain:
        from compress.lora_replay_moved import read_as_counts
        from compress.lora_teacher import missing

        of = teacher if isinstance(teacher, str) and missing(base.source) else base.source
        return {g: (count if exact else None, of) for g, (count, exact) in read_as_counts(student, base).items()}
    return {g.name: (teacher_count(student, g, teacher, config), teacher if isinstance(teacher, str) else None)
            for g in adapter.groups}


def teacher_count(student: nn.Module, group, teacher, config: str | None) -> int | None:
    """The teacher's number of `group` blocks (None where no teacher's config is at hand offline)."""
    if isinstance(teacher, nn.Module):
        blocks = getattr(teacher, group.attr, None)
        return len(blocks) if blocks is not None else None
    meta = getattr(student, "compression_meta", None) or {}
    source = str(teacher or meta.get("teacher") or "")
    if not source:
        return None
    from compress.io_source import TeacherSource, check_source

    try:
        found = TeacherSource(source, check_source(source), config or (None if teacher else meta.get("teacher_config")),
                              hub=False).config.get(group.config_key)
    except Exception:  # noqa: BLE001 (a teacher moved, a Hub id offline, a damaged config: nothing known)
        return None
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def check_scale(scale) -> None:
    """A scale that merges something: finite (NaN or Inf gives NaN/Inf weights) and not 0 (which
    would grow every adapted low-rank layer by the LoRA's rank for nothing); a one-line UserError."""
    import math
    import numbers

    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise UserError(f"the LoRA's scale must be a finite number, got {scale!r}")
    if scale == 0:
        raise UserError("a scale of 0 merges nothing")


def check_merged(name: str, tensors: dict) -> None:
    """The merged layer `name`'s tensors ({what: tensor}) are finite, as stored; a NumericError naming
    the layer otherwise (a large scale overflows the weights' dtype), before the student takes them."""
    from compress.io_tensors import nonfinite

    for what, t in tensors.items():
        bad = 0 if t is None else nonfinite(t)
        if bad:
            raise NumericError(f"merging the LoRA into '{name}' gives its {what} {bad} NaN/Inf values "
                               f"({t.dtype}); use a smaller scale")


def dora_rows(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's row scale m / ‖W + up·down‖_row (out,): W (out, in) the weight the DoRA was trained on,
    up (out, r') already times s, down (r', in), m (out,)."""
    return magnitude / torch.linalg.norm(weight.to(up.dtype) + up @ down, dim=1)


def grown_factors(up: torch.Tensor, down: torch.Tensor, lora_up: torch.Tensor, lora_down: torch.Tensor,
                  rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up' (out, r + r'), down' (r + r', in)) with up'·down' = diag(rows) (up·down + lora_up·lora_down)."""
    new_up = torch.cat([up, lora_up], 1)
    return (new_up if rows is None else rows[:, None] * new_up), torch.cat([down, lora_down], 0)


def past_break_even(rank: int, out_f: int, in_f: int) -> bool:
    """Whether factors of `rank` hold at least as many weights as the dense (out, in) matrix:
    rank·(out + in) ≥ out·in, biases aside (always so from min(out, in) on, a rank no output may
    hold); linalg_params.saves_params's break-even, which the svd pass keeps dense at too."""
    from compress.linalg_params import saves_params

    return not saves_params(out_f, in_f, rank)


def dense_merged(weight: torch.Tensor, lora_up: torch.Tensor, lora_down: torch.Tensor,
                 rows: torch.Tensor | None) -> torch.Tensor:
    """diag(rows) (W + lora_up·lora_down) (out, in); rows None: no scaling."""
    merged = weight + lora_up @ lora_down
    return merged if rows is None else rows[:, None] * merged


def _source(lora) -> str:
    """What the student's config records of the LoRA: an absolute path where it is local (eval finds
    it again from any folder), else the Hub id, or that it was a state dict."""
    from compress.io import looks_local

    if isinstance(lora, dict):
        return STATE_DICT
    return str(Path(str(lora)).expanduser().resolve()) if looks_local(str(lora)) else str(lora)


def _merged(student: nn.Module, name: str, layer: LoraLayer, scale: float, weight: torch.Tensor | None):
    """(the student's module `name`, what merging `layer` times `scale` makes of it, checked finite:
    {"module": a grown LowRankLinear, "rank": the rank it adds}, {"linear": an nn.Linear holding a
    LowRankLinear grown past break-even dense (past_break_even, _dense_layer)} or, for a dense
    linear, {"weight": (out, in), "bias": (out,) or None}); `weight`: the teacher's, for a DoRA's
    norms. The student is not changed (`_take`)."""
    try:
        module = student.get_submodule(name)
    except AttributeError:
        raise UserError(f"the LoRA adapts '{name}', which the student does not have") from None
    if not isinstance(module, (LowRankLinear, nn.Linear)):
        raise UserError(f"the LoRA adapts '{name}', a {type(module).__name__}, not a linear layer")
    s = layer.scaling * scale
    if layer.bias is not None and module.bias is None:
        raise UserError(f"the LoRA has a bias on lora_B for '{name}', a layer without a bias (neither peft nor "
                        "a saved student can merge it)")
    device = module.bias.device if module.bias is not None else next(module.parameters()).device
    work = torch.promote_types(next(module.parameters()).dtype, torch.float32)  # a float64 model's in float64
    up, down = (layer.up.to(work) * s).to(device), layer.down.to(device, work)  # (out, r'), (r', in)
    rows = None if layer.magnitude is None else dora_rows(weight.to(device), down, up,
                                                          layer.magnitude.to(device, work))
    bias = None if module.bias is None else module.bias.detach().to(work) + \
        (0 if layer.bias is None else s * layer.bias.to(device, work))
    if isinstance(module, LowRankLinear) and past_break_even(module.rank + down.shape[0], module.out_features,
                                                                 module.in_features):
        return module, {"linear": _dense_layer(name, module, up, down, rows, bias)}
    if isinstance(module, LowRankLinear):
        new_up, new_down = grown_factors(module.up.weight.detach().to(work), module.down.weight.detach().to(work),
                                         up, down, rows)
        new = LowRankLinear.from_factors(new_up, new_down, bias, dtype=module.up.weight.dtype)
        check_merged(name, {"up": new.up.weight, "down": new.down.weight, "bias": new.bias})
        new.activation, new.use_kernel = module.activation, module.use_kernel
        return module, {"module": new, "rank": down.shape[0]}
    merged = dense_merged(module.weight.to(work), up, down, rows).to(module.weight.dtype)
    bias = None if bias is None else bias.to(module.bias.dtype)
    check_merged(name, {"weight": merged, "bias": bias})
    return module, {"weight": merged, "bias": bias}


def _dense_layer(name: str, module: LowRankLinear, up: torch.Tensor, down: torch.Tensor,
                 rows: torch.Tensor | None, bias: torch.Tensor | None) -> nn.Linear:
    """The nn.Linear holding diag(rows) (module's up·down + up·down) (out, in) and `bias` in the
    module's dtype, checked finite: a grown LowRankLinear past break-even, stored dense."""
    dtype = module.up.weight.dtype
    weight = dense_merged(module.up.weight.detach().to(up.dtype) @ module.down.weight.detach().to(up.dtype), up, down,
                          rows)
    with torch.device("meta"):  # its parameters are set at once: never initialized
        layer = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
    layer.weight = nn.Parameter(weight.to(dtype))
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype))
    check_merged(name, {"weight": layer.weight, "bias": layer.bias})
    return layer


def _take(student: nn.Module, name: str, module: nn.Module, merged: dict) -> None:
    """The student's `module` (at `name`) replaced by, or given, what `_merged` made of it."""
    if "module" in merged:
        student.set_submodule(name, merged["module"])
    elif "linear" in merged:
        _set_dense(student, name, module, merged["linear"])
    else:
        with torch.no_grad():
            module.weight.copy_(merged["weight"])
            if merged["bias"] is not None:
                module.bias.copy_(merged["bias"])


def _set_dense(student: nn.Module, name: str, module: LowRankLinear, linear: nn.Linear) -> None:
    """`linear` in place of the LowRankLinear `module` at `name`; a tanh-GELU it applied itself (fused,
    compress.fuse) is applied by diffusers' module again (a GELU with `linear` as its proj, or the Flux
    single block's act_mlp), as a load of the saved output builds it (only low-rank layers are fused)."""
    student.set_submodule(name, linear)
    if module.activation is None:
        return
    from diffusers.models.activations import GELU

    from compress.fuse import FusedGELU

    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name)
    if isinstance(parent, FusedGELU):
        with torch.device("meta"):  # its own proj, replaced at once: never allocated
            gelu = GELU(linear.in_features, linear.out_features, approximate="tanh", bias=linear.bias is not None)
        gelu.proj = linear
        student.set_submodule(parent_name, gelu)
    elif attr == "proj_mlp":
        parent.act_mlp = nn.GELU(approximate="tanh")
    else:
        raise RuntimeError(f"'{name}' applies a fused GELU that no module of the model would apply once dense")


def _record(student: nn.Module, lora, scale: float, merged: int, blocks_of: str | None) -> None:
    """Keep the new ranks and the merge in the student's config (what a save writes); `blocks_of`: the
    teacher whose blocks the LoRA's were read as (lora_teacher.lora_base)."""
    from compress.io_output import register_compression

    meta = getattr(student, "compression_meta", None)
    if meta is None:
        return  # a teacher: nothing recorded
    record = {"source": _source(lora), "scale": scale, "modules": merged}
    if blocks_of:
        record["blocks_of"] = blocks_of
    if record["source"] != STATE_DICT:
        from compress.io_signature import lora_signature

        record["signature"] = lora_signature(str(lora))  # --lora's new place is checked against it (replay)
    meta["loras"] = meta.get("loras", []) + [record]
    register_compression(student)
