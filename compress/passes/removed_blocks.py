"""What a pass's checks know of the blocks earlier passes removed, and the errors about them.

After a removal the blocks left are renumbered from 0 in teacher order (`Adapter.remove_blocks`):
module names in svd patterns (targets, ignore, ranks, center) name the blocks as they are now,
while `remove_blocks.blocks` lists teacher indices. A pass checked on plan's meta model finds the
teacher's block counts and the student -> teacher map on it (`teacher_view`, left by
`RemoveBlocksPass.apply_planned`); in a run the pass is given `ctx.block_map`.

An error about a block an earlier removal took, or computed from the blocks left (a pattern naming a
block past the ones left, a teacher index removed before, a count over the blocks left, a learned
removal's windows cut from them) is an `AfterRemoval`: the runner adds
which passes removed blocks (runner_checks.removal_note) to those only. A module name that still
exists but was renumbered (written with the teacher's index, it names another block) is a note,
not an error (`renumbered_notes`): the meta model records each removal and its line for it, and the block
counts per group the run may have (`possible_counts`: several where removals pick their groups at
run time).
"""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

from compress.arch.base import Adapter, LinearInfo
from compress.errors import BadValue

PLANNED_ATTR = "_dit_compress_planned_blocks"  # on plan's meta model only: teacher counts + block map


class AfterRemoval(BadValue):
    """A BadValue about blocks that earlier removals may have taken: the runner says which passes
    removed blocks after its message (nothing when none did)."""


class MissingBlock(BadValue):
    """A pattern naming block `index` of `group` (module prefix `attr`), which has `have` blocks
    now. `message`: the whole error; `base`: its first clause, which `explained` continues. The
    pattern is checked against the model alone: it reads no other key of its pass (reads=())."""

    def __init__(self, key: str, message: str, base: str, block: tuple[str, str, int, int]):
        super().__init__(key, message, reads=(), group=block[0])
        self.base, self.block = base, block

    def explained(self, teacher_counts: dict[str, int] | None,
                  block_map: dict[str, list[int]] | None) -> BadValue:
        """The error said with what became of the block: an `AfterRemoval` when the teacher had it
        and earlier passes removed blocks of its group, else this error as it was."""
        words = removal_words(self.block, teacher_counts, block_map)
        if words is None:
            return BadValue(self.key, str(self), self.reads, self.group)
        return AfterRemoval(self.key, f"{self.base}: {words}", self.reads, self.group)


def planned_blocks(model: nn.Module, adapter: Adapter) -> dict:
    """What plan's meta model carries: teacher counts, the student -> teacher map, and per group how
    many blocks removals chosen at run time take (`pending`: which ones is not known yet); any other
    model is taken as the teacher."""
    found = getattr(model, PLANNED_ATTR, None)
    if found is not None:
        return found
    counts = adapter.block_counts(model)
    return {"teacher_counts": counts, "block_map": {g: list(range(n)) for g, n in counts.items()},
            "pending": {}}


def teacher_view(model: nn.Module, adapter: Adapter) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(teacher block counts, student -> teacher map) of a model (see `planned_blocks`). After a removal
    chosen by importance (decided at run time) the map lists every teacher block that may still be there."""
    found = planned_blocks(model, adapter)
    return found["teacher_counts"], found["block_map"]


def past_the_blocks(pattern: str, infos: Sequence[LinearInfo]) -> tuple[str, str, int, int] | None:
    """(group, module prefix, index, blocks the group has) when `pattern` is a module name inside a
    block past the last of its group ("transformer_blocks.5.attn1.to_q" with 3 blocks), else None."""
    m = re.match(r"(\w+)\.(\d+)(\.|$)", pattern)
    if m is None:
        return None
    attr, index = m[1], int(m[2])
    blocks = {(i.group, i.block) for i in infos if i.group is not None and i.name.startswith(f"{attr}.")}
    if not blocks:
        return None
    group, have = next(iter(blocks))[0], len(blocks)
    return (group, attr, index, have) if index >= have else None


def removal_words(block: tuple[str, str, int, int], teacher_counts: dict[str, int] | None,
                  block_map: dict[str, list[int]] | None) -> str | None:
    """What became of teacher block `index` of the group, which has `have` blocks now; None when no
    removal explains it (the teacher had no such block, or the group lost none)."""
    group, attr, index, have = block
    teacher = (teacher_counts or {}).get(group, have)
    if index >= teacher or have >= teacher:
        return None
    left = f"the {have} left are {attr}.0..{have - 1}, renumbered from 0 in teacher order"
    kept = (block_map or {}).get(group)
    if kept is not None and index not in kept:  # lists every teacher block that may be left
        return f"teacher block {index} of group '{group}' was removed by an earlier pass; {left}"
    if kept is None or len(kept) != have:  # not known before the run (a removal chosen by importance)
        return (f"an earlier pass removes blocks of group '{group}' (which ones is decided at run time); "
                f"{left}")
    return (f"an earlier pass removed blocks of group '{group}'; {left}, so teacher block {index} is "
            f"{attr}.{kept.index(index)} now")


# ---- patterns that name a block by its index after a removal ------------------------------------
def taken_unplaced(model: nn.Module) -> int:
    """Blocks earlier removals over several groups take at run time, which plan's meta model still
    holds (which groups lose them is not known): a later fraction over all blocks is of the rest."""
    return getattr(model, PLANNED_ATTR, {}).get("taken", 0)


def forget_taken(model: nn.Module) -> None:
    """A meta copy whose blocks a spread of the unplaced removals really removed holds none of them,
    and its block counts are the run's (`possible_counts`)."""
    if (planned := getattr(model, PLANNED_ATTR, None)) is not None:
        setattr(model, PLANNED_ATTR, {k: v for k, v in dict(planned, taken=0).items() if k != "possible"})


