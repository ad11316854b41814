"""`remove_blocks` budgets and explicit indices, checked against the model's block counts: a
count or fraction per group or over all blocks (`resolve_budget`), teacher indices per group
(`check_explicit`) and their current positions after earlier removals (`to_current`). Errors are
BadValues naming the recipe key (count.single, blocks.double.1), so they point at its line. On plan's
meta model, the blocks a budget removes at run time are dropped as placeholders (`drop_placeholders`)."""

from __future__ import annotations

import itertools
import math
import re

from compress.arch.base import Adapter
from compress.errors import BadValue, UserError
from compress.passes.removed_blocks import AfterRemoval
from compress.words import counted


BUDGET_KEYS = ("blocks", "count", "fraction")  # what a removal removes: exactly one of them


def one_of(config) -> str:
    """Which of blocks, count, fraction a RemoveBlocksConfig gives (exactly one); else a BadValue at
    the last of them given (count where none is), reading those three alone."""
    given = [k for k in BUDGET_KEYS if getattr(config, k) is not None]
    if len(given) != 1:
        raise BadValue(given[-1] if given else "count", "remove_blocks: give exactly one of blocks, count, fraction"
                       + (f" (got {', '.join(given)})" if given else ""), reads=BUDGET_KEYS)
    return given[0]


def _k_of(key: str, value, n: int, path: str, group: str | None = None) -> int:
    """path: the recipe key the value came from (count, count.double, ...), for the error's line;
    group: the group it is of (None: over all blocks)."""
    if key == "count":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadValue(path, f"remove_blocks.{path} must be a non-negative integer, got {value!r}",
                           reads=(), group=group)
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise BadValue(path, f"remove_blocks.{path} must be a number in [0, 1), got {value!r}",
                       reads=(), group=group)
    return math.floor(value * n + 1e-9)


def too_many(k: int, n: int, group: str, path: str, teacher: bool = False) -> BadValue:
    """n: the group's blocks now, which may be what an earlier removal left (an `AfterRemoval`: the
    runner says so), or with `teacher` the teacher's. 'removing 2 of 2 blocks would leave group 'g'
    empty'; of a group of one block 'removing the one block of group 'g' would leave it empty' (as
    runner_kept.saved_in_words' 'the one pass'); more than it has, 'removing 3 blocks of group 'g', which
    has 2, ...', not '3 of 2 blocks'."""
    error = BadValue if teacher else AfterRemoval
    if k > n:
        removing = f"removing {k} blocks of group '{group}', which has {'one' if n == 1 else n}, would leave it empty"
    elif n == 1:
        removing = f"removing the one block of group '{group}' would leave it empty"
    else:
        removing = f"removing {k} of {n} blocks would leave group '{group}' empty"
    return error(path, f"remove_blocks: {removing}; keep {'it' if n == 1 else 'at least one'}", reads=(), group=group)


def _group(adapter: Adapter, group: str, path: str) -> str:
    """The group's name; an unknown group is a BadValue on `path` naming the groups."""
    try:
        return adapter.group(group).name
    except BadValue:
        raise
    except UserError as e:
        raise BadValue(path, str(e), reads=()) from None


def resolve_budget(config, adapter: Adapter, counts: dict[str, int], taken: int = 0):
    """-> {group: k} (per group) or int (over all blocks). Raises UserError for impossible budgets.
    `taken`: blocks of `counts` earlier removals take at run time from groups not known yet
    (removed_blocks.taken_unplaced): a count or fraction over all blocks is of the rest."""
    key = one_of(config)
    value = getattr(config, key)
    if isinstance(value, dict):
        budget = {}
        for group, v in value.items():
            _group(adapter, group, f"{key}.{group}")
            least = counts[group] - (most_taken(counts, taken, group) if key == "fraction" else 0)
            budget[group] = _k_of(key, v, least, f"{key}.{group}", group)
            if budget[group] >= counts[group]:
                raise too_many(budget[group], counts[group], group, f"{key}.{group}")
        return budget
    total = sum(counts.values()) - taken
    k = _k_of(key, value, total, key)
    if len(counts) == 1 and k >= total:
        raise too_many(k, total, next(iter(counts)), key)
    if k > total - len(counts) and not taken:  # else runner_checks.SpreadRemovals tries each spread
        per = ", ".join(f"'{g}': {n}" for g, n in counts.items())
        of = f"{k} blocks, of the {total} there are," if k > total else f"{k} of {total} blocks"
        raise AfterRemoval(key, f"remove_blocks: removing {of} would leave a group empty (groups {per}); keep at "
                                "least one per group", reads=())
    return k


