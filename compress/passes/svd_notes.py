"""The svd pass's notes before it runs (plan and run's checks) and after it allocates: a pass whose
ranks leave every target dense, a budget of every parameter (global at ratio 1, energy 1), explicit
ranks at or above break-even, ranks floored at svd.multiple, an allocation that kept everything
dense; each as (recipe key, message, the other keys it read) for its line (Pass.notes: a --set of a
key it did not read is not named with it)."""

from __future__ import annotations

from compress.alloc import DENSE, rank_options
from compress.linalg_params import round_rank
from compress.passes.svd_targets import explicit_rank, fixed_ranks, matches, shape_spec

TARGETS = ("targets", "ignore")  # the keys that say which layers are the pass's targets


def unchanged_note(c, targets) -> tuple[str, str, tuple]:
    """(recipe key, message, keys read) for an svd pass whose fixed ranks leave all its `targets` dense
    (`_unchanged_note`), and its explicit ranks at or above break-even (`dense_ranks_note`) where svd.ranks
    is not already named the cause: one line, as floored_note joins its notes."""
    said = _unchanged_note(c, targets)
    return _joined([said] + ([dense_ranks_note(c, targets)] if said[0] != "ranks" else []))


def _unchanged_note(c, targets) -> tuple[str, str, tuple]:
    """unchanged_note's first: rounding to `c.multiple` is named the cause only where unrounded ranks
    (multiple 1) would save parameters; else the ratio (or ratios, ranks) keeps every parameter."""
    dense = f"every one of its {len(targets)} targets stays dense"
    unrounded = fixed_ranks(targets, c.allocation, c.ratio, c.ratios, c.ranks or {}, 1)
    fixed = (*TARGETS, "allocation", _ratio_key(c), "ranks")  # what fixed_ranks read, but multiple
    if c.multiple > 1 and any(r is not None for r in unrounded.values()):
        return cause_key(c, ["multiple", _ratio_key(c)]), (
            f"svd: {dense} (ranks rounded up to a multiple of {c.multiple} save no parameters at these widths), "
            f"so this pass changes nothing; lower svd.multiple or svd.{_ratio_key(c)}"), (*fixed, "multiple")
    reads = fixed  # unrounded ranks keep every parameter too: not multiple's doing
    if c.allocation == "per_role":
        key, why = cause_key(c, ["ratios"]), "svd.ratios keep every parameter of their roles"
    elif c.ranks and len(fixed_ranks(targets, "", c.ratio, None, c.ranks, 1)) == len(targets):
        key, why, reads = "ranks", "svd.ranks are at or above the rank where a factorization saves parameters", TARGETS
    else:
        key, why = "ratio", f"svd.ratio {c.ratio} keeps every parameter"
    return key, f"{why}, so {dense} and this pass changes nothing; lower svd.{key}", reads


def no_saving_rank_note(c, targets, ranks: dict) -> tuple[str, str, tuple] | None:
    """(key, note, keys read) for a budgeted pass (energy, global: ranks decided after calibration) that leaves
    every target dense whatever calibration finds: no rank in multiples of `c.multiple` saves
    parameters at its targets' widths, and its explicit ranks (`ranks`, fixed) are dense too. None otherwise."""
    free = [i for i in targets if i.name not in ranks]
    if any(r is not DENSE for r in ranks.values()) or any(rank_options(shape_spec(i), c.multiple, None)[0].size
                                                          for i in free):
        return None
    return cause_key(c, ["multiple"]), (
        f"svd: every one of its {len(targets)} targets stays dense (ranks in multiples of {c.multiple} save no "
        f"parameters at these widths, whatever the {c.allocation} allocation finds), so this pass changes "
        "nothing; lower svd.multiple"), (*TARGETS, "allocation", "ranks")