def possible_counts(model: nn.Module, adapter: Adapter) -> list[dict[str, int]]:
    """Every block count per group the run may find where plan's meta model is now: several after
    removals that pick their groups at run time (one per way they may spread their blocks, as
    `stamp_counts` recorded them), else the model's own."""
    return getattr(model, PLANNED_ATTR, {}).get("possible") or [adapter.block_counts(model)]


def stamp_counts(model: nn.Module, possible: list[dict[str, int]]) -> None:
    """Records on plan's meta model the block counts the run may have after a removal (`possible_counts`;
    remove_blocks_budget.counts_after)."""
    if (planned := getattr(model, PLANNED_ATTR, None)) is not None:
        setattr(model, PLANNED_ATTR, dict(planned, possible=possible))


def with_removal(planned: dict, groups, run_time: bool) -> dict:
    """`planned` (planned_blocks) with one more removal of blocks of `groups`: chosen at run time
    or not. The runner's checks add its recipe line (`stamp_line`), for later passes' notes."""
    removal = {"groups": sorted(groups), "run_time": run_time, "line": None}
    return dict(planned, removals=[*planned.get("removals", ()), removal])


def stamp_line(model: nn.Module, line: int) -> None:
    """Gives the removals a pass just planned on plan's meta model (`with_removal`) its recipe line."""
    for removal in getattr(model, PLANNED_ATTR, {}).get("removals", ()):
        if removal["line"] is None:
            removal["line"] = line


def renumbered_notes(patterns: Sequence[tuple[str, str]], infos: Sequence[LinearInfo],
                     planned: dict) -> list[tuple[str, str]]:
    """(key, note) per (key, pattern) naming a module of a block by its index where earlier removals
    renumbered its group: which teacher block that is (a removal chosen at run time: one of the
    blocks left); nothing where the index is still the teacher's."""
    by_name = {i.name: i for i in infos}
    out = []
    for key, pattern in patterns:
        info = by_name.get(pattern)
        removals = [r for r in planned.get("removals", ()) if info is not None and info.group in r["groups"]]
        if removals:
            words = renumbered_words(info, pattern, planned, removals)
            out += [(key, f"svd.{key.split('.')[0]}: pattern {pattern!r}: {words}")] if words else []
    return out


def renumbered_words(info: LinearInfo, pattern: str, planned: dict, removals: list[dict]) -> str | None:
    """What a module name of block `info.block` names after `removals` of its group; None when it is
    the teacher's block of the same index."""
    block = re.match(r"(\w+)\.(\d+)\.", pattern)[0][:-1]  # transformer_blocks.1
    attr, index = block.rsplit(".", 1)[0], info.block
    lines = [str(r["line"]) for r in removals if r["line"] is not None]
    by = "an earlier removal" if not lines else f"the removal{'s' if len(lines) > 1 else ''} at " \
        f"line{'s' if len(lines) > 1 else ''} {', '.join(lines)}"
    kept = planned["block_map"].get(info.group, [])
    if any(r["run_time"] for r in removals) or planned["pending"].get(info.group):
        return (f"{block} here is block {index} of those left after {by}, which picks them at run time "
                f"(renumbered from 0 in teacher order): not necessarily teacher block {index}")
    if kept[index] == index:
        return None
    now = f"is {attr}.{kept.index(index)} here" if index in kept else "was removed"
    return (f"{block} here is teacher block {kept[index]}: blocks are renumbered from 0 after {by} "
            f"(teacher block {index} {now})")


