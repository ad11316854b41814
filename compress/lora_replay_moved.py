"""A LoRA a student read as blocks of a model not there now (its record's blocks_of), replayed on a
teacher that cannot be shown to be that model (lora_replay): refused where the teacher's blocks may be
numbered otherwise (an output with blocks removed, or another block count than the student records of
its teacher), rather than given the LoRA in that model's numbering. Likewise a DoRA merged with a
teacher given whose blocks may be numbered otherwise than those the LoRA's are read as, its norms to be
read from them (given_numbered_otherwise): a student's teacher not there now, or the base of its chain."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compress.errors import UserError
from compress.lora_teacher import missing


def took_counts(student: nn.Module) -> dict[str, tuple[int, bool]]:
    """The block counts of the student's teacher as the student says them: {group: (count, exact)}, its
    own count (exact) for a group it removed none of, else the count its compression record keeps
    (teacher_blocks: the run's report's blocks_before, which config.json records, or load_transformer
    reads from report.json for an output written before; exact), else the most its block map names + 1
    (at least)."""
    from compress.arch import get_adapter

    meta = getattr(student, "compression_meta", None) or {}
    block_map = meta.get("block_map")
    block_map = block_map if isinstance(block_map, dict) else {}  # a malformed one: inspect says so
    before = meta.get("teacher_blocks")
    before = {g: n for g, n in (before if isinstance(before, dict) else {}).items()
              if isinstance(n, int) and not isinstance(n, bool)}
    return {group: (count, True) if group not in block_map else (before[group], True) if group in before else
            (max(block_map[group], default=-1) + 1, False)
            for group, count in get_adapter(student).block_counts(student).items()}


def moved_away(teacher: nn.Module, record: dict, took: str | None, source: str | None, took_files: dict | None,
               seen: dict | None, counts: dict | None, lora: str | None = None) -> UserError | None:
    """The refusal of a LoRA read as blocks of its record's blocks_of, not there now, replayed on a
    teacher (loaded from `source`) that cannot be shown to be it (its path, or its weight files against
    those the student recorded of its teacher `took`) while its blocks may be numbered otherwise: an
    output with blocks removed along its chain (or a chain that cannot be followed), or a block count
    other than `took`'s as the student records it (`counts`: took_counts); None where none of that
    holds, or where the LoRA adapts no block module (adapts_blocks: as merge_lora takes a DoRA of none
    with a teacher given): the teacher is then taken for it, moved. `seen`: lora_replay.fingerprint's
    cache. `lora`: where the LoRA is read from (eval's and bench's --lora; default: its record's place)."""
    from compress.lora_replay import _compared_files, fingerprint, took_signature
    from compress.report_teacher import absolute_source

    blocks_of = record["blocks_of"]
    if source is None or not missing(blocks_of) or absolute_source(source) == absolute_source(blocks_of):
        return None
    own = took is not None and absolute_source(str(took)) == absolute_source(blocks_of)
    seen = {} if seen is None else seen  # _compared_files' reads, not read again for the words
    compared = _compared_files(source, blocks_of, took_files if own else None, seen)
    numbered = _numbered_otherwise(teacher, source, (counts or {}) if own else {})
    if compared is False or numbered is None or not adapts_blocks(teacher, lora or record["source"]):
        return None
    why = ("its weight files are not those the model recorded of it" if compared else
           not_compared(took_signature(blocks_of, took_files if own else None, seen), fingerprint(source, seen)))
    return UserError(f"the LoRA {record['source']} this model took (dit-compress lora or "
                     "compress.merge_lora) was read as blocks of "
                     f"{blocks_of}, not there now, and the teacher to compare with, {source}, cannot be shown "
                     f"to be it ({why}), while its blocks may be numbered otherwise ({numbered}): put "
                     f"{blocks_of} back, or give its new place with --teacher")


def adapts_blocks(teacher: nn.Module, lora: str) -> bool:
    """Whether the LoRA (a source) adapts a module in a block of the teacher's family (lora_keys.in_blocks),
    its modules read as merge_lora reads them (lora_read.read_lora); True where it cannot be read so."""
    from compress.arch import get_adapter
    from compress.lora_keys import in_blocks
    from compress.lora_read import read_lora

    adapter = get_adapter(teacher)
    try:
        layers, _ = read_lora(teacher, adapter, lora, {})
    except UserError:  # a block past the teacher's count, a LoRA not there: refused as before
        return True
    return in_blocks(adapter, list(layers))


def not_compared(recorded: dict | None, now: dict | None) -> str:
    """Why the weight files the model `recorded` of its teacher and those of the teacher given (`now`:
    io_signature.teacher_signature) do not compare, in words: no record; a record of another
    dit-compress version (another signature method: io_signature.comparable); no local files of the
    teacher given to read (a Hub id, or files that cannot be read)."""
    from compress.io_signature import comparable

    if recorded is None:
        return "the model records no weight files of it to compare"
    if not comparable(recorded):
        return ("the weight files the model records of it were recorded by another dit-compress version, "
                "which this one cannot compare")
    return "the teacher given has no local weight files that can be read to compare"


def _numbered_otherwise(teacher: nn.Module, source: str, counts: dict) -> str | None:
    """Why the teacher's blocks may be numbered otherwise than those of a model of `counts` ({group:
    (count, exact)}: took_counts), in words; None where nothing says they are."""
    from compress.arch import get_adapter
    from compress.lora_replay import _teacher_base

    if (getattr(teacher, "compression_meta", None) or {}).get("teacher"):
        ours = _teacher_base(teacher, source)
        if ours is None or ours.block_map:
            return "a dit-compress output with blocks removed along its chain of teachers"
    adapter = get_adapter(teacher)
    return counted_otherwise(adapter, adapter.block_counts(teacher), counts)


def counted_otherwise(adapter, have: dict[str, int | None], counts: dict,
                      whose: str = "the model's teacher") -> str | None:
    """'it has N ATTR, WHOSE [at least ]M' for the first group of `adapter` whose count in `have`
    ({group: count}; None: not known) is not that of a model of `counts` (took_counts: exact, else at
    least; None: not known); None where none is. `whose`: that model, in words."""
    found = differing(adapter, have, counts)
    return None if found is None else f"it has {found[0]} {found[1]}, {whose} {found[2]}"


def differing(adapter, have: dict[str, int | None], counts: dict) -> tuple[int, str, str] | None:
    """(N, ATTR, '[at least ]M') of counted_otherwise's first group counted otherwise; None where none is."""
    for g in adapter.groups:
        count, (want, exact) = have.get(g.name), counts.get(g.name, (None, False))
        if count is not None and want is not None and (count != want if exact else count < want):
            return count, g.attr, f"{'' if exact else 'at least '}{want}"
    return None


def given_numbered_otherwise(student: nn.Module, given, config: str | None, base,
                             moved: str | None) -> UserError | None:
    """The refusal of a DoRA merged into `student` (merge_lora) with the teacher `given` (a model or a
    source), whose block j's norms it would read for the LoRA's block j, where the given teacher's block
    counts (read offline: lora.teacher_count; not known: not refused) are not those of the model the
    LoRA's blocks are read as (`base`: lora_teacher.LoraBase): the base of a chain of outputs, as the
    chain records it (lora_teacher.base_block_count), else the student's own teacher, as the student
    records it (took_counts); None where they are. `moved`: that teacher,
    not there now (LoraBase.moved, said or not), whose map to its base, if it was an output, is not known:
    put back, it would be followed (as a replay refuses such a teacher: moved_away). `config`: a
    single-file teacher's. A given dit-compress output is left to dora_weights, which refuses it as it is
    (compressed_teacher)."""
    from compress.arch import get_adapter
    from compress.lora import teacher_count
    from compress.lora_teacher import an_output

    if an_output(given):
        return None
    adapter, chained = get_adapter(student), len(base.chain) > 1
    have = {g.name: teacher_count(student, g, given, config) for g in adapter.groups}
    if (found := differing(adapter, have, read_as_counts(student, base))) is None:
        return None
    count, attr, want = found
    who = f"the teacher given, {given}," if isinstance(given, (str, Path)) else "the teacher given"
    if moved:
        return UserError(f"{who} has {count} {attr}, but the DoRA's blocks are numbered as {moved}'s, the model's "
                         f"teacher, not there now ({want}): its norms would come from other blocks; put {moved} back "
                         "(an output's chain is then followed), or give its new place (were it an output: a plain "
                         f"model of the base blocks it kept) with {GIVE}")
    of = "the base of the model's chain" if chained else "the model's teacher"
    return UserError(f"{who} has {count} {attr}, but the DoRA's blocks are numbered as {base.source}'s, {of} ({want}): "
                     f"its norms would come from other blocks; give no teacher ({base.source} is read) or one with its "
                     f"blocks, with {GIVE}")


GIVE = "--teacher (teacher= to merge_lora)"  # a given DoRA teacher, however merged


def read_as_counts(student: nn.Module, base) -> dict[str, tuple[int | None, bool]]:
    """{group: (count, exact)} of the model the student's LoRA's blocks are read as (`base`:
    lora_teacher.LoraBase): the base of a chain of outputs as the chain records it (lora_teacher.
    base_block_count; None: not recorded), else the student's own teacher as the student records it
    (took_counts); a count not known exactly read from that model's config where
    it is there offline."""
    from compress.arch import get_adapter
    from compress.lora import teacher_count
    from compress.lora_teacher import base_block_count

    adapter = get_adapter(student)
    counts = ({g.name: (base_block_count(base.chain, g), True) for g in adapter.groups} if len(base.chain) > 1
              else took_counts(student))
    for g in adapter.groups:
        count, exact = counts.get(g.name, (None, False))
        if count is None or not exact:
            read = teacher_count(student, g, base.source, base.config)  # None: moved, a Hub id not cached
            counts[g.name] = (read, True) if read is not None else (count, exact)
    return counts