def whole_budget_note(c, targets, ranks: dict) -> tuple[str, str, tuple] | None:
    """(key, note, keys read) for a budgeted pass asked to keep everything: global at svd.ratio 1 (a budget
    of every parameter) or energy at svd.energy 1 keeps a target dense unless its calibration spans so
    few directions that a factorization keeps all its objective measures, so the pass changes little or
    nothing, which plan said nothing of (uniform at ratio 1: `unchanged_note`). `ranks`: the fixed
    (explicit) ranks: a pass whose explicit ranks factorize some target changes those.
    None otherwise."""
    key = {"global": "ratio", "energy": "energy"}.get(c.allocation)
    if key is None or getattr(c, key) < 1:
        return None
    free = [i for i in targets if i.name not in ranks]
    asked = ("gives the global allocation a budget of every parameter" if key == "ratio"
             else "keeps all of each target's energy in its objective")
    which = f"its {len(free)} targets" + (" without an explicit rank (svd.ranks)" if ranks else "")
    changed = [n for n, r in ranks.items() if r is not DENSE]
    so = "this pass changes little or nothing" + (" but the targets svd.ranks factorizes" if changed else "")
    return cause_key(c, [key]), (
        f"svd.{key} {getattr(c, key)} {asked}, so it leaves {which} dense except where the calibration spans "
        f"so few of a target's directions that a factorization keeps all of them with fewer parameters: {so}; "
        f"lower svd.{key}"), (*TARGETS, "allocation", "ranks")


def allocated_note(c, records: dict[str, dict]) -> str | None:
    """The warning for a budgeted pass (energy, global) whose allocation, made after calibration, left
    every one of its targets (`records`, this pass's) dense: the run writes them as they were, which
    said nothing (plan cannot know it; `no_saving_rank_note` is what it can). None otherwise."""
    if not records or any(r["rank"] != "dense" for r in records.values()):
        return None
    dense = f"every one of its {len(records)} targets"
    rounded = f", rounded up to a multiple of {c.multiple}," if c.multiple > 1 else ""
    if c.allocation == "energy":
        of = "calibration output energy" if c.fisher == "none" else "output energy in its objective (Fisher-weighted)"
        why = (f"keeping svd.energy {c.energy} of each one's {of} takes a rank{rounded} at or "
               "above the rank where a factorization saves parameters")
        lower = "svd.energy" + (" or svd.multiple" if c.multiple > 1 else "")
    else:
        why = f"svd.ratio {c.ratio} gives it a budget of every parameter"
        lower = "svd.ratio"
    return f"svd: the {c.allocation} allocation left {dense} dense ({why}), so this pass changes nothing; lower {lower}"


def _ratio_key(c) -> str:
    return "ratios" if c.allocation == "per_role" else "ratio"


def cause_key(c, keys: list[str]) -> str:
    """The key a note about `keys` (svd options that together cause it, the likeliest first) is
    warned at: the first of them, or one under it, that a --set gave (c's `_set_keys`), so that a
    warning a --set caused names that --set, not another line of the file; else the first."""
    given = c.__dict__.get("_set_keys") or {}
    for key in keys:
        found = next((k for k in given if k == key or k.startswith(f"{key}.")), None)
        if found is not None:
            return found
    return keys[0]


def floored_note(c, targets, ranks: dict) -> tuple[str, str, tuple] | None:
    """(key, note, keys read) for a pass whose fixed ranks factorize some target: ranks floored at
    svd.multiple (`_floored_note`) and explicit ranks that leave targets dense (`dense_ranks_note`),
    one line at the first one's key, reading what either read. None where neither."""
    return _joined([_floored_note(c, targets, ranks), dense_ranks_note(c, targets)])


def _joined(notes: list) -> tuple[str, str, tuple] | None:
    """The (key, note, keys read) of `notes` that are there as one: at the first one's key, their
    messages joined by '; ', reading what any read. None where none is."""
    said = [n for n in notes if n]
    if not said:
        return None
    reads = dict.fromkeys(k for _, _, r in said for k in r)  # in order, once each
    return said[0][0], "; ".join(m for _, m, _ in said), tuple(reads)


def dense_ranks_note(c, targets) -> tuple[str, str, tuple] | None:
    """(key, note, keys read) for svd.ranks patterns whose rank is at or above the break-even rank m·n/(m+n) of
    some of the targets they give it: a factorization there saves nothing, so those stay dense (a
    rank up to the layer's width passes the check, and ratio: 1 is warned of; this was not).
    None where every explicit rank factorizes."""
    dense: dict[str, list] = {}
    for info in targets:
        pattern = next((p for p in c.ranks or {} if matches(p, info)), None)
        if pattern is not None and c.ranks[pattern] >= shape_spec(info).breakeven:
            dense.setdefault(pattern, []).append(info)
    if not dense:
        return None
    said = [_dense_rank_words(c, p, infos, targets) for p, infos in dense.items()]
    return f"ranks.{next(iter(dense))}", "; ".join(said), (*TARGETS, "ranks")  # each pattern, which layers


