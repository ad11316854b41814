"""LoRAs trained on the teacher, merged exactly into a compressed student.

diffusers applies a LoRA by wrapping `nn.Linear` modules in peft layers, and peft refuses our
`LowRankLinear`, so `load_lora_weights` cannot take a student. `merge_lora` adds each LoRA's
ΔW = s·B A (B (out, r'), A (r', in), s its scaling) into the student instead (one layer's merge:
compress.lora_merge):
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
source (`teacher`, else the one the student recorded), classified once (io_source_config.checked), read alone
from a diffusers folder, a toy or a Hub id (its config and safetensors index, then only the shards
holding those layers; a note says so); a single-file teacher, or any teacher of a student that took
LoRAs before (the DoRA was trained on the teacher with them), is loaded as eval loads it
(compress.io_teacher_of.load_teacher_of). A model without a compression record is a teacher: its own weights. A
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

from torch import nn

from compress.arch import get_adapter
from compress.errors import UserError
from compress.io_export import unwrapped
from compress.lora_keys import STATE_DICT, in_blocks
from compress.lora_merge import before_taking, merged_layer, put_back, take_layer
from compress.lora_read import label, read_lora
from compress.lora_teacher import LoraBase, check_given, dora_weights, lora_base, naming_moved, note_unread, noted_moved


def merge_lora(student: nn.Module, lora, scale: float = 1.0, teacher: nn.Module | str | None = None,
               teacher_config: str | None = None, *, own_blocks: bool = False, blocks: dict | None = None,
               blocks_of: str | None = None) -> dict:
    """Merge `lora` (a file, a folder or a state dict; see the module docstring) into `student` (from
    `load_transformer`, or a teacher) in place, times `scale`. `teacher`: where a DoRA's norms come from (a
    model or a source; default: the base the student's chain of teachers leads to, lora_teacher.lora_base),
    read only for a DoRA (given for a plain LoRA: a note says so; a local one not there: a UserError
    whatever the LoRA; given for a DoRA of a block module: refused where its block counts are not those of
    the model the LoRA's blocks are read as, the base as the chain records it or the student's teacher (there
    or not) as the student does, lora_replay_moved.given_numbered_otherwise: exactly where its compression
    record keeps them, teacher_blocks, else its block map's "at least"; a DoRA of none, lora_keys.in_blocks, is not);
    `teacher_config`: a single-file teacher's config (as --teacher-config). Returns {"merged": how many modules took it,
    "rank_added": {module: r'} of the low-rank ones, "dropped": base modules of removed blocks,
    "not_merged": text-encoder modules of the LoRA, "densified": low-rank modules stored dense, their grown
    rank past break-even, "blocks_of": the base whose blocks the LoRA's were read as (None for a teacher, or
    a student recording none), "moved": the student's own teacher, not there now, read as the base
    (LoraBase.moved), where it was noted (lora_teacher.noted_moved: not where `teacher` is given and is no
    output; else None)}; a LoRA none of whose layers the student has is refused. The student's config
    records the new ranks, so saving it again keeps them. All or nothing: each layer is merged and checked
    before any is taken, and again as it is taken (twice the merge's compute, never all merged layers held
    at once); an error or interrupt (Ctrl-C) while they are taken puts back those taken (each held as it
    was until the merge ends) and the record.
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
    if in_blocks(adapter, dora) and given is not None and base.source and not own_blocks:  # norms of its blocks,
        from compress.lora_replay_moved import given_numbered_otherwise  # numbered as the base's (none: no check)

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
    added, densified = _take_all(student, kept, layers, scale, weights, lora, base.source)
    _say(text_encoder, base.chain)
    return {"merged": len(kept), "rank_added": added, "dropped": [n for n, t in targets.items() if t is None],
            "not_merged": text_encoder, "densified": densified, "blocks_of": base.source, "moved": base.moved}


def _take_all(student: nn.Module, kept: dict[str, str], layers: dict, scale: float, weights: dict, lora,
              blocks_of: str | None) -> tuple[dict[str, int], list[str]]:
    """merge_lora's merge of the LoRA's `layers` into `student`'s modules (`kept`: {layer: the student's
    module}; `weights`: a DoRA layer's teacher weight), all or nothing: every layer merged and checked
    first, one at a time, before the student takes any; then merged again and taken, one merged layer held
    at a time, and the merge recorded (_record; `blocks_of`: the base its blocks were read as). An error or
    Ctrl-C while taking puts back the layers taken and the record. ({module: rank added} of the low-rank
    ones, [modules stored dense])."""
    for name, target in kept.items():
        merged_layer(student, target, layers[name], scale, weights.get(name))
    added, densified, taken = {}, [], []
    meta = getattr(student, "compression_meta", None)
    before = (dict(meta) if meta is not None else None, getattr(student, "_internal_dict", None))
    try:
        for name, target in kept.items():
            module, merged = merged_layer(student, target, layers[name], scale, weights.get(name))
            taken.append(before_taking(student, target, module, merged))
            take_layer(student, target, module, merged)
            if "rank" in merged:
                added[target] = merged["rank"]
            if "linear" in merged:
                densified.append(target)
        _record(student, lora, scale, len(kept), blocks_of)
    except BaseException:  # an error or Ctrl-C while taking: the student as it was, its record too
        put_back(student, taken)
        _restore_record(student, *before)
        raise
    return added, densified


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
    from compress.io_source import check_source
    from compress.io_source_config import TeacherSource

    try:
        found = TeacherSource(source, check_source(source), config or (None if teacher else meta.get("teacher_config")),
                              hub=False, planned=False).config.get(group.config_key)
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


def _source(lora) -> str:
    """What the student's config records of the LoRA: an absolute path where it is local (eval finds
    it again from any folder), else the Hub id, or that it was a state dict."""
    from compress.io_source import looks_local

    if isinstance(lora, dict):
        return STATE_DICT
    return str(Path(str(lora)).expanduser().resolve()) if looks_local(str(lora)) else str(lora)


def _restore_record(student: nn.Module, meta: dict | None, config) -> None:
    """The student's compression_meta and diffusers config as they were before `_record` (`merge_lora`)."""
    if meta is not None:
        student.compression_meta.clear()
        student.compression_meta.update(meta)
    if config is not None:
        student._internal_dict = config  # a FrozenDict: register_to_config replaces it, never changes it


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
