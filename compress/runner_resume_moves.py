"""Passes inserted, removed or moved between a saved stage's recipe and this one, in words, for what
--resume and a refused rerun say the recipe changed in (runner_resume.recipe_changes): a pass put in
front of a finished recipe read as an edit of every pass after it ('passes.0.svd.ranks.modulation,
passes.0.svd.targets.0, ...'), now 'an svd pass inserted at passes.0'. Imports no torch."""

from __future__ import annotations

import json
from difflib import SequenceMatcher


def pass_moves(before: list, now: list, done: int | None = None) -> list[str] | None:
    """What differs between two recipes' pass lists, each pass in its canonical form (a JSON string of
    {name: options}, as --resume compares it), where a pass was inserted, removed or moved: those in
    words ('an svd pass inserted at passes.0'), aligned by content (difflib.SequenceMatcher), and the
    keys of the passes edited beside them (numbered as now: 'passes.1.svd.ratio'). With `done`, only
    what touches the first `done` passes (those a resume keeps). None where no pass was inserted,
    removed or moved (edits alone: the caller's keys say it)."""
    ops = SequenceMatcher(None, before, now, autojunk=False).get_opcodes()
    limit = max(len(before), len(now)) if done is None else done
    removed, inserted, pairs = [], [], []
    for tag, i1, i2, j1, j2 in ops:
        if tag != "equal":
            paired = _paired(before, now, range(i1, i2), range(j1, j2))
            pairs += [(i, j) for i, j in paired if min(i, j) < limit]
            removed += [i for i in range(i1, i2) if i not in dict(paired)]
            inserted += [j for j in range(j1, j2) if j not in {j for _, j in paired}]
    words = _words(before, now, removed, inserted, limit)
    if not words:
        return None
    return words + [k for i, j in pairs for k in differing(json.loads(before[i]), json.loads(now[j]), f"passes.{j}")]


def _paired(before: list, now: list, was: range, is_: range) -> list[tuple[int, int]]:
    """The (before, now) indices of the passes of a changed stretch taken as edits of one another: each
    pass, in order, with the later pass of its kind it differs from in the fewest keys (a pass left
    unpaired was removed or inserted)."""
    pairs, after = [], is_.start
    for i in was:
        same = [j for j in range(after, is_.stop) if _kind(now[j]) == _kind(before[i])]
        if same:
            j = min(same, key=lambda j: len(differing(json.loads(before[i]), json.loads(now[j]))))
            pairs.append((i, j))
            after = j + 1
    return pairs


def differing(a, b, prefix: str = "") -> list[str]:
    """The keys (dotted paths under `prefix`) where two nested values differ, sorted."""
    x, y = flat(a, prefix), flat(b, prefix)
    return sorted(k for k in x.keys() | y.keys() if x.get(k, "<none>") != y.get(k, "<none>"))


def flat(data, prefix: str = "") -> dict:
    """{'a.b.0.c': value} of nested mappings and lists."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix: data}
    return {k: v for key, value in items for k, v in flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}


def _words(before: list, now: list, removed: list[int], inserted: list[int], limit: int) -> list[str]:
    """'an svd pass moved from passes.2 to passes.0' for a removed pass of the same form as an inserted one,
    'an svd pass inserted at passes.0' (now's index), 'a distill pass removed from passes.3' (before's), of
    those that touch the first `limit` passes."""
    words = []
    for i in removed:
        j = next((j for j in inserted if now[j] == before[i]), None)
        if j is not None:
            inserted.remove(j)
        if i >= limit and (j is None or j >= limit):
            continue  # after the passes compared
        where = f"removed from passes.{i}" if j is None else f"moved from passes.{i} to passes.{j}"
        words.append(f"{_a_pass(before[i])} {where}")
    return words + [f"{_a_pass(now[j])} inserted at passes.{j}" for j in inserted if j < limit]


def pass_name(spec) -> str | None:
    """The pass name of a recipe's pass spec ({name: options}), None where it is not one."""
    return next(iter(spec)) if isinstance(spec, dict) and len(spec) == 1 else None


def _kind(form: str) -> str:
    """The pass name of a canonical form ('{"svd": {...}}' -> 'svd'); '' where it has none."""
    return pass_name(json.loads(form)) or ""


def _a_pass(form: str) -> str:
    """'an svd pass', 'a distill pass', 'an importance pass' ('a pass' where the form names none)."""
    kind = _kind(form)
    if not kind:
        return "a pass"
    return f"{'an' if kind[0] in 'aeiou' or kind == 'svd' else 'a'} {kind} pass"
