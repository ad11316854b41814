"""`plan`'s bounds where a recipe decides at run time: svd passes whose ranks are decided after
calibration (allocation global or energy), their budgets, and removals whose blocks importance picks,
so the planned totals and distill's student are upper bounds that hold; and a removal's blocks per
group after such removals, as the ranges the run may find (`count_ranges`)."""

from __future__ import annotations

from compress.passes.svd import LATER
from compress.report import param_count
from compress.words import counted


def decided_later(p, step: dict, model, adapter) -> dict:
    """An svd pass whose ranks are decided after calibration (allocation global or energy): its
    undecided targets (left dense on the meta model), their roles and dense parameters, and for
    `global` the kept-parameter budget it spends them on (at most: alloc.global_greedy never
    exceeds it), alloc.global_budget of the same targets as the run."""
    from compress.alloc import budget_for_ratio, global_budget, trust_ranges
    from compress.passes.svd_targets import shape_spec

    names = {name for name, rank in step["ranks"].items() if rank == LATER}
    infos = [i for i in adapter.linears(model) if i.name in names]
    specs = [shape_spec(i) for i in infos]
    entry = {"pass": step["pass"], **{k: step[k] for k in ("line", "set") if k in step},
             "allocation": step.get("allocation"), "roles": sorted({i.role for i in infos}),
             "layers": sorted(names), "dense_params": sum(s.params(None) for s in specs),
             "blocks": adapter.block_counts(model)}
    if step.get("allocation") == "global":
        c = p.config
        ranges = trust_ranges(specs, c.ratio, c.multiple, c.trust_region) if c.trust_region else None
        entry["budget_params"] = (global_budget(specs, c.ratio, c.multiple, ranges, c.trust_region)
                                  or budget_for_ratio(specs, c.ratio))
        entry["ratio"] = p.config.ratio
    return entry


def budgeted_layers(entry: dict, model, adapter) -> dict | None:
    """{module: dense parameters} of a global pass's targets (`entry`, decided_later) as it leaves
    them dense on the meta model: the modules themselves (held, so no other takes their id), so a
    later removal, which renumbers the blocks, takes those of the blocks it removes and leaves the
    rest counted. None for a pass without a budget."""
    from compress.passes.svd_targets import shape_spec

    if "budget_params" not in entry:
        return None
    infos = {i.name: i for i in adapter.linears(model)}
    return {model.get_submodule(n): shape_spec(infos[n]).params(None) for n in entry["layers"]}


def retargeted(budgeted: list, step: dict, named: dict) -> list:
    """`budgeted` less (None) the layers of a pass that `step` targets again (`named`: the model's
    modules as the step found it): what that pass keeps is no longer its budget's to bound."""
    hit = {named[n] for n in step.get("targets", ()) if n in named}
    return [None if layers is None or hit & set(layers) else layers for layers in budgeted]


def smallest_blocks(model, adapter, n: int, budgeted: list, shares: list | None = None) -> int:
    """The parameters the n smallest blocks of the planned model hold for certain: what removals
    whose groups are decided at run time (`Pass.unplaced`, left on the meta model) take off at least.
    A global pass's targets in them (`budgeted`) count only its `shares` of them (per entry: its
    ratio where every such removal comes before it, whose budget is then of the targets left, so a
    block removed takes that share of the budget with it; else 0: the budget bounds them already,
    budget_savings, and what it keeps of a block may be little)."""
    shares = shares or [0.0] * len(budgeted)
    sizes = sorted(param_count(b) - sum(_bounded_in(b, layers, share) for layers, share in zip(budgeted, shares))
                   for g in adapter.block_counts(model) for b in adapter.blocks(model, g))
    return sum(sizes[:n])


def _bounded_in(block, layers: dict | None, share: float) -> int:
    """What a block's count leaves out of one global pass's targets in it (`layers`, budgeted_layers):
    their dense parameters, less the `share` of them its budget loses with the block (floored, as
    alloc.budget_for_ratio floors: the budget of the targets left is at most the full one less it)."""
    if not layers:
        return 0
    dense = sum(layers.get(m, 0) for m in block.modules())  # (its targets in this block)
    return dense - int(share * dense)


def removal_shares(later: list[dict], removals_before: list[int], removals: int) -> list[float]:
    """Per entry of `later`: its ratio where all `removals` (unplaced removals) came before the pass
    (`removals_before`: how many did), so its run's budget is of the targets they leave; else 0."""
    return [e.get("ratio", 0.0) if removals and before == removals else 0.0
            for e, before in zip(later, removals_before)]


def budget_savings(later: list[dict], budgeted: list, model) -> int:
    """What the global passes of `later` save at least, below the meta model's count (their targets
    dense): what is left of each one's targets (`budgeted`; a later removal may take some) dense,
    less its budget, which bounds what it keeps of all of them (alloc.global_greedy never exceeds
    it). None (their layers counted dense, a bound still) for a pass that decides without a budget
    (energy), or one whose targets a later pass factorizes again (`retargeted`)."""
    present = set(model.modules())
    saved = 0
    for entry, layers in zip(later, budgeted):
        if layers is not None:
            saved += max(sum(n for m, n in layers.items() if m in present) - entry["budget_params"], 0)
    return saved


