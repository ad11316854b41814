"""`distill.kd_teacher`: which teacher a distill pass distills toward. `teacher` (the default): the
recipe's teacher. `base`: where the recipe's teacher is itself a dit-compress output (chained,
progressive compression), the first teacher of its chain of outputs (report_teacher.teacher_chain: the
model the first run read), loaded as eval and bench load an output's recorded teacher
(report_teacher.teacher_to_load, io_teacher_of.load_teacher_of), the student's blocks mapped to the base's through
every link's block map (lora_teacher.lora_base, composed_block_map). The pass's held-out errors are
then against that base (its report record's `kd_teacher` names it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from compress.errors import BadValue, UserError

OUT = "leave kd_teacher out to distill toward the recipe's teacher"
PUT_BACK = "put the original back to distill toward that"


@dataclass
class KdTarget:
    """The teacher a distill pass distills toward in place of the recipe's (kd_teacher: base)."""
    teacher: nn.Module  # the chain's base, frozen
    block_map: dict[str, list[int]]  # {group: [base block of student block 0, 1, ...]}; a group absent: all kept
    source: str  # the base, as the chain records it
    chain: list[str]  # the recipe's teacher's recorded teacher, ... to the base


def _refused(message: str) -> BadValue:
    return BadValue("kd_teacher", f"distill.kd_teacher: base {message}", reads=())


def base_chain(teacher: nn.Module) -> list[str]:
    """The chain of teachers (report_teacher.teacher_chain) the recipe's teacher `teacher` records, its
    last the base; a BadValue at kd_teacher where the teacher is no dit-compress output (it is its own
    base) or the chain cannot be followed to its base (an output along it, or the base, moved away; an
    output recording no teacher; a loop), or an output along it took a LoRA (_refuse_lora_along)."""
    from compress.report_teacher import broken_chain, chain_break, teacher_chain

    meta = getattr(teacher, "compression_meta", None)
    recorded = meta.get("teacher") if isinstance(meta, dict) else None
    if not isinstance(recorded, str) or not recorded:
        what = "records no teacher" if isinstance(meta, dict) else "is no dit-compress output (it is its own base)"
        raise _refused(f"distills toward the first teacher of the chain of outputs the recipe's teacher was "
                       f"compressed from, and the recipe's teacher {what}: {OUT}")
    chain = teacher_chain(recorded)
    if chain_break(chain) is not None:
        broken = broken_chain("the recipe's teacher", chain)
        raise _refused(f"cannot find the chain's base: {broken}; put it back where it was recorded, or {OUT}")
    _refuse_lora_along(chain[:-1])
    return chain


def _refuse_lora_along(outputs: list[str]) -> None:
    """A BadValue at kd_teacher where an output along the chain (not the recipe's teacher, whose LoRAs
    load_teacher_of replays onto the base) took a LoRA (dit-compress lora; its config.json's compression
    section records it, as io_teacher_of.load_teacher_of reads it): the base holds none of it, and the LoRA would be
    silently lost from the target."""
    from compress.report_teacher import recorded_loras

    for out in outputs:
        loras = recorded_loras(Path(out))
        if loras:
            named = ", ".join(str(r.get("source")) if isinstance(r, dict) else str(r) for r in loras)
            raise _refused(f"cannot distill toward the chain's base through {out}, which took the LoRA {named} "
                           f"(dit-compress lora): the base holds none of it and kd_teacher: base does not "
                           f"merge a LoRA taken along the chain; {OUT}")


def kd_words(teacher: nn.Module) -> str:
    """What `plan` says of kd_teacher: base: 'base SOURCE (through A, B)'."""
    chain = base_chain(teacher)
    return f"base {chain[-1]}" + (f" (through {', '.join(chain[:-1])})" if len(chain) > 1 else "")