def _dense_rank_words(c, pattern: str, infos, targets) -> str:
    matched = sum(matches(pattern, i) for i in targets)  # the targets the pattern reaches
    shapes = sorted({(i.out_features, i.in_features) for i in infos}, reverse=True)
    even = "; ".join(f"{m}×{n}: {m * n / (m + n):.4g}" for m, n in shapes)
    one = len(infos) == 1
    which = ("its target" if one else f"its {len(infos)} targets") if len(infos) == matched else \
        f"{len(infos)} of its {matched} targets"
    below = min(shape_spec(i).breakeven for i in infos)
    return (f"svd.ranks: rank {c.ranks[pattern]} for {pattern!r} is at or above the break-even rank m·n/(m+n) "
            f"of {which} ({even}), where the factors hold as many parameters as the weight, so "
            f"{'it stays' if one else 'they stay'} dense; give a rank below {below} to factorize {'it' if one else 'them'}")


def _floored_note(c, targets, ranks: dict) -> tuple[str, str, tuple] | None:
    """(key, note, keys read) for a uniform or per_role pass that keeps more than its ratio asks because ranks
    cannot go lower: some target is asked a rank that rounds to 0 (below multiple / 2), floored at `multiple`
    (ratio 0.001 at multiple 8 kept 9.9% unsaid), or, at multiple 1, rank 1 everywhere keeps more than asked
    (ratio 0.01 kept 1.9% of the toy's unsaid: ranks 0.64 and 1.02 round to 1), which no setting reaches. At a
    larger multiple, ranks rounded up to it (not floored) are the multiple's coarseness, which the user
    chose and can lower. None where neither. ranks: the fixed ranks (svd_targets.fixed_ranks), explicit ranks among them."""
    if c.allocation not in ("uniform", "per_role"):
        return None
    floored, asked, kept, least, total = 0, 0.0, 0, 0, 0
    for info in targets:
        spec, explicit = shape_spec(info), explicit_rank(info, c.ranks or {})
        ratio = c.ratio if c.allocation == "uniform" else (c.ratios or {}).get(info.role)
        dense, rank = spec.params(DENSE), ranks.get(info.name)
        total, kept = total + dense, kept + spec.params(rank)
        if explicit is not None or ratio is None or ratio >= 1:  # its rank (or dense) is what was asked
            asked, least = asked + spec.params(rank), least + spec.params(rank)
            continue
        asked += ratio * dense
        lowest = round_rank(0, c.multiple, spec.max_rank)  # `multiple`, the least rank it can have
        least += spec.params(DENSE if lowest >= spec.breakeven else lowest)
        m, n = info.out_features, info.in_features
        floored += ratio * m * n / (m + n) < c.multiple / 2
    if not (floored or (c.multiple == 1 and least > asked)) or kept <= asked:
        return None
    said = "svd.ratios ask" if c.allocation == "per_role" else f"svd.ratio {c.ratio} asks"
    advice = ("lower svd.multiple for smaller ranks" if c.multiple > 1 else
              "rank 1 is the least a factorization has, so no ranks reach that ratio at these widths")
    if floored:
        which = f"all {floored} of its" if floored == len(targets) else f"{floored} of its {len(targets)}"
        words = (f"svd: ranks are floored at svd.multiple ({c.multiple}): for {which} targets the ratio asks a "
                 f"rank below {c.multiple / 2:g}, so this pass keeps {kept / total:.1%} of its targets' parameters "
                 f"instead of the {asked / total:.1%} that {said}; {advice}")
    else:
        words = f"svd: {said} {asked / total:.1%} of its targets' parameters, but this pass keeps {kept / total:.1%}: {advice}"
    reads = (*TARGETS, "allocation", _ratio_key(c), "multiple", "ranks")
    return cause_key(c, [_ratio_key(c), "multiple"]), words, reads
