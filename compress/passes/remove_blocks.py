"""Remove whole transformer blocks: explicit teacher indices per group, or a count / fraction chosen by
block importance (the skip-one-block scan or its cosine proxy), one-shot or greedy (re-scored after each
removal). Uses `adapter.remove_blocks` (renumbers, keeps the config true) and composes `ctx.block_map`
(student block -> teacher block, per group) with any earlier removal.

Explicit indices are teacher indices (the numbering of the importance figure); after an earlier removal
they are mapped through `ctx.block_map`. A bare `count` / `fraction` counts over all blocks of all groups
(least important overall, never emptying a group); a mapping gives a budget per group.

The first (or only) choice by importance reuses an importance pass's scores while they describe the
student: no pass that changes weights (`Pass.changes_weights`: svd, distill, a removal) ran since
(`recorded`); otherwise this pass scans the student as it is.
"""

from __future__ import annotations

import math

from torch import nn

from compress.arch.base import Adapter
from compress.errors import NumericError, UserError
from compress.passes.base import Pass, RunContext
from compress.passes.importance import ImportanceResult, scan
from compress.passes.remove_blocks_budget import (block_sizes, check_explicit, drop_placeholders, none_where,
                                                one_of, per_group, reads_none, removes_nothing, resolve_budget,
                                                run_budgets, to_current, too_many, uneven, without_hidden)
from compress.passes.remove_blocks_config import RemoveBlocksConfig, _biased, check_named
from compress.passes.remove_blocks_learned import (learn_removal, learning_bytes, pattern_count, value,
                                                   window_key)
from compress.passes.remove_blocks_records import (merge_report, removal_line, renumber_block_scores,
                                                   renumber_layer_records)
from compress.passes.removed_blocks import (PLANNED_ATTR, planned_blocks, possible_counts, taken_unplaced,
                                            teacher_view, with_removal)
from compress.report import console, note
from compress.stream_refusals import NotStreamable, Refusal
from compress.words import counted


# ---- choosing by importance ---------------------------------------------------------------------
def least_important(scores: dict[tuple[str, int], float], counts: dict[str, int], k: int,
                    groups: set[str] | None = None) -> dict[str, list[int]]:
    """The k lowest-scoring blocks among `groups` (all if None), never the last block of a group."""
    drop: dict[str, list[int]] = {g: [] for g in counts}
    for (g, i), _ in sorted(scores.items(), key=lambda kv: kv[1]):
        if sum(map(len, drop.values())) == k:
            break
        if (groups is None or g in groups) and len(drop[g]) + 1 < counts[g]:
            drop[g].append(i)
    return {g: sorted(v) for g, v in drop.items() if v}


def scores_from(result: ImportanceResult, criterion: str, block_map: dict[str, list[int]]):
    """{(group, current index): score} from a result keyed by teacher index; None if it lacks the
    criterion or scanned other blocks than the current ones (a block missing, or a scan of the
    model before an earlier removal: each block's score depends on the blocks around it)."""
    by_teacher = {(b.group, b.teacher_index): b.score(criterion) for b in result.blocks}
    if set(by_teacher) != {(g, t) for g, teacher in block_map.items() for t in teacher}:
        return None
    scores = {}
    for g, teacher in block_map.items():
        for i, t in enumerate(teacher):
            s = by_teacher.get((g, t))
            if s is None or math.isnan(s):
                return None
            scores[(g, i)] = s
    return scores


def recorded(ctx: RunContext, criterion: str, block_map: dict[str, list[int]]):
    """The scores an importance pass recorded in `ctx.report`, if they still describe the student:
    no pass that changes weights (`Pass.changes_weights`: svd, distill, a removal) ran since it
    scanned, and it scored `criterion` for exactly the current blocks; None (with a note when a
    scan is there but stale) otherwise."""
    record = ctx.report.get("importance")
    if record is None:
        return None
    if record.get("student_version") != ctx.student_version:
        note("remove_blocks: the importance pass scored the student "
             "before a later pass changed its weights; scanning the student as it is now "
             "(a scan is reused when the importance pass follows the passes that change weights)")
        return None
    return scores_from(ImportanceResult.from_dict(record), criterion, block_map)


def compose(block_map: dict[str, list[int]], keep: dict[str, list[int]]) -> dict[str, list[int]]:
    """student -> teacher after removing: keep[g] are indices into the current (mapped) blocks."""
    return {g: [block_map[g][i] for i in keep[g]] for g in block_map}


