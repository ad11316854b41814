"""The svd pass's walk over a model: each target visited with its calibration statistics, in an
order where a target's statistics are taken after everything it depends on has been visited
(conditioning → top level → blocks in execution order → tail), plus the names its caches use.
Within a block, targets are visited at once (their stats from one forward of the block as found) or,
sequentially, in stages in the block's forward order, stages that do not depend on each other
together (`in_order`, `levels`)."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from torch import nn

from compress.arch.base import LinearInfo
from compress.calib import BlockCalibration, BlockStats
from compress.calib_stats import Reader, Stats, StatsCache
from compress.passes.svd_targets import is_model_wide, stats_key, uses_output_gram

Visit = Callable[[LinearInfo, Stats], bool]  # (target, its stats) -> whether the model changed
VisitGroup = Callable[[str, int, list], bool]  # (where, first block it can change, [(info, stats)])
BeforeBlock = Callable[[nn.Module, list], None]  # (block, [(info, stats)]) before they are visited


def walk(cal: BlockCalibration, targets: list[LinearInfo], visit: Visit, state: list, cache: StatsCache,
         modulation_grid: int, visit_group: VisitGroup | None = None,
         before_block: BeforeBlock | None = None, sequential: bool = False) -> None:
    """Calls visit(info, stats) for every target: the top level (embedders first, then the
    modulation linears on the conditioning they make), the blocks, the tail. visit_group(where,
    start, pairs), if given, takes the targets visited together (the top level's embedders, its
    modulation linears, each block, the tail) at once, and says if it changed any; `start` is the
    first block (execution order) they can change: 0 for the top level, the block's own position,
    the block count for the tail. `state` (what has been compressed so far) names the student-mode
    cache files; modulation Grams are taken over `modulation_grid` timesteps per batch (cached).
    sequential (student mode): a block's targets are visited in stages, one per stats key in the
    order the keys first fire, merged in levels of stages that do not depend on each other, each
    later level's stats taken by running the block again with the earlier levels compressed
    (`in_order`)."""

    def visit_all(where: str, pairs: list, start: int = 0) -> bool:
        if visit_group and pairs:
            return visit_group(where, start, pairs)
        return any([visit(info, stats) for info, stats in pairs])

    student = cal.activations == "student"
    conditioned = {stats_key(i) for i in targets if from_conditioning(i)}
    top = [i for i in targets if i.group is None]
    first = [i for i in top if stats_key(i) not in conditioned]  # embedders, ...: before the blocks
    # the modulation linears read the conditioning the top-level embedders make: in student mode
    # their stats are taken after those are compressed, in teacher mode before anything changes
    shared = {} if student else _conditioning(cal, targets, cache, modulation_grid)
    stats = cal.capture(readers(first))
    changed = visit_all("top level", [(i, stats[stats_key(i)]) for i in first if stats_key(i) in stats])
    if student:
        shared = _conditioning(cal, targets, cache, modulation_grid, state)
    changed = visit_all("top level", [(i, shared[stats_key(i)]) for i in top
                                      if stats_key(i) in conditioned]) or changed
    if changed and student:
        cal.capture(label="calibrate: capture again, top-level compressed")  # (whole at 80 columns)
    pending = [i for i in first if stats_key(i) not in stats]  # they run after the blocks

    def readers_for(group, index):
        mine = [i for i in targets if (i.group, i.block) == (group, index)]
        return readers([i for i in mine if stats_key(i) not in shared], where=f"block {index} of '{group}'")

    def cache_name(group, index):
        return digest(group, index, sorted(r.key for r in readers_for(group, index)), state, cal.asymmetric)

    position = 0  # of the block in execution order
    for bs in cal.blocks(readers_for, cache_name):
        pairs = _block_pairs(targets, bs, shared)
        if before_block and pairs:
            before_block(bs.block, pairs)
        where = f"{bs.group} {bs.index}"
        if sequential and student:
            in_order(cal, bs, pairs, lambda stage: visit_all(where, stage, position), state, cache)
        else:
            visit_all(where, pairs, position)
        position += 1
    tail = cal.tail(readers(pending))
    visit_all("tail", [(info, tail[stats_key(info)]) for info in pending], position)


def in_order(cal: BlockCalibration, bs: BlockStats, pairs: list, visit_stage: Callable[[list], bool], state: list,
             cache: StatsCache) -> None:
    """Within-block sequential calibration (GPTQ's true-sequential): visit one calibrated block's
    targets in `stages`, grouped in `levels` by the block's data flow (`cal.dependencies`), level by
    level (one `visit_stage` per level); each later level's stats from one re-run of this block alone
    (`cal.rerun`) with the earlier levels compressed, which gives every stage the stats a re-run per
    stage in forward order gives it. With a reference stream its forwards run through the block as
    it was yielded. Re-runs are cached under the state so far (the block's compressed levels
    included); none is needed while nothing in the block has changed."""
    original = {info.name: cal.model.get_submodule(info.name) for info, _ in pairs}
    changed = False
    for level in leveled(cal, bs.block, stages(pairs, list(bs.stats))):
        fresh = [info for info, _ in level if not is_model_wide(info)]
        if changed and fresh:
            found = readers(fresh, where=f"block {bs.index} of '{bs.group}'")
            name = digest("stage", bs.group, bs.index, sorted(r.key for r in found), state, cal.asymmetric)
            stats = cache.load(name)
            if stats is None:
                stats = cal.rerun(bs.block, found, original)
                cache.save(name, stats)
            level = [(info, stats[stats_key(info)] if not is_model_wide(info) else s) for info, s in level]
        changed = visit_stage(level) or changed


def leveled(cal: BlockCalibration, block: nn.Module, staged: list[list]) -> list[list]:
    """A block's stages (`stages`) merged by `levels` of the dependencies `cal.dependencies` reads off
    the block: [(info, stats)] per level, stages in forward order within one. A block where a stage
    did not run in that probe keeps one level per stage (the chain: same stats, one re-run each)."""
    if len(staged) < 2:
        return staged
    found = [readers([info for info, _ in stage if not is_model_wide(info)]) for stage in staged]
    deps = cal.dependencies(block, [f[0].module if f else None for f in found],
                            [[info.name for info, _ in stage] for stage in staged])
    level = levels(deps) if deps is not None else list(range(len(staged)))
    return [[p for stage, j in zip(staged, level) if j == k for p in stage] for k in sorted(set(level))]


def levels(deps: list[set[int]]) -> list[int]:
    """Level of each stage (forward order) from deps[s], the stages whose linears' outputs stage s
    reads (directly or not): after every earlier stage it depends on (one level more), and not
    before an earlier stage that depends on it (a linear called twice: a later call of an earlier
    stage's reader reads it; the same level or later). Taken after the levels below its own are
    compressed, a stage's stats then see exactly the earlier stages it depends on compressed: the
    stats a re-run per stage in forward order gives it. 0 for stages that depend on none."""
    level: list[int] = []
    for s, ds in enumerate(deps):
        after = [level[t] + 1 for t in ds if t < s]
        beside = [level[k] for k in range(s) if s in deps[k]]
        level.append(max(after + beside, default=0))
    return level


def stages(pairs: list, order: list[str]) -> list[list]:
    """A block's [(info, stats)] grouped by stats key, in `order` (the keys' first firing order in
    the block's forward: the order of its BlockStats.stats, which the hooks fill as keys fire and
    the cache keeps); model-wide keys (the caption, temb: not made by the block's linears) join
    the first stage."""
    position = {key: j for j, key in enumerate(order)}
    groups: dict[int, list] = {}
    for info, st in pairs:
        key = stats_key(info)
        j = 0 if is_model_wide(info) else position[key]
        groups.setdefault(j, []).append((info, st))
    return [groups[j] for j in sorted(groups)]


def _conditioning(cal: BlockCalibration, targets: list[LinearInfo], cache: StatsCache,
                  grid: int, state: list = ()) -> dict[str, Stats]:
    """Stats of the modulation targets' conditioning inputs over a dense timestep grid, placed as
    the teacher's sampler places its steps (cached; `state`: what the pass has compressed before
    them, in student mode)."""
    cond = [i for i in targets if from_conditioning(i)]
    if not cond:
        return {}
    found = readers(cond)
    name = digest("conditioning", grid, sorted(r.key for r in found), *([list(state)] if state else []),
                  *([cal.sampler] if cal.sampler else []))  # the grid's σ follow the sampler's shift
    stats = cache.load(name)
    if stats is None:
        stats = cal.conditioning(found, grid)
        cache.save(name, stats)
    return dict(stats)


def from_conditioning(info: LinearInfo) -> bool:
    """Whether a target's stats are the conditioning's (`_conditioning`): the modulation linears, top
    level and per block, read the timestep (and pooled text) embedding, whose stats are taken over a
    timestep grid on one stream, the student's: no reference stream, no `Stats.cross`, so they are
    never fitted to the reference (svd.asymmetric) nor re-run within their block."""
    return info.role == "modulation"


def _block_pairs(targets: list[LinearInfo], bs, shared: dict[str, Stats]) -> list:
    """[(info, stats)] of one calibrated block's targets; model-wide keys (caption, temb) are taken
    from the first block that reads them and shared from then on."""
    pairs = []
    for info in targets:
        if (info.group, info.block) != (bs.group, bs.index):
            continue
        key = stats_key(info)
        if key not in shared and is_model_wide(info):
            shared[key] = bs.stats[key]
        pairs.append((info, shared[key] if key in shared else bs.stats[key]))
    return pairs


def readers(infos: list[LinearInfo], where: str = "top level") -> list[Reader]:
    """One reader per stats key (linears sharing an input share it)."""
    out = {}
    for i in infos:
        key = stats_key(i)
        out.setdefault(key, Reader(key, i.name, output=uses_output_gram(i),
                                   dedupe=is_model_wide(i) and i.role != "modulation", where=where))
    return list(out.values())


def module_digest(model: nn.Module, name: str) -> str:
    """Digest of every value of a (just compressed) module: student-mode stats of later blocks
    depend on the exact factors (method, alpha, centering, weighting), not only on the rank."""
    h = hashlib.sha1()
    for p in model.get_submodule(name).parameters():
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def digest(*parts) -> str:
    text = json.dumps(parts, default=str)
    return f"{parts[0]}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"