def kd_target(teacher: nn.Module, block_map: dict | None, student: nn.Module | None = None,
              teacher_samples: bool = False) -> KdTarget:
    """The chain's base (base_chain) loaded as eval and bench load an output's recorded teacher, in the
    recipe teacher's dtype and of its family and widths, and the student's block map to it: `block_map`
    (the student's to the recipe's teacher: RunContext.block_map) composed with the teacher's own to the
    base. A base without a block those maps name (replaced since), or whose blocks the student's (`student`,
    where given) do not fit as distill_utils.resolve_block_map reads them, is refused: the student's blocks
    would be compared with other blocks (and no lambda makes the trainer take it). The base is held beside the recipe's
    teacher (which the run keeps for its stage errors) while the pass runs. `teacher_samples`: the pass
    trains on teacher samples (data: teacher_samples), still the recipe's teacher's: its note says so."""
    from compress.io_teacher_of import load_teacher_of
    from compress.lora_teacher import composed_block_map, lora_base
    from compress.report import note
    from compress.report_teacher import teacher_to_load, warn_if_recorded_changed, warn_if_teacher_changed

    chain = base_chain(teacher)
    try:
        if len(chain) > 1:  # the output compressed straight from the base records it, as eval reads it
            source, config = teacher_to_load(Path(chain[-2]).expanduser())
            warn_if_teacher_changed(Path(chain[-2]).expanduser(), source, "distill", PUT_BACK)
        else:  # the recipe's teacher was: as it records it
            source, config = chain[0], teacher.compression_meta.get("teacher_config")
            warn_if_recorded_changed(teacher.compression_meta, "the recipe's teacher", source, "distill", PUT_BACK)
        base = load_teacher_of(teacher, source, config, dtype=next(teacher.parameters()).dtype,
                               advice=f"put back the base the chain was compressed from, or {OUT}")
        to_base = composed_block_map([block_map, lora_base(teacher).block_map], ["the student", "the recipe's teacher"])
    except BadValue:
        raise
    except UserError as e:
        raise _refused(f"(the chain's base {chain[-1]}): {e}") from None
    base.requires_grad_(False)
    _check_blocks(base, to_base, chain[-1], student)
    samples = ("; the teacher samples it trains on (data: teacher_samples) are still the recipe's teacher's"
               if teacher_samples else "")
    note(f"distill: distilling toward the chain's base {chain[-1]} (kd_teacher: base), not the recipe's teacher: "
         f"the pass's held-out teacher-relative errors and KD terms are against that base{samples}")
    return KdTarget(base, to_base, chain[-1], chain)


def _check_blocks(base: nn.Module, to_base: dict, source: str, student: nn.Module | None) -> None:
    """A BadValue where a student block maps to a block the base `source` does not have, or (`student`
    given) the student's blocks do not fit the base's as the trainer's resolve_block_map reads them."""
    from compress.arch import get_adapter
    from compress.distill_utils import block_beyond, resolve_block_map

    adapter = get_adapter(base)
    counts = adapter.block_counts(base)
    wrong = f"it is not the model the chain was compressed from; put that back, or {OUT}"
    if (past := block_beyond(to_base, counts)) is not None:  # resolve_block_map's rule, in words of the base
        group = past[0]
        raise _refused(f"compares the student's '{group}' blocks with the base's blocks they descend from, and "
                       f"the chain's base {source} {_has_not(counts.get(group, 0), to_base[group])}: {wrong}")
    if student is not None:
        try:
            resolve_block_map(adapter, student, base, to_base)
        except UserError as e:
            raise _refused(f"(the chain's base {source}) does not fit the student's blocks ({e}): {wrong}") from None


def _has_not(count: int, mapping: list[int]) -> str:
    """What a base of `count` blocks of a group has, and which of the blocks `mapping` names it has not:
    'has 2 of them (0..1), so no block 2 or 3'; 'has none of them, so no block 0'."""
    past = list(dict.fromkeys(i for i in mapping if not 0 <= i < count))
    named = ", ".join(map(str, past[:-1])) + " or " + str(past[-1]) if len(past) > 1 else str(past[0])
    has = {0: "has none of them", 1: "has 1 of them (block 0)"}.get(count, f"has {count} of them (0..{count - 1})")
    return f"{has}, so no block {named}"
