"""A saved stage's recorded recipe as the dit-compress that saved it ran it (`as_ran`), which --resume compares
with the recipe now (runner_resume.recipe_changes): a key an older dit-compress did not write holds the value
it ran (`MOVED`'s where the key's default has moved since, else today's default: a key comes with the default
that runs as before), and a key at the default it had then, which a newer dit-compress moved (`MOVED`), is
read as today's default, not as the user's change. Whether the stage's pass then runs as the recipe now does
is that key's own check, before the run folder is touched (svd.objective: runner_checks_objective.check_resumed,
once auto is resolved). Imports no torch (runner_resume's callers read run folders before torch is in)."""

from __future__ import annotations

import dataclasses

from compress.recipe_convert import field_default
from compress.runner_resume_moves import pass_name

# (pass, key) -> (its default before, the last dit-compress version of that default)
MOVED = {("svd", "objective"): ("branches", "0.1.0")}


def as_ran(before: list, now: list, passes) -> list:
    """The pass specs `before` (a saved stage's recorded recipe's, [{name: options}]) as its run ran them,
    beside the resolved specs `now` (every key) of the pass objects `passes`, paired by index where the
    pass is the same: a key `before` lacks holds its older value (`MOVED`), or today's where the recipe
    now holds the default (the key was added since); a `MOVED` key at its older default reads as today's
    where the recipe now holds today's."""
    out = []
    for i, spec in enumerate(before):
        p, is_ = (passes[i], now[i]) if i < min(len(passes), len(now)) else (None, None)
        name = pass_name(spec)
        if p is None or name != p.name or pass_name(is_) != name or not isinstance(spec[name], dict) \
                or not isinstance(is_[name], dict) or not dataclasses.is_dataclass(getattr(p, "config", None)):
            out.append(spec)
            continue
        out.append({**spec, name: _filled(name, spec[name], is_[name], p.config)})
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

