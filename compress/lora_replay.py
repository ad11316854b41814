"""Giving a teacher the LoRAs a `dit-compress lora` output took, so that eval and bench compare the
output with the teacher it stands for (`replay`): where the LoRAs are read from (their recorded
places, or eval's and bench's --lora), checked before the teacher loads (`replayed_sources`), and
whether a --lora holds the LoRA recorded there (its files' signature)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from compress.errors import UserError
from compress.lora import merge_lora
from compress.lora_keys import STATE_DICT
from compress.lora_replay_old import read_as_took
from compress.lora_teacher import LoraBase
from compress.output_names import is_output, output_config
from compress.words import counted


def replay(teacher: nn.Module, loras: list[dict], moved: list[str] | None = None, took: str | None = None,
           source: str | None = None, took_files: dict | None = None, took_counts: dict | None = None) -> None:
    """Give the teacher the LoRAs a student recorded (its config's compression.loras), at their
    scales, so that eval compares the student with the teacher it stands for (`moved`: see
    replayed_sources). A teacher that is itself an output takes them as the student did: each of its
    blocks the LoRA of the base block it descends from, through its own chain of block maps
    (merge_lora, lora_teacher.lora_base), where the record names that base (blocks_of). A record
    without it (merged before chains were followed, or by a student recording no teacher) read the
    LoRA's blocks as the student's teacher's own: the teacher takes it so, its block i the LoRA's
    block i (what the student's block descending from it took), not through its chain (which would
    give its blocks other blocks' LoRAs); so does a record naming the student's teacher itself
    (`took`: the teacher the student records; read_as_own_blocks), where the teacher is that one
    (`source`: where it was loaded from; `took_files`: the student's record of its weight files). A
    record naming another base than the teacher's chain leads to, or that teacher where the teacher is
    another model, is a UserError naming both, before any LoRA is merged; where that teacher is an
    output there now whose chain leads to the teacher's base, the LoRA is mapped through both chains
    (mapped_blocks). Whichever way the teacher takes it, a DoRA's norms are those of the weight it was
    trained on top of: each teacher block's from the base block it descends from (merge_lora), so two
    teachers of one base give a base block's modules the same weights. `took_counts`: `took`'s block
    counts as the student records them (lora_replay_moved.took_counts)."""
    sources = replayed_sources(loras, moved, warn=False)  # warned before loading
    seen: dict = {}  # each teacher's weight files fingerprinted once, whatever the records
    taken = [read_as_own_blocks(teacher, record, took, source, took_files, seen, took_counts, lora)
             for record, lora in zip(loras, sources)]
    for record, lora, own_blocks in zip(loras, sources, taken):
        mapped = own_blocks if isinstance(own_blocks, dict) else None
        merge_lora(teacher, lora, scale=record["scale"], own_blocks=own_blocks is True, blocks=mapped,
                   blocks_of=record.get("blocks_of", took) if mapped is not None else None)


def read_as_own_blocks(teacher: nn.Module, record: dict, took: str | None = None, source: str | None = None,
                       took_files: dict | None = None, seen: dict | None = None,
                       counts: dict | None = None, lora: str | None = None) -> bool | dict:
    """Whether the student read the LoRA's blocks as its teacher's own: a record without `blocks_of`,
    or one naming the student's teacher (`took`: the one it records), moved away when it took the LoRA
    and read as a base (lora_teacher.lora_base), not the first of the teacher's own chain. Through its
    chain, the teacher would give its block i the LoRA of the base block it descends from, not the
    LoRA's block i. A record naming neither that base nor `took` is a UserError (other_base): the
    teacher's blocks descend from another base's, so neither way gives it the LoRA the student took;
    so is one naming `took` where the teacher (loaded from `source`) is another model (not_took), unless
    `took` is an output there now whose chain leads to the teacher's base: then {group: the LoRA's block
    of the teacher's block 0, 1, ...} (mapped_blocks), merge_lora's `blocks`. `seen`: the weight files'
    fingerprints read so far (fingerprint). Where the model the LoRA's blocks are of is not there now and
    the teacher cannot be shown to be it, a UserError where its blocks may be numbered otherwise and the LoRA
    (read from `lora`, default its recorded place) adapts a block module (`counts`: `took`'s as the student
    records them; lora_replay_moved.moved_away)."""
    from compress.lora_teacher import followed
    from compress.report_teacher import absolute_source, teacher_chain

    from compress.lora_replay_moved import moved_away

    recorded = (getattr(teacher, "compression_meta", None) or {}).get("teacher")
    if "blocks_of" not in record:
        return read_as_took(teacher, record, took, source, took_files, seen)
    unknown = moved_away(teacher, record, took, source, took_files, seen, counts, lora)
    if not recorded:  # a model of all its blocks, as the base is, unless they were read as an output's
        if unknown:
            raise unknown
        theirs = output_base_of(record["blocks_of"])
        if not _removes_blocks(theirs):
            return False
        mapped = mapped_blocks(teacher, theirs, source)
        if mapped is None:
            raise not_took(record, source, unmapped(record["blocks_of"], source, theirs))
        return mapped
    chain = teacher_chain(str(recorded))
    blocks_of = absolute_source(record["blocks_of"])
    if not followed(chain) or blocks_of == absolute_source(chain[-1]):  # a broken chain: merge_lora says why
        return False
    if took is None or blocks_of != absolute_source(str(took)):
        raise other_base(record, chain)
    other = source is not None and absolute_source(source) != blocks_of and other_files(source, blocks_of, took_files, seen)
    if other and is_output(blocks_of):
        mapped = mapped_blocks(teacher, output_base_of(blocks_of), chain[-1])
        if mapped is None:
            raise not_took(record, source, f"its weight files are not {record['blocks_of']}'s: {other}")
        return mapped
    if other:
        raise other_base(record, chain)
    if unknown:
        raise unknown
    return True


def other_files(source: str, took: str, took_files: dict | None, seen: dict | None = None) -> str | None:
    """How the weight files of the teacher `source` differ from those of the student's own teacher
    `took` (read now where it is there, else as the student recorded them: `took_files`), in words
    (io_signature.signature_change); None where they do not, or cannot be compared (a Hub id, a toy,
    no record): the teacher is then taken for that one, moved. `seen`: fingerprint's cache."""
    from compress.io_signature import signature_change

    now = fingerprint(source, seen)
    if now is None:  # no weight files, or not read now: the loader says why
        return None
    return signature_change(took_signature(took, took_files, seen), source, now)


def took_signature(took: str, took_files: dict | None, seen: dict | None) -> dict | None:
    """The weight files' signature of the student's teacher `took`: read now where it is there (fingerprint),
    else as the student recorded them (`took_files`)."""
    return fingerprint(took, seen) if Path(took).expanduser().exists() else took_files


def fingerprint(source: str, seen: dict | None) -> dict | None:
    """io_signature.teacher_signature of `source`, read once per path in one replay (`seen`: those read
    so far; None: no cache)."""
    from compress.io_signature import teacher_signature

    if seen is None:
        return teacher_signature(source)
    if source not in seen:
        seen[source] = teacher_signature(source)
    return seen[source]


def _compared_files(source: str, took: str, took_files: dict | None, seen: dict | None = None) -> bool | None:
    """Whether the weight files of the teacher `source` differ from those of `took` (read now where it
    is there, else as the student recorded them: took_signature); None where either is not known, or
    they do not compare (io_signature.comparable: a record of an older or newer dit-compress)."""
    from compress.io_signature import comparable, signature_change

    recorded = took_signature(took, took_files, seen)
    now = fingerprint(source, seen)
    if not comparable(recorded, now):
        return None
    return signature_change(recorded, source, now) is not None


def _teacher_base(teacher: nn.Module, source: str):
    """The teacher's lora_teacher.LoraBase: its chain's base and block map (itself, no map, where it
    records no teacher); None where its chain cannot be followed."""
    from compress.lora_teacher import lora_base

    if not (getattr(teacher, "compression_meta", None) or {}).get("teacher"):
        return LoraBase({}, source, None, [])
    try:
        return lora_base(teacher)
    except UserError:
        return None


def mapped_blocks(teacher: nn.Module, took_base: tuple, base: str | None) -> dict[str, list[int]] | None:
    """{group: the block of an output `took` (there now; `took_base`: its output_base_of) descending from
    the same base block as the teacher's block 0, 1, ... (-1: none, a block `took`'s chain removed)},
    where the teacher's blocks descend from `base` (its chain's first teacher, or itself where it records
    none) and so do `took`'s (lora_teacher.lora_base of each): a LoRA read as `took`'s own blocks is then
    given to the teacher exactly as a LoRA of that base. None where `took` is no output there now, its chain cannot be
    followed (or its own teacher is not there), or leads to another base."""
    from compress.lora_teacher import lora_base
    from compress.report_teacher import absolute_source

    theirs, followed = took_base
    if not followed or theirs is None or theirs.moved or base is None:
        return None
    if absolute_source(theirs.source) != absolute_source(base):
        return None
    ours = lora_base(teacher).block_map if getattr(teacher, "compression_meta", None) else {}
    return _mapping(teacher, ours, theirs.block_map)


def _mapping(teacher: nn.Module, ours: dict, theirs: dict) -> dict[str, list[int]]:
    """{group: the index in `theirs` (a block map of one base) of the base block the teacher's block 0,
    1, ... descends from (`ours`: the teacher's map of that base), -1 where `theirs` removed it}."""
    from compress.arch import get_adapter

    out = {}
    for g in get_adapter(teacher).groups:
        if g.name not in ours and g.name not in theirs:
            continue
        kept = ours.get(g.name, range(len(getattr(teacher, g.attr))))  # the base index of our block i
        of_took = theirs.get(g.name)
        out[g.name] = [of_took.index(i) if i in of_took else -1 for i in kept] if of_took is not None else list(kept)
    return out


def unmapped(took: str, source: str | None, took_base: tuple) -> str:
    """Why a LoRA read as blocks of the output `took` (its blocks renumbered; `took_base`: its output_base_of)
    is not mapped to a teacher recording no teacher (loaded from `source`; mapped_blocks gave None), in words."""
    theirs, followed = took_base
    if not followed or theirs is None:
        return f"{took}'s chain of teachers cannot be followed now, to map its blocks to the teacher's"
    if theirs.moved:
        return f"{took}'s teacher {theirs.source} is not there now, to map its blocks to the teacher's"
    if source is None:
        return f"not known by its place, to map {took}'s blocks to its"
    return f"its own base, while {took}'s blocks descend from {theirs.source}"


def _output_base(source: str):
    """lora_teacher.lora_base of the dit-compress output `source` (there now; None where it is none),
    read from its config; a UserError where its chain cannot be followed."""
    from types import SimpleNamespace

    from compress.lora_teacher import lora_base

    config = output_config(source)  # None: no output there now
    if config is None:
        return None
    section = config.get("compression")
    return lora_base(SimpleNamespace(compression_meta=section if isinstance(section, dict) else {}))


def output_base_of(source: str) -> tuple:
    """(_output_base of `source`, True); (None, False) where it is an output whose chain cannot be followed."""
    try:
        return _output_base(source), True
    except UserError:
        return None, False


def _removes_blocks(output_base: tuple) -> bool:
    """Whether a model (`output_base`: its output_base_of) is a dit-compress output there now whose blocks are
    not its base's: a block removed along its chain of teachers (or a chain that cannot be followed,
    whose blocks are unknown)."""
    found, followed = output_base
    return not followed or (found is not None and bool(found.block_map))


def not_took(record: dict, source: str | None, why: str) -> UserError:
    """The refusal of a LoRA the student read as blocks of its own teacher (its record's `blocks_of`,
    not there at the merge, now a dit-compress output) replayed on another model (`source`; `why`)."""
    took = record["blocks_of"]
    return UserError(f"the LoRA {record['source']} this model took (dit-compress lora or "
                     "compress.merge_lora) was read as blocks of its "
                     f"teacher {took} (not there when it took it: read as a base), a dit-compress output, but the "
                     f"teacher to compare with, {source or 'the one given'}, is another model ({why}): its blocks are "
                     f"not {took}'s, those the LoRA's were mapped to; compare with the model's own teacher {took}")


def other_base(record: dict, chain: list[str]) -> UserError:
    """The refusal of a LoRA the student read as blocks of one base (its record's `blocks_of`) replayed on
    a teacher whose chain of teachers (`chain`: its recorded teacher's teacher_chain) leads to another."""
    through = f" (through {', '.join(chain[:-1])})" if len(chain) > 1 else ""
    return UserError(f"the LoRA {record['source']} this model took (dit-compress lora or "
                     "compress.merge_lora) was read as blocks of "
                     f"{record['blocks_of']}, but the teacher to compare with was compressed from {chain[-1]}"
                     f"{through}: its blocks descend from that base's, not those the LoRA's were mapped to; "
                     f"compare with the model's own teacher, or one compressed from {record['blocks_of']}")


def replayed_sources(loras: list[dict], moved: list[str] | None = None, warn: bool = True) -> list[str]:
    """Where the LoRAs a student recorded are to be read from, checked before its teacher loads:
    the recorded places, or `moved` (eval's and bench's --lora: where they are now, in the order the
    student took them); a UserError for a LoRA merged from a state dict or one no longer there."""
    from compress.io_source import looks_local

    if moved:
        if len(moved) != len(loras):
            each = "once" if len(loras) == 1 else "once for each, in the order it took them"
            raise UserError(f"--lora given {counted(len(moved), 'time')}, but the model took "
                            f"{counted(len(loras), 'LoRA')} (dit-compress lora or "
                            f"compress.merge_lora): give --lora {each}")
        for source in moved:
            if looks_local(source) and not Path(source).expanduser().exists():
                raise UserError(f"--lora {source}: no such file or folder")
        if warn:
            warn_if_other_loras(loras, moved)
        return list(moved)
    for record in loras:
        if record["source"] == STATE_DICT:
            raise UserError("this model holds a LoRA merged from a state dict, which its teacher cannot be "
                            "given again: merge it from a file (or a Hub id) to compare with the teacher")
        check_recorded(record["source"], len(loras))
    return [record["source"] for record in loras]


def warn_if_other_loras(loras: list[dict], moved: list[str]) -> None:
    """A warning naming each --lora (`moved`) whose files hold other bytes than the LoRA the student
    took in that place (its recorded signature; a LoRA recorded without one is not compared), and
    saying so when they are the same LoRAs in another order: the teacher would take other LoRAs."""
    from compress.io_signature import lora_signature
    from compress.report import note, warn

    recorded = [record.get("signature") for record in loras]
    now = [lora_signature(source) if was else None for was, source in zip(recorded, moved)]
    unread = [i for i, (was, is_) in enumerate(zip(recorded, now)) if was and is_ is None]
    other = [i for i, (was, is_) in enumerate(zip(recorded, now)) if was and is_ is not None and is_ != was]
    if unread:
        note(f"--lora {', '.join(moved[i] for i in unread)}: not compared with "
             "the LoRA the model took (no local safetensors to read)")
    if not other:
        return
    shuffled = all(recorded) and sorted(map(str, recorded)) == sorted(map(str, map(lora_signature, moved)))
    if shuffled and not order_matters(loras, moved):
        note("--lora: the same LoRAs in another order than the model took them, at the same scales: plain LoRAs "
             "add up alike, so its teacher is the same (up to float round-off)")
        return
    why = ("the same LoRAs in another order than the model took them (each takes the scale of the one in its place; "
           "a DoRA's norms, the LoRAs before it)" if shuffled else
           ", ".join(f"--lora {moved[i]} is not the LoRA the model took {_nth(i, len(loras))}(recorded at "
                     f"{loras[i]['source']})" for i in other))
    them = "it as it is" if len(loras) == 1 else "them as they are"
    warn(f"{why}: its teacher is given {them}, so the comparison is with another teacher than the model stands for")


def order_matters(loras: list[dict], moved: list[str]) -> bool:
    """Whether the student's LoRAs given in another order (`moved`: the same files) make another
    teacher: each --lora takes the scale and base (blocks_of) of the record in its place, and a DoRA's
    norms are taken from the weight with the LoRAs before it; plain LoRAs at their own settings add
    up alike (W + s1·B1A1 + s2·B2A2). A LoRA whose files cannot be read counts as a DoRA."""
    from compress.io_signature import lora_signature

    def taken(signature, record: dict) -> str:
        return json.dumps([signature, record["scale"], record.get("blocks_of", "(own blocks)")], sort_keys=True)

    given = sorted(taken(lora_signature(source), record) for source, record in zip(moved, loras))
    if given != sorted(taken(record["signature"], record) for record in loras):
        return True
    return any(holds_dora(source) for source in moved)


def holds_dora(source: str) -> bool:
    """Whether a local LoRA's safetensors (a file, or those of a folder) hold a DoRA's magnitudes
    (peft's lora_magnitude_vector); True where they cannot be read."""
    from safetensors import SafetensorError, safe_open

    path = Path(source).expanduser()
    try:
        for file in [path] if path.is_file() else sorted(path.glob("*.safetensors")):
            with safe_open(str(file), "pt") as weights:
                if any("lora_magnitude_vector" in key for key in weights.keys()):
                    return True
    except (SafetensorError, OSError, ValueError):
        return True
    return False


def _nth(i: int, count: int) -> str:
    """'' for a model that took one LoRA, else 'second ' (its place among them)."""
    return "" if count == 1 else f"{['first', 'second', 'third'][i] if i < 3 else f'{i + 1}th'} "


def check_recorded(source: str, count: int) -> None:
    """A UserError where a LoRA a student recorded (an absolute path, `_source`) is no longer there:
    where it was, and --lora (`count`: how many LoRAs the student took)."""
    if not (Path(source).is_absolute() and not Path(source).exists()):
        return
    each = "" if count == 1 else f" (once for each of its {count} LoRAs, in the order it took them)"
    raise UserError(f"the LoRA this model took (dit-compress lora or "
                    f"compress.merge_lora) is no longer at {source}, where it recorded it "
                    "(moved or deleted), and its teacher takes it to stand for the model: pass its new place to "
                    f"eval or bench with --lora PATH{each}, or put it back there")