def distill_student(model, later: list[dict], budgeted: list, train: str, spare: int = 0) -> dict:
    """{"params": at most, "trained": at most}: the student a distill pass gets from the passes before
    it (the meta model now, less what their global budgets save at least, budget_savings) and of
    those the parameters `train` trains (all; factors: the LowRankLinear layers', plus the layers a
    budgeted pass may still factorize; non_factors: the rest). `spare`: what removals of blocks
    that differ in size may leave above the meta model (spare_bound)."""
    from compress.distill_utils import factor_param_names

    params = param_count(model) - budget_savings(later, budgeted, model) + spare
    named = dict(model.named_parameters())
    factors = sum(named[n].numel() for n in factor_param_names(model))
    maybe = sum(entry.get("budget_params", entry["dense_params"]) for entry in later)  # what they may factorize
    trained = {"all": params, "factors": min(params, factors + maybe), "non_factors": params - factors}[train]
    return {"params": params, "trained": trained}


def spare_bound(model, adapter, planned: dict) -> tuple[int, dict[str, int]]:
    """(parameters, {role: linears' parameters}) that removals picked at run time from groups whose
    blocks differ in size may leave above plan's meta model, which dropped the smallest in their
    place (`planned["spare"]`: per group the sizes of the blocks dropped, remove_blocks_budget.
    block_sizes): per group, the largest as many blocks as are left among those left and those
    dropped, less those left. A block never grows after it is dropped, so what it held then bounds it."""
    from compress.passes.remove_blocks_budget import block_sizes

    extra, roles = 0, {}
    for group, dropped in planned.get("spare", {}).items():
        left = block_sizes(model, adapter, group)
        pool = left + dropped
        extra += _above([b["params"] for b in pool], len(left))
        for role in {r for b in pool for r in b["roles"]}:
            roles[role] = roles.get(role, 0) + _above([b["roles"].get(role, 0) for b in pool], len(left))
    return extra, roles


def _above(sizes: list[int], n: int) -> int:
    """The largest n of `sizes` less its first n (the blocks left, the dropped after them)."""
    return sum(sorted(sizes, reverse=True)[:n]) - sum(sizes[:n])


# ---- a removal's blocks per group where earlier removals pick their groups at run time -----------
RANGED = ("blocks_before", "blocks_after", "budget")  # a removal's counts per group; `_min` where they vary


def count_ranges(step: dict, before: list[dict[str, int]], after: list[dict[str, int]]) -> dict:
    """A removal's plan (`step`) with its blocks per group before and after it as the run may find
    them (`before`: removed_blocks.possible_counts; `after`: remove_blocks_budget.counts_after; several
    after removals that pick their groups at run time): blocks_before and blocks_after the most each
    group may have, blocks_before_min and blocks_after_min the fewest (only where some differ); a
    count over all blocks keeps "N blocks in all" ("1 block in all", "N–M blocks in all" where the total varies)."""
    out = dict(step, **most_least("blocks_before", before))
    if not after:  # refused for every count it may find (runner_checks.SpreadRemovals said so)
        return out
    if isinstance(step.get("blocks_after"), dict):
        return dict(out, **most_least("blocks_after", after))
    totals = sorted({sum(n.values()) for n in after})
    span = counted(totals[0], "block") if len(totals) == 1 else f"{totals[0]}–{totals[-1]} blocks"
    return dict(out, blocks_after=f"{span} in all")


def most_least(key: str, possible: list[dict[str, int]]) -> dict:
    """{key: the most each group may have} and, where some group may have fewer, {key_min: the fewest}."""
    most = {g: max(n[g] for n in possible) for g in possible[0]}
    least = {g: min(n[g] for n in possible) for g in possible[0]}
    return {key: most} if least == most else {key: most, f"{key}_min": least}


def ranged_keys(step: dict) -> set[str]:
    """The keys of `RANGED` a step gives as ranges (with a `_min`: `count_ranges`)."""
    return {k for k in RANGED if f"{k}_min" in step}


def range_words(least: dict[str, int], most: dict[str, int]) -> str:
    """'{"double": 1–2, "single": 2}': each group's fewest–most blocks, one number where they agree."""
    return "{" + ", ".join(f'"{g}": {least[g]}' + (f"–{n}" if n != least[g] else "") for g, n in most.items()) + "}"


def blocks_left(possible: list[dict[str, int]]) -> dict:
    """Plan's blocks after every pass from the block counts per group the run may have then
    (removed_blocks.possible_counts: several after removals that pick their groups at run time):
    blocks_after the most each group may have, blocks_after_min the fewest; blocks_after_total the
    most in all, blocks_after_total_min the fewest; each `_is` "exact" where they agree, else "at most"."""
    most = {g: max(n[g] for n in possible) for g in possible[0]}
    least = {g: min(n[g] for n in possible) for g in possible[0]}
    totals = [sum(n.values()) for n in possible]
    return {"blocks_after": most, "blocks_after_min": least, "blocks_after_is": "exact" if least == most else "at most",
            "blocks_after_total": max(totals), "blocks_after_total_min": min(totals),
            "blocks_after_total_is": "exact" if min(totals) == max(totals) else "at most"}