def spreads(have: dict[str, int], count: int) -> list[dict[str, int]]:
    """Every way `count` blocks removed by importance over the groups (`have` blocks each) may be
    spread, {group: blocks it loses}: each group keeps at least one (remove_blocks.least_important);
    none when the groups cannot give `count`."""
    groups, out = list(have), []
    for losses in itertools.product(*(range(min(count, have[g] - 1) + 1) for g in groups[:-1])):
        last = count - sum(losses)
        if 0 <= last < have[groups[-1]]:
            out.append(dict(zip(groups, (*losses, last))))
    return out


def counts_after(config, adapter: Adapter, possible: list[dict[str, int]]) -> list[dict[str, int]]:
    """The block counts per group the run may have after a removal (`config`), from each it may have
    before it (`possible`): a budget per group or explicit blocks take theirs; a count or fraction
    over all blocks of several groups is spread as importance picks (`spreads`); counts the removal
    is refused at are left out (the run stops there). Each once, in order."""
    out = []
    for have in possible:
        try:
            budget = (resolve_budget(config, adapter, have) if config.blocks is None else
                      {_group(adapter, g, f"blocks.{g}"): len(set(idx)) for g, idx in config.blocks.items()})
        except UserError:
            continue
        for spread in [budget] if isinstance(budget, dict) else spreads(have, budget):
            after = {g: n - spread.get(g, 0) for g, n in have.items()}
            if after not in out:
                out.append(after)
    return out


def most_taken(counts: dict[str, int], taken: int, group: str) -> int:
    """The most of `taken` blocks (removed at run time from groups not known yet) that `group` may
    lose, each group keeping one: a fraction of it is of the blocks they leave, at least this few."""
    return min(taken, counts[group] - 1)


def per_group(budget, counts: dict[str, int]) -> dict[str, int]:
    """A budget as {group: k} for criterion learned, which learns a choice within each group."""
    if isinstance(budget, dict):
        return budget
    if len(counts) == 1:
        return {next(iter(counts)): budget}
    example = ", ".join(f"{g}: 1" for g in counts)
    raise BadValue("criterion", f"remove_blocks.criterion: learned takes a budget per group (count: "
                                f"{{{example}}}), not a count or fraction over all blocks", reads=BUDGET_KEYS)


def check_explicit(blocks: dict, adapter: Adapter, counts: dict[str, int]) -> dict[str, list[int]]:
    """Teacher indices per group, validated against the teacher's block counts."""
    if not isinstance(blocks, dict):
        raise BadValue("blocks", f"remove_blocks.blocks must map a group to a list of indices, got {blocks!r}",
                       reads=())
    out = {}
    for group, idx in blocks.items():
        path = f"blocks.{group}"
        n = counts[_group(adapter, group, path)]
        if not isinstance(idx, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         for i in idx):
            raise BadValue(path, f"remove_blocks.blocks.{group} must be a list of integers, got {idx!r}", reads=())
        twice = next((j for j, i in enumerate(idx) if i in idx[:j]), None)
        if twice is not None:
            raise BadValue(f"{path}.{twice}", f"remove_blocks.blocks.{group} lists block {idx[twice]} twice",
                           reads=())
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise BadValue(f"{path}.{list(idx).index(bad[0])}", f"remove_blocks: block index {bad[0]} out of "
                                                              f"range for group '{group}' ({n} blocks: 0..{n - 1})",
                           reads=(), group=group)
        if len(idx) >= n:
            raise too_many(len(idx), n, group, path, teacher=True)
        out[group] = sorted(idx)
    return out


def to_current(blocks: dict[str, list[int]], block_map: dict[str, list[int]]) -> dict[str, list[int]]:
    """Teacher indices -> indices in the current model (through student -> teacher `block_map`); one
    an earlier pass removed is an `AfterRemoval` naming its position (blocks.single.1)."""
    drop = {}
    for g, teacher in blocks.items():
        where = {t: i for i, t in enumerate(block_map[g])}
        gone = [j for j, t in enumerate(teacher) if t not in where]
        if gone:
            raise AfterRemoval(f"blocks.{g}.{gone[0]}", f"remove_blocks: block {g}.{teacher[gone[0]]} (teacher "
                                                      "index) was already removed by an earlier pass",
                               reads=(), group=g)
        drop[g] = sorted(where[t] for t in set(teacher))
    return drop


