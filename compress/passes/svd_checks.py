"""The svd pass's recipe checks against the model (before any compute); the keys' values alone are
svd_values' (torch-free, at recipe load); its report's summary is svd_summary's."""

from __future__ import annotations

from torch import nn

from compress.errors import BadValue
from compress.lowrank import LowRankLinear
from compress.passes.svd_global import check_global_budget
from compress.passes.svd_planned import as_if_words, check_not_planned
from compress.passes.svd_targets import check_explicit_ranks, check_pattern, is_model_wide, matches, untargeted
from compress.passes.svd_values import CENTER_DEFAULT, _bad

FACTORIZED_AT = "_dit_compress_factorized_at"  # on a LowRankLinear an svd pass made: its line ('line 6'; None: not yet)



def check_config(c, model: nn.Module, infos, targets, in_teacher=None) -> None:
    """Every svd key against the model's linears `infos` (c: an SVDConfig whose values `check_values`
    passed, `targets`: what `resolve_targets` found; `in_teacher`: a run's test of whether the teacher
    holds a target factorized, `factorized_by`)."""
    _check_not_factorized(targets, model, in_teacher)
    _check_sequenced(c, targets)
    check_not_planned(targets, model)
    check_explicit_ranks(infos, targets, c.ranks)
    _check_center(c, infos, targets)
    biasless = [i.name for i in targets if centered(c, i) and model.get_submodule(i.name).bias is None]
    if biasless:
        more = " …" if len(biasless) > 3 else ""
        raise _bad("center", f"svd.center: {', '.join(biasless[:3])}{more} has no bias to take the "
                                 "mean error; leave it out of svd.center", "targets", "ignore")
    if c.allocation == "per_role":
        _check_roles(c.ratios, {i.role for i in targets})
    if c.allocation == "global":
        check_global_budget(targets, c)


def _check_center(c, infos, targets) -> None:
    """Every svd.center pattern names a linear, and one of the pass's `targets`: else it centres nothing
    and the plan said nothing of it. The default ([modulation]) stays allowed on a pass without
    modulation targets, where it is not the recipe's."""
    for n, p in enumerate(c.center):
        check_pattern(p, infos, "center", f"center.{n}")
    if c.center == CENTER_DEFAULT:
        return
    for n, p in enumerate(c.center):
        if said := untargeted(p, infos, targets, "center"):
            raise _bad(f"center.{n}", said, "targets", "ignore")


def _check_sequenced(c, targets) -> None:
    """svd.sequential: true on a pass none of whose targets is ever re-run within its block (all read
    a model-wide input: the modulation linears, the caption's keys and values, the top level) is
    refused, as asymmetric: true on targets it cannot fit is (SVDPass._check_fits): the run would
    sequence nothing, and the memory estimate counted a dense block copy and a probe it never holds."""
    if c.sequential is not True or not targets or not all(map(is_model_wide, targets)):
        return
    raise refused_on_all("sequential", targets, "is calibrated within its block, where sequential calibration "
                         "re-runs it", _NOT_SEQUENCED)


# why a target (is_model_wide) is never re-run within a block (svd_walk.in_order), by target_kind
_NOT_SEQUENCED = {
    "conditioning": "the modulation linears read the conditioning (the timestep embedding; Flux's pooled text "
                    "too), whose stats are taken once over a timestep grid",
    "top level": "top-level layers are calibrated before or after the blocks, not within one",
    "caption": "the cross-attention keys and values read the caption, which no layer of their block makes"}


def refused_on_all(key: str, targets, can: str, reasons: dict[str, str]) -> BadValue:
    """svd.KEY: true on a pass none of whose `targets` `can` (a phrase: 'can be fitted to the
    reference'): a BadValue that gives, once each, the reasons (`reasons`, by target_kind) of its
    targets' kinds."""
    why = "; ".join(sorted({reasons[target_kind(i)] for i in targets}))
    return _bad(key, f"svd.{key}: true, but none of this pass's {len(targets)} targets {can}: {why}; leave "
                     f"svd.{key} out (auto), or target block linears (attention, mlp)", "targets", "ignore")


def target_kind(info) -> str:
    """Which of four kinds a target is, as the reasons of `refused_on_all` tell them apart:
    'conditioning' (its stats are the conditioning's: svd_walk.from_conditioning), 'top level'
    (outside the blocks), 'caption' (a block's layer reading an input shared by all blocks,
    svd_targets.is_model_wide: PixArt's cross-attention keys and values), else 'block'."""
    from compress.passes.svd_targets import is_model_wide
    from compress.passes.svd_walk import from_conditioning

    if from_conditioning(info):
        return "conditioning"
    if info.group is None:
        return "top level"
    return "caption" if is_model_wide(info) else "block"


