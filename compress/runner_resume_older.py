"""A saved stage's recorded recipe as the dit-compress that saved it ran it (`as_ran`), which --resume compares
with the recipe now (runner_resume.recipe_changes): a key an older dit-compress did not write holds the value
it ran (`MOVED`'s where the key's default has moved since, else today's default: a key comes with the default
that runs as before), and a key at a `MOVED` older default is read as today's default where the recipe now
holds that, not as the user's change, whichever version saved the stage (nothing is gated on `MOVED`'s
version, which only runner_checks_objective's refusal names): a stage whose recipe set that value itself reads
so too, and the stage's report tells the two apart (svd's `objective_given`) for that key's own check below; an
svd pass the stage ran under `objective: auto` is read as the objective auto ran it as (its report's svd
summary) where the recipe now sets that objective itself (`ran_objective`: the same model). Whether the
stage's pass then runs as the recipe now does is that key's own check, before the run folder is touched
(svd.objective: runner_checks_objective.check_resumed, once auto is resolved). Imports no torch
(runner_resume's callers read run folders before torch is in)."""

from __future__ import annotations

import dataclasses

from compress.passes.svd_objective import AUTO
from compress.recipe_convert import field_default
from compress.runner_resume_moves import pass_name

# (pass, key) -> (its default before, the last dit-compress version of that default: named in words only,
# runner_checks_objective.BEFORE_AUTO; `as_ran` reads the older default as today's whichever version saved it)
MOVED = {("svd", "objective"): ("branches", "0.1.0")}


def as_ran(before: list, now: list, passes, report: dict | None = None) -> list:
    """The pass specs `before` (a saved stage's recorded recipe's, [{name: options}]) as its run ran them,
    beside the resolved specs `now` (every key) of the pass objects `passes`, paired by index where the
    pass is the same: a key `before` lacks holds its older value (`MOVED`), or today's where the recipe
    now holds the default (the key was added since); a `MOVED` key at its older default reads as today's
    where the recipe now holds today's (whichever version saved it); svd.objective auto as what it ran as (`report`: the stage's,
    `ran_objective`) where the recipe now sets that."""
    ran = _ran_objectives(before, report)
    out = []
    for i, spec in enumerate(before):
        p, is_ = (passes[i], now[i]) if i < min(len(passes), len(now)) else (None, None)
        name = pass_name(spec)
        if p is None or name != p.name or pass_name(is_) != name or not isinstance(spec[name], dict) \
                or not isinstance(is_[name], dict) or not dataclasses.is_dataclass(getattr(p, "config", None)):
            out.append(spec)
            continue
        out.append({**spec, name: ran_objective(_filled(name, spec[name], is_[name], p.config), is_[name], ran[i])})
    return out


def ran_objective(opts: dict, now: dict, ran: str | None) -> dict:
    """An svd pass's options `opts` (a saved stage's), which ran under svd.objective auto as `ran` (its
    report's; None: not recorded, or not an svd pass), with objective `ran` where the recipe's options `now`
    set it: auto run as branches and an explicit branches now make the same model (auto run as another
    objective stays auto, so the recipes differ)."""
    if ran is not None and opts.get("objective") == AUTO and now.get("objective") == ran != AUTO:
        return {**opts, "objective": ran}
    return opts


def _ran_objectives(before: list, report: dict | None) -> list:
    """Per pass spec of `before`, the objective its svd pass ran as (the stage `report`'s svd summary of each
    svd pass, in order), None for the other passes and those the report does not record."""
    ran = (((report or {}).get("svd") or {}).get("passes")) if isinstance(report, dict) else None
    ran, out, j = ran if isinstance(ran, list) else [], [], 0
    for spec in before:
        svd = pass_name(spec) == "svd"
        record = ran[j] if svd and j < len(ran) and isinstance(ran[j], dict) else {}
        j += svd
        out.append(record.get("objective") if isinstance(record.get("objective"), str) else None)
    return out


def _filled(name: str, opts: dict, now: dict, config) -> dict:
    """`as_ran` of one pass's options `opts` beside today's `now` of its `config`."""
    opts = dict(opts)
    for f in dataclasses.fields(config):
        k, today = f.name, field_default(f)
        older = MOVED.get((name, k), (None,))[0]
        if k not in opts and (name, k) in MOVED:
            opts[k] = older
        elif k not in opts and k in now and now[k] == today:
            opts[k] = now[k]
        if (name, k) in MOVED and opts.get(k) == older and now.get(k) == today:
            opts[k] = now[k]  # the default moved, not the user's recipe
    return opts