def removes_nothing(config, counts: dict[str, int],
                    possible: list[dict[str, int]] | None = None) -> list[tuple[str, str, tuple]]:
    """(recipe key, message, ()) where a count or fraction (that `resolve_budget` passed) removes no
    block: a fraction rounded down to none names the smallest that removes one; a pass that removes
    no block at all (explicit blocks too: `blocks: {blocks: []}`) says it changes nothing (a mapping
    naming no group, `count: {}`, is refused before: remove_blocks_config.check_named).
    `possible`: the counts per group the run may have by then (removed_blocks.possible_counts; default
    `counts`): a fraction that rounds down to none for some of them says for which. Each reads its
    value alone (and the model): a --set of another key of the pass is not named with it."""
    key = one_of(config)
    value = getattr(config, key)
    nothing = ", so this pass changes nothing"
    if key == "blocks":
        return [] if any(value.values()) else [(key, f"remove_blocks.blocks removes no block{nothing}", ())]
    possible = possible or [counts]
    items = list(value.items()) if isinstance(value, dict) else [(None, value)]
    rounded, totals = [], [0] * len(possible)
    for group, v in items:
        path = f"{key}.{group}" if group else key
        ns = [have[group] if group else sum(have.values()) for have in possible]
        ks = [_k_of(key, v, n, path) for n in ns]
        totals = [t + k for t, k in zip(totals, ks)]
        if none := sorted({n for n, k in zip(ns, ks) if k == 0 and v > 0}):  # a fraction, rounded down
            spare = min(ns) - (1 if group else len(counts))  # blocks it may remove: each group keeps one
            rounded.append((path, _rounded_words(path, v, group, ns, none), _smallest(min(ns), spare)))
    if not any(totals) and len(items) == 1 and rounded:
        return [(path, head + nothing + tail, ()) for path, head, tail in rounded]
    out = [(path, head + tail, ()) for path, head, tail in rounded]
    return out if any(totals) else out + [(key, f"remove_blocks.{key} removes no block{nothing}", ())]


def _rounded_words(path: str, v: float, group: str | None, ns: list[int], none: list[int]) -> str:
    """'remove_blocks.fraction.single 0.4 of 2 blocks of group 'single' rounds down to no block', of
    `ns` blocks the run may find (several after removals that pick their groups at run time: 'of the
    2–3 blocks ... rounds down to no block where it has 2'), `none` of which it rounds down for."""
    lo, hi = min(ns), max(ns)
    of = f" of group '{group}'" if group else ""
    if lo == hi:
        return f"remove_blocks.{path} {v} of {counted(lo, 'block')}{of} rounds down to no block"
    head = (f"remove_blocks.{path} {v} of the {lo}–{hi} blocks{of} that earlier removals may leave (they "
            "pick theirs at run time) rounds down to no block")
    if len(none) == len(set(ns)):
        return f"{head} however they go"
    return f"{head} where {'it has' if group else 'they are'} {none[-1]}{' or fewer' if len(none) > 1 else ''}"


def _smallest(n: int, spare: int) -> str:
    """'; the smallest fraction that removes one block is 0.17' of `n` blocks, `spare` of which may
    go; '' where none may."""
    if spare < 1:
        return ""
    digits = max(2, len(str(n)))  # two decimals, more for over a hundred blocks
    return f"; the smallest fraction that removes one block is {math.ceil(10 ** digits / n) / 10 ** digits:g}"


# ---- plan's placeholders for blocks chosen at run time -------------------------------------------
def block_sizes(model, adapter: Adapter, group: str) -> list[dict]:
    """Per block of `group`, in order: {"params": all its parameters, "roles": {role: its linears'
    parameters}}, as plan counts them (report.param_count, report.layer_rows)."""
    from compress.report import layer_rows, param_count

    kept = {row["name"]: row["params"] for row in layer_rows(model)}
    sizes = [{"params": param_count(block), "roles": {}} for block in adapter.blocks(model, group)]
    for info in adapter.linears(model):
        if info.group == group:
            roles = sizes[info.block]["roles"]
            roles[info.role] = roles.get(info.role, 0) + kept[info.name]
    return sizes


def uneven(sizes: list[dict]) -> bool:
    """Whether blocks (`block_sizes`) differ in size: then which of them a removal takes changes
    the parameters left (an output's blocks factorized at different ranks, or some dense)."""
    return any(s != sizes[0] for s in sizes)


def placeholders(sizes: list[dict], k: int) -> list[int]:
    """The k blocks plan's meta model drops for k a removal picks at run time: the last k where the
    blocks are equal (any k leave the same count); else the k smallest (the last of equal ones
    first), so what is left is the most any choice can leave (`uneven`)."""
    if not uneven(sizes):
        return list(range(len(sizes) - k, len(sizes)))
    by_size = sorted(range(len(sizes)), key=lambda i: (sizes[i]["params"], -i))
    return sorted(by_size[:k])


