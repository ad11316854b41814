"""`inspect`'s block map: which teacher block each student block of a block-pruned output is (as
the run recorded it), the teacher blocks removed, and how the tables and lines name them."""

from __future__ import annotations

import json
from pathlib import Path

from compress.errors import UserError
from compress.report import is_count


def recorded_block_map(model, out: Path) -> dict[str, list[int]] | None:
    """{group: [teacher index of student block 0, 1, ...]} as the run recorded it: config.json's
    compression.block_map (what load_transformer keeps as compression_meta), else block_map.json;
    None for an output no remove_blocks pass touched. A malformed one is a UserError naming its file."""
    where, found = out / "config.json", (getattr(model, "compression_meta", None) or {}).get("block_map")
    if found is None and (out / "block_map.json").is_file():
        from compress.io import read_json

        where, found = out / "block_map.json", read_json(out / "block_map.json")
    if found is None:
        return None
    if not _is_block_map(found):
        shown = json.dumps(found, default=str)
        raise UserError(f"{where}: block_map is {shown[:37] + '...' if len(shown) > 40 else shown}, not a mapping "
                        "of each block group to its teacher indices; the output is damaged (rerun the recipe)")
    return found


def recorded_counts(model) -> dict | None:
    """{group: block count} of the teacher as the output's config.json records it (compression.teacher_blocks,
    what load_transformer keeps as compression_meta), for `removed_blocks`; None where it records none."""
    return (getattr(model, "compression_meta", None) or {}).get("teacher_blocks")


def _is_block_map(found) -> bool:
    """{group: [teacher index, ...]}, indices whole numbers ≥ 0."""
    return isinstance(found, dict) and all(isinstance(v, list) and all(map(is_count, v)) for v in found.values())


def teacher_blocks(rows: list[dict], block_map: dict | None) -> dict[str, str]:
    """Student block label ("blocks.1") -> the teacher's ("blocks.2"), for every block of a group
    the block map names (labels as the rows carry them: group.index)."""
    teacher = {}
    for r in rows:
        group, _, index = r["block"].rpartition(".")
        if block_map and index.isdigit() and int(index) < len(block_map.get(group, [])):
            teacher[r["block"]] = f"{group}.{block_map[group][int(index)]}"
    return teacher


def teacher_label(block: str, teacher: dict[str, str]) -> str:
    """`block`, with its teacher index beside it where removal renumbered it: "blocks.1 (teacher 2)"."""
    from compress.arch import teacher_note

    index, theirs = block.rpartition(".")[2], teacher.get(block, block).rpartition(".")[2]
    return block + (teacher_note(int(index), int(theirs)) if index.isdigit() and theirs.isdigit() else "")


def module_label(block: str, teacher: dict[str, str]) -> str:
    """`block` ("double.1") by its module name, as the per-layer table heads it ("transformer_blocks.1";
    a Flux single block "single_transformer_blocks.0"), with its teacher index (teacher_label)."""
    from compress.arch import block_module

    return f"{block_module(block)}{teacher_label(block, teacher)[len(block):]}"


def removed_blocks(block_map: dict[str, list[int]], report: dict,
                   recorded: dict | None = None) -> dict[str, list[int]]:
    """{group: teacher indices no student block maps to}. The teacher's block count is the first
    removal pass's blocks_before (report.json), else `recorded` (config.json's compression.teacher_blocks:
    an output re-saved by save_pretrained or save_compressed has no report.json); without either, the
    highest index kept + 1 (a removed last block then goes unseen)."""
    removal = report.get("remove_blocks")
    runs = (removal.get("passes") or [removal]) if isinstance(removal, dict) else []
    first = runs[0] if isinstance(runs, list) and runs else {}
    before = first.get("blocks_before") if isinstance(first, dict) else None
    before = before if isinstance(before, dict) else recorded if isinstance(recorded, dict) else {}
    gone = {}
    for group, kept in block_map.items():
        count = max([before[group] if isinstance(before.get(group), int) else 0] + [i + 1 for i in kept])
        gone[group] = [i for i in range(count) if i not in kept]
    return gone


def removal_lines(block_map: dict | None, report: dict, recorded: dict | None = None) -> list[str]:
    """What removal did, in teacher indices: the blocks gone by module list, the recipe's group beside
    them where the family has several ('transformer_blocks (double) [1] (2 → 1)'), and each renumbered
    student block's teacher block (the tables name student blocks by module, as the weights do).
    `recorded`: the teacher's block counts config.json records (removed_blocks)."""
    if not block_map:
        return []
    from compress.arch import group_modules

    gone, named = removed_blocks(block_map, report, recorded), {g: group_modules(g) for g in block_map}
    said = "; ".join(f"{''.join(named[g])} {v} ({len(v) + len(block_map[g])} → {len(block_map[g])})"
                     for g, v in gone.items() if v)  # as the run's log: report_card.named_removals
    moved = ", ".join(f"{named[g][0]}.{i} ← {t}" for g, kept in block_map.items()
                      for i, t in enumerate(kept) if i != t)
    lines = [f"blocks removed from the teacher: {said or 'none'}"]
    if moved:
        lines.append(f"student blocks renumbered (student ← teacher index): {moved}")
    return lines