def _check_not_factorized(targets, model: nn.Module, in_teacher=None) -> None:
    """A target that is already a LowRankLinear (an earlier svd pass, or a compressed teacher) is
    refused: factorizing it again would drop a fused GELU and record its dense size as kept. Which
    made it is said where known (`factorized_by`; `in_teacher`: a run's test of the teacher)."""
    done = [i for i in targets if isinstance(model.get_submodule(i.name), LowRankLinear)]
    if done:
        them, names = "it" if len(done) == 1 else "them", [i.name for i in done]
        as_if = as_if_words(model, {i.group for i in done if i.group is not None})  # plan's stand-in blocks
        by = [factorized_by(model.get_submodule(i.name), i, in_teacher) for i in done]
        raise _bad("targets", f"svd: {', '.join(names[:3])}{' …' if len(done) > 3 else ''} "
                        f"{'is' if len(done) == 1 else 'are'} already factorized ({by_words(by)}{as_if}); "
                        f"leave {them} out with svd.ignore, or {_instead(by, them)}", "ignore")


def _instead(by: list, them: str) -> str:
    """What else a refused pass can do: factorize once, in the earlier pass, at a lower ratio; with the
    teacher's own layers (a finished output as teacher: no pass of this recipe made them), compress the
    model that output was made from instead."""
    if set(by) == {None}:
        return (f"compress the model this teacher was made from instead (its own teacher), factorizing "
                f"{them} once at a lower ratio there")
    return "factorize once at a lower ratio"


def mark_made(layer: nn.Module) -> nn.Module:
    """A LowRankLinear an svd pass just made, marked so (its line unknown till `stamp_factorized`)."""
    setattr(layer, FACTORIZED_AT, None)
    return layer


def stamp_factorized(model: nn.Module, line: str) -> None:
    """Gives the layers a pass just factorized (`mark_made`) its place ('line 6', or the --set that added it)."""
    for m in model.modules():
        if isinstance(m, LowRankLinear) and getattr(m, FACTORIZED_AT, False) is None:
            setattr(m, FACTORIZED_AT, line)


def factorized_by(layer: nn.Module, info, in_teacher=None) -> str | None:
    """Who factorized `layer`: 'line 6' (the svd pass there), '' (an earlier svd pass, where is not known:
    a stage --resume read back), None (the teacher: a LowRankLinear no pass made, or one `in_teacher(info)`)."""
    at = getattr(layer, FACTORIZED_AT, False)
    if at is not False:
        return at or ""
    return None if in_teacher is None or in_teacher(info) else ""


def teacher_holds(teacher: nn.Module, block_map: dict | None):
    """info -> whether `teacher` holds that target (its block as `block_map` maps it) as a LowRankLinear."""
    def holds(info) -> bool:
        name = info.name
        if info.group is not None and block_map and info.group in block_map:
            rest = name[len(f"{info.group}.{info.block}"):]
            name = f"{info.group}.{block_map[info.group][info.block]}{rest}"
        try:
            return isinstance(teacher.get_submodule(name), LowRankLinear)
        except (AttributeError, IndexError):
            return False
    return holds


def by_words(by: list) -> str:
    """'by the svd pass at line 6', 'by the svd passes at line 6 and line 9', 'by an earlier svd pass', 'in
    the teacher', or 'by an earlier svd pass, or in the teacher' where both, for `factorized_by`'s answers."""
    lines = sorted({b for b in by if b})
    if None in by:
        return "in the teacher" if set(by) == {None} else "by an earlier svd pass, or in the teacher"
    if "" in by or not lines:
        return "by an earlier svd pass"
    return f"by the svd pass at {lines[0]}" if len(lines) == 1 else \
        f"by the svd passes at {', '.join(lines[:-1])} and {lines[-1]}"


def centered(c, info) -> bool:
    """Whether a target is factorized on its centered Gram with the mean error folded into its
    bias (svd.center)."""
    return any(matches(p, info) for p in c.center)



def _check_roles(ratios: dict, roles: set[str]) -> None:
    """Every targeted role has a ratio, and every ratio's role is targeted (else it is ignored): checks
    that read which layers are targets and the allocation (per_role: a --set of it asks for ratios)."""
    missing = sorted(roles - set(ratios))
    if missing:
        raise _bad("ratios", f"svd.ratios has no ratio for targeted role(s) {', '.join(missing)}",
                   "targets", "ignore", "allocation")
    unused = sorted(set(ratios) - roles)
    if unused:
        raise _bad(f"ratios.{unused[0]}", f"svd.ratios: role(s) {', '.join(unused)} match no target "
                                              f"(targeted roles: {', '.join(sorted(roles))}); remove them or "
                                              "add them to svd.targets", "targets", "ignore", "allocation")