# ---- the pass -----------------------------------------------------------------------------------
class RemoveBlocksPass(Pass):
    name = "remove_blocks"
    config_cls = RemoveBlocksConfig
    needs_calibration = True  # per instance: False for explicit indices
    result_free = ("progress", "buckets")  # `idle_buckets`: no choice reads them

    def __init__(self, config):
        super().__init__(config)
        self.needs_calibration = config.blocks is None

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        """Explicit indices against the teacher's block counts; budgets against the model's."""
        self.config.validate()
        counts, key = adapter.block_counts(model), one_of(self.config)
        check_named(key, getattr(self.config, key), list(counts))
        if key == "blocks":
            teacher_counts, block_map = teacher_view(model, adapter)
            check_explicit(self.config.blocks, adapter, teacher_counts)
            drop = to_current(self.config.blocks, block_map)  # errors name the index's position
            for g, idx in drop.items():
                if len(idx) >= counts[g]:
                    raise too_many(len(idx), counts[g], g, f"blocks.{g}")
            return
        budget = resolve_budget(self.config, adapter, counts, taken_unplaced(model))
        if self.config.criterion == "learned":  # the windows can be made of the blocks left
            pattern_count(per_group(budget, counts), counts, self.config.window, window_key(self.config))

    def notes(self, model: nn.Module, adapter: Adapter) -> list[tuple[str, str, tuple]]:
        """A count or fraction that removes no block (a fraction rounded down: the smallest that
        removes one), a learned removal whose estimator is likely biased, buckets other than the
        default (`idle_buckets`) (the runner warns once, at its key, with the --sets of the keys
        each read alone)."""
        possible = possible_counts(model, adapter)  # several where earlier removals pick groups at run time
        return (removes_nothing(self.config, adapter.block_counts(model), possible) + _biased(self.config)
                + idle_buckets(self.config))

    def check_streaming(self) -> None:
        """Streams: explicit indices (blocks are only renumbered), the cosine proxy (one streamed
        forward per batch) and the skip scan (each block read once per batch); not criterion learned,
        which trains through the whole model."""
        if self.config.blocks is None and self.config.criterion == "learned":  # named by its key, as svd's
            raise NotStreamable(self.name, [Refusal("criterion", "learned", "trains through the whole model",
                                                    "scan or proxy")])

    def plan(self, model: nn.Module, adapter: Adapter, calibration_rows: int | None = None) -> dict:
        self.check(model, adapter)
        counts = adapter.block_counts(model)
        if self.config.blocks is not None:
            drop = check_explicit(self.config.blocks, adapter, teacher_view(model, adapter)[0])
            after = {g: n - len(drop.get(g, [])) for g, n in counts.items()}
            return {"remove": drop, "blocks_before": counts, "blocks_after": after}
        taken = taken_unplaced(model)
        budget = resolve_budget(self.config, adapter, counts, taken)
        after = ({g: n - budget.get(g, 0) for g, n in counts.items()} if isinstance(budget, dict)
                 else f"{counted(sum(counts.values()) - taken - budget, 'block')} in all")
        if self.config.criterion == "learned":
            return self._plan_learned(model, adapter, per_group(budget, counts), counts)
        differ = self.uneven_groups(model, adapter)  # plan's count after it is a bound
        # as `run`: one per removal (iterative) or one, none for a budget of none (`removes_nothing`);
        # before reusing an importance pass's scores
        scans = _total(budget) if self.config.iterative else min(_total(budget), 1)
        return {"remove": "chosen by importance at run time", "budget": budget,
                "criterion": self.config.criterion, "iterative": self.config.iterative,
                "blocks_before": counts, "blocks_after": after, "skip_scan": self.config.criterion == "scan",
                "scans": scans, **({"blocks_differ_in_size": differ} if differ else {}), **reads_none(scans)}

    def _plan_learned(self, model, adapter, budget: dict[str, int], counts: dict[str, int]) -> dict:
        cfg, lr = self.config, value(self.config, "learn_lr")
        # as the run resolves it, on each count it may find (earlier removals may pick groups at run time)
        runs = run_budgets(cfg, adapter, possible_counts(model, adapter)) or [(budget, counts)]
        if not any(_total(b) for b, _ in runs):  # as `learn_removal`: no window, nothing learned, no calibration
            return {"remove": "no block (a budget of none): nothing is learned", "budget": budget,
                    "criterion": "learned", "blocks_before": counts, "blocks_after": counts, **reads_none(0)}
        from compress.plan_budget import most_least  # its budget per group, fewest–most, as its block counts
        budget, have = max(runs, key=lambda run: _total(run[0]))  # the patterns of the most it may learn
        return {"remove": "learned at run time" + none_where(runs), **most_least("budget", [b for b, _ in runs]),
                "criterion": "learned", "blocks_before": counts,
                "blocks_after": {g: n - budget.get(g, 0) for g, n in counts.items()},
                "window": cfg.window or "whole group", "patterns": pattern_count(budget, have, cfg.window),
                "learn_steps": value(cfg, "learn_steps"), "learn_lr": lr, "estimator": value(cfg, "estimator"),
                "learning_holds": learning_bytes(model, adapter, lr, cfg.learn_rank, value(cfg, "estimator")),
                **({"blocks_differ_in_size": differ} if (differ := self.uneven_groups(model, adapter)) else {})}

    def apply_planned(self, model: nn.Module, adapter: Adapter) -> None:
        """Removal on plan's meta model. A per-group count or fraction removes that many blocks of
        each group as placeholders (`placeholders`): which blocks go is decided at run time; where
        the group's blocks are equal the count after is exact, else the smallest go and the blocks
        dropped are kept in `spare` (block_sizes) for plan's bound (plan_budget.spare_bound).
        Later explicit (teacher) indices are then checked against the blocks that may still be there."""
        planned = planned_blocks(model, adapter)
        counts = adapter.block_counts(model)
        if self.config.blocks is None:
            budget = self._placed_budget(model, adapter, counts)
            if isinstance(budget, dict):
                planned = drop_placeholders(model, adapter, planned, budget)
                pending = {g: planned["pending"].get(g, 0) + budget.get(g, 0) for g in counts}
                planned = dict(planned, pending=pending)
            groups = [g for g, k in budget.items() if k] if isinstance(budget, dict) else list(counts)
            if not isinstance(budget, dict):
                planned = dict(planned, taken=planned.get("taken", 0) + budget)
            setattr(model, PLANNED_ATTR, with_removal(planned, groups, run_time=True))
            return
        drop = to_current(self.config.blocks, planned["block_map"])  # positions in the map
        unknown = {g: len(idx) for g, idx in drop.items() if planned["pending"].get(g)}  # placed at run time
        known = {g: idx for g, idx in drop.items() if g not in unknown}
        planned = drop_placeholders(model, adapter, without_hidden(planned, self.config.blocks), unknown, known)
        block_map = {g: [t for i, t in enumerate(teacher) if i not in drop.get(g, [])]
                     for g, teacher in planned["block_map"].items()}
        setattr(model, PLANNED_ATTR, with_removal(dict(planned, block_map=block_map),
                                                  [g for g, idx in drop.items() if idx], run_time=False))

    def _placed_budget(self, model: nn.Module, adapter: Adapter, counts: dict[str, int]):
        """The budget as {group: k} where plan can place it (per group, or one group takes the
        count); an int over several groups (`unplaced`)."""
        budget = resolve_budget(self.config, adapter, counts, taken_unplaced(model))
        if not isinstance(budget, dict) and len(counts) == 1:
            return {next(iter(counts)): budget}
        return budget

    def uneven_groups(self, model: nn.Module, adapter: Adapter) -> list[str]:
        """The groups plan places a count or fraction in whose blocks differ in size (or an earlier
        such removal made plan's count of them a bound): its total after is a bound, not a count."""
        if self.config.blocks is not None:
            return []
        budget, spare = self._placed_budget(model, adapter, adapter.block_counts(model)), planned_blocks(model, adapter)
        if not isinstance(budget, dict):
            return []
        return [g for g, k in budget.items()
                if k and (g in spare.get("spare", {}) or uneven(block_sizes(model, adapter, g)))]

    def unplaced(self, model: nn.Module, adapter: Adapter) -> int:
        """A count or fraction over several groups: which groups lose the blocks is decided by
        importance at run time (`apply_planned` cannot place them)."""
        if self.config.blocks is not None:
            return 0
        budget = self._placed_budget(model, adapter, adapter.block_counts(model))
        return 0 if isinstance(budget, dict) else budget

    def run(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        adapter = ctx.adapter
        before = adapter.block_counts(model)
        start = ctx.block_map or {g: list(range(n)) for g, n in before.items()}
        block_map = start
        record = {"criterion": None, "iterative": False, "order": []}
        if self.config.blocks is not None:
            teacher = ctx.teacher if ctx.teacher is not None else model  # indices are teacher indices
            check_explicit(self.config.blocks, adapter, adapter.block_counts(teacher))
            drop = to_current(self.config.blocks, block_map)
            block_map = self._remove(model, adapter, block_map, drop, record, ctx.blocks)
        elif self.config.criterion == "learned":
            budget = per_group(resolve_budget(self.config, adapter, before), before)
            drop, record["learned"] = learn_removal(model, ctx, budget, self.config, block_map)
            block_map = self._remove(model, adapter, block_map, drop, record, ctx.blocks)
        elif self.config.iterative:  # a budget of none scans nothing (`notes` warned of it)
            block_map = self._greedy(model, ctx, block_map, resolve_budget(self.config, adapter, before),
                                     record)
        elif _total(budget := resolve_budget(self.config, adapter, before)):  # none: no scan, as above
            scores = self._scores(model, ctx, block_map, record)
            block_map = self._remove(model, adapter, block_map, _choose(scores, before, budget), record,
                                     ctx.blocks)
        if self.config.blocks is None:
            record.update(criterion=self.config.criterion, iterative=self.config.iterative)
        removed = {g: sorted(set(start[g]) - set(keep)) for g, keep in block_map.items()}
        ctx.block_map = block_map
        renumber_layer_records(ctx.report, adapter, start, block_map)
        renumber_block_scores(ctx.report, start, block_map)
        this = dict(record, removed=removed, blocks_before=before, blocks_after=adapter.block_counts(model))
        ctx.report["remove_blocks"] = merge_report(ctx.report.get("remove_blocks"), this)
        console.print(removal_line(this), highlight=False, markup=False)
        return model

    # ---- steps ----
    def _remove(self, model, adapter, block_map, drop, record, loader=None) -> dict[str, list[int]]:
        """loader: streamed block weights (CheckpointBlocks), renumbered like the model."""
        keep = adapter.remove_blocks(model, drop)  # {group: kept current indices}
        if loader is not None:
            loader.renumber(keep)
        record["order"] += [f"{g}.{block_map[g][i]}" for g, idx in drop.items() for i in idx]
        return compose(block_map, keep)

    def _scores(self, model, ctx: RunContext, block_map, record: dict | None = None
                ) -> dict[tuple[str, int], float]:
        """Scores of the current blocks: an importance pass's (`recorded`) when `record` is given
        (the first or only choice; it notes whether they were reused), else a scan of the student."""
        criterion = self.config.criterion
        if record is not None:
            scores = recorded(ctx, criterion, block_map)
            record["reused_importance"] = scores is not None
            if scores is not None:
                return scores
        if ctx.calibration_inputs is None:
            raise UserError("remove_blocks: choosing blocks by importance needs calibration inputs")
        result = scan(model, ctx.adapter, ctx.calibration_inputs(), self.config.buckets,
                      progress=False, skips=criterion == "scan", block_map=block_map, loader=ctx.blocks,
                      columns=False)  # the choice reads scores over all inputs: no bucket is shown
        scores = scores_from(result, criterion, block_map)
        if scores is None:
            raise NumericError(f"remove_blocks: the {criterion} scan scored a block NaN "
                               "(non-finite or all-zero predictions on the calibration inputs)")
        return scores

    def _greedy(self, model, ctx, block_map, budget, record) -> dict[str, list[int]]:
        """Remove one block at a time, re-scoring the pruned model before each choice."""
        left = dict(budget) if isinstance(budget, dict) else None
        for step in range(sum(budget.values()) if left is not None else budget):
            counts = ctx.adapter.block_counts(model)
            scores = self._scores(model, ctx, block_map, record if step == 0 else None)
            groups = {g for g, k in left.items() if k > 0} if left is not None else None
            drop = least_important(scores, counts, 1, groups)
            block_map = self._remove(model, ctx.adapter, block_map, drop, record, ctx.blocks)
            if left is not None:
                left[next(iter(drop))] -= 1
        return block_map


def idle_buckets(config: RemoveBlocksConfig) -> list[tuple[str, str, tuple]]:
    """`buckets` other than its default changes nothing: the choice reads each block's score over all
    inputs (importance `_result` sums the buckets), learned scans nothing, and the pass records no
    bucket; a recipe that sets it is warned (the key stays: a run's recipe.yaml writes it)."""
    if config.buckets == RemoveBlocksConfig.buckets:
        return []
    return [("buckets", f"remove_blocks.buckets {config.buckets} changes nothing: the blocks are chosen by "
                        "each block's score over all calibration inputs, whatever the buckets (an importance "
                        "pass's buckets split the scores it shows by timestep); leave it out", ())]


def _total(budget) -> int:
    return sum(budget.values()) if isinstance(budget, dict) else budget


def _choose(scores, counts: dict[str, int], budget) -> dict[str, list[int]]:
    """One-shot: per group budgets pick within each group; an int picks over all blocks."""
    if not isinstance(budget, dict):
        return least_important(scores, counts, budget)
    drop = {}
    for g, k in budget.items():
        drop.update(least_important(scores, counts, k, {g}) if k else {})
    return drop
