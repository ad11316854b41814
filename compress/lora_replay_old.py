"""The old-record rule of lora_replay: a LoRA recorded without `blocks_of` (merged before records named
a base: read as blocks of the student's teacher) replayed on another teacher, as its own blocks where
that teacher's are not known to be numbered otherwise, mapped where both descend from one base, else
refused (old_record_elsewhere)."""

from __future__ import annotations

from torch import nn

from compress.errors import UserError
from compress.lora_teacher import LoraBase, missing


def read_as_took(teacher: nn.Module, record: dict, took: str | None, source: str | None,
                 took_files: dict | None, seen: dict | None = None) -> bool | dict:
    """A record without `blocks_of` (merged before records named a base): the LoRA's blocks were read as
    those of the student's teacher `took`. True (own blocks, as before) where the teacher is `took` (its
    path, or its weight files: `took`'s now, else `took_files`), or where neither its blocks nor
    `took`'s are known to be renumbered (or `took` is not there, and nothing tells them apart); mapped
    to the teacher's (mapped_blocks) where both descend from one base (or one teacher not there now,
    both block maps read against it); else a UserError
    (old_record_elsewhere): its block i is not `took`'s block i, or, `took` an output whose chain of
    teachers cannot be followed, is not known to be."""
    from compress.lora_replay import _compared_files, _mapping, _output_base, _teacher_base
    from compress.report_teacher import absolute_source

    if took is None or source is None or absolute_source(source) == absolute_source(str(took)):
        return True
    compared = _compared_files(source, str(took), took_files, seen)  # None: not comparable
    if compared is False:
        return True  # `took` at another place
    ours = _teacher_base(teacher, source)
    try:
        theirs = _output_base(str(took))
    except UserError:  # an output whose chain cannot be followed: its blocks' base is not known
        raise old_record_elsewhere(record, str(took), source, ours, None, unfollowed=str(took)) from None
    if ours is None:  # the teacher's chain cannot be followed: its blocks' base is not known
        raise old_record_elsewhere(record, str(took), source, ours, None, unfollowed=source)
    if theirs is None and not missing(str(took)):
        theirs = LoraBase({}, str(took), None, [])  # there now, no output: a base, its own blocks
    if theirs is None and (compared is None or not _renumbers(ours.block_map)):
        return True  # nothing known to be renumbered, or to be another model: as before
    if theirs is not None and absolute_source(theirs.source) == absolute_source(ours.source):  # one base, or one moved teacher
        return _mapping(teacher, ours.block_map, theirs.block_map)
    if theirs is not None and not _renumbers(ours.block_map) and not _renumbers(theirs.block_map):
        return True
    raise old_record_elsewhere(record, str(took), source, ours, theirs)


def _renumbers(block_map: dict) -> bool:
    """Whether a block map (lora_teacher.LoraBase.block_map) gives a block another index than its base's."""
    return any(kept != list(range(len(kept))) for kept in block_map.values())


def old_record_elsewhere(record: dict, took: str, source: str, ours, theirs, unfollowed: str | None = None) -> UserError:
    """The refusal of a LoRA recorded without `blocks_of` (read as blocks of the student's teacher
    `took`) replayed on another teacher (`source`, its base and block map `ours`) whose blocks are
    numbered otherwise, or may be (`theirs`: `took`'s, None where not known; `unfollowed`: `took` or
    `source`, where it is an output whose chain of teachers cannot be followed)."""
    if unfollowed is not None:
        whose = "its" if unfollowed == took else "the teacher's"
        return UserError(f"{_old_record(record, took)}, but the teacher to compare with, {source}, may have its blocks "
                         f"numbered otherwise ({unfollowed} is a dit-compress output whose chain of teachers cannot be "
                         f"followed now, to map them): compare with the model's own teacher {took}, or put back the "
                         f"teachers of {whose} chain")
    if theirs is None:
        why = f"{took} is not there now, or its chain of teachers cannot be followed, to map them"
    else:
        why = f"{took}'s descend from {theirs.source}, the teacher's from {ours.source}"
    return UserError(f"{_old_record(record, took)}, but the teacher to compare with, {source}, has its blocks "
                     f"numbered otherwise ({why}): its block i is not {took}'s block i; compare with the model's own "
                     f"teacher {took} (put it back, or give its new place with --teacher)")


def _old_record(record: dict, took: str) -> str:
    """What a LoRA recorded without `blocks_of` was read as (the student's teacher `took`'s blocks), in words."""
    return (f"the LoRA {record['source']} this model took (dit-compress lora or "
            "compress.merge_lora) was recorded before records named the "
            f"model its blocks are of (no blocks_of in its record): they were read as blocks of the model's teacher "
            f"{took}")