def drop_placeholders(model, adapter: Adapter, planned: dict, counts: dict[str, int],
                      known: dict[str, list[int]] | None = None) -> dict:
    """Drops on plan's meta model `counts[g]` placeholder blocks of each group (`placeholders`) and
    the `known` current indices; returns `planned` with the placeholders of groups whose blocks
    differ in size (or that hold spare blocks already) added to its `spare` (block_sizes), and the
    factorized linears of placeholders, which the run may keep, in its `hidden` (`factorized_in`)."""
    spare, drop = {g: list(v) for g, v in planned.get("spare", {}).items()}, dict(known or {})
    n = adapter.block_counts(model)
    hidden = {g: [_narrowed(h, counts.get(g, 0), n[g]) for h in hs] for g, hs in planned.get("hidden", {}).items()}
    for g, k in counts.items():
        sizes = block_sizes(model, adapter, g)
        drop[g] = placeholders(sizes, k)
        if k and (g in spare or uneven(sizes)):
            spare[g] = spare.get(g, []) + [sizes[i] for i in drop[g]]
        hidden[g] = hidden.get(g, []) + factorized_in(model, adapter, g, drop[g], k, planned["block_map"][g])
    adapter.remove_blocks(model, drop)
    return dict(planned, spare=spare, hidden={g: h for g, h in hidden.items() if h})


def factorized_in(model, adapter: Adapter, group: str, blocks: list[int], k: int, teacher: list[int]) -> list[dict]:
    """The factorized linears (LowRankLinear) of placeholder `blocks` of `group`, which plan's meta model
    drops for `k` blocks a removal picks at run time, though the run may keep them: {"attr", "suffix",
    "name" (as now), "teacher" (its block's teacher index, None where an earlier run-time removal made it
    unknown: `teacher`, the group's student -> teacher map, then lists more), "lo", "hi" (the positions
    its block may have after the removal)}, so a later svd pass's check still sees them
    (svd_planned.check_not_hidden)."""
    from compress.lowrank import LowRankLinear

    n = adapter.block_counts(model)[group]
    out = []
    for info in adapter.linears(model):
        if info.group == group and info.block in blocks and isinstance(model.get_submodule(info.name), LowRankLinear):
            attr, suffix = re.match(rf"(.+?)\.{info.block}\.(.+)", info.name).groups()
            known = teacher[info.block] if len(teacher) == n else None
            out.append(_narrowed({"attr": attr, "suffix": suffix, "name": info.name, "teacher": known,
                                  "lo": info.block, "hi": info.block}, k, n))
    return out


def _narrowed(hidden: dict, k: int, n: int) -> dict:
    """A hidden layer's positions (`factorized_in`) after k more of the group's n blocks go: each block
    before it may go, and n - k are left."""
    return dict(hidden, lo=max(0, hidden["lo"] - k), hi=min(hidden["hi"], n - k - 1))


def without_hidden(planned: dict, blocks: dict[str, list[int]]) -> dict:
    """`planned` less the hidden layers (`factorized_in`) of the teacher `blocks` an explicit removal
    takes: the run removes them whichever blocks the earlier removal kept."""
    hidden = {g: [h for h in hs if h["teacher"] not in blocks.get(g, ())]
              for g, hs in planned.get("hidden", {}).items()}
    return dict(planned, hidden=hidden)


def reads_none(scans: int) -> dict:
    """A plan step's {"calibrates": False} for a removal whose budget is none (`scans` 0): the run reads no
    calibration input for it (they are computed on first use), so plan's memory counts no calibration
    activations for it (plan.py); {} otherwise."""
    return {} if scans else {"calibrates": False}


def run_budgets(config, adapter: Adapter, possible: list[dict[str, int]]) -> list[tuple[dict[str, int], dict]]:
    """(budget per group, the counts it is of) for each block count per group the run may find
    (`possible`: removed_blocks.possible_counts, several after removals that pick their groups at run
    time), resolved as the run resolves it, on the counts it finds; counts it is refused at are left out."""
    out = []
    for have in possible:
        try:
            out.append((per_group(resolve_budget(config, adapter, have), have), have))
        except UserError:
            continue
    return out


def none_where(runs: list[tuple[dict[str, int], dict]]) -> str:
    """' (none where single has 3)': the counts of `runs` (`run_budgets`) at which the budget removes
    no block, by the groups it names; '' where every one removes some."""
    zeros = [(b, have) for b, have in runs if not sum(b.values())]
    if not zeros:
        return ""
    ways = dict.fromkeys(" and ".join(f"{g} has {have[g]}" for g in b) for b, have in zeros)  # once, in order
    return f" (none where {' or '.join(ways)})"
