"""What plan knows of an earlier svd pass whose ranks are decided after calibration (allocation
global or energy): the targets it leaves dense on plan's meta model but may, or surely will, factorize
at run time are marked (`mark_planned`), so a later svd pass on them is refused before compute, as the
run would refuse it when that pass starts, or noted where calibration decides."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compress.alloc import DENSE, budget_for_ratio, global_budget, rank_options
from compress.errors import BadValue
from compress.passes.removed_blocks import PLANNED_ATTR
from compress.passes.svd_global import trust_ranges_for
from compress.passes.svd_targets import shape_spec

PLANNED_BY = "_dit_compress_factorized_by"  # on a target of plan's meta model: (Planned, surely factorized)


@dataclass(eq=False)
class Planned:
    """An svd pass whose ranks are decided after calibration (global, energy), as plan's meta model
    carries it on the targets it leaves dense there (`mark_planned`): its recipe line (`stamp_planned`),
    its allocation and ratio, and how many of its targets may go either way (`maybe`), of which the
    budget factorizes at least one (`some`: it cannot keep them all dense)."""

    allocation: str
    ratio: float
    maybe: int
    some: bool
    line: str | None = None  # 'line 12' or '--set passes.0=...' (stamp_planned)

    def by(self) -> str:
        return f"the svd pass at {self.line}" if self.line is not None else "an earlier svd pass"


def mark_planned(model: nn.Module, c, targets, fixed: dict) -> None:
    """Marks the targets a budgeted pass (c: its SVDConfig) leaves dense on plan's meta model but may
    factorize at run time (those of `fixed`, its explicit ranks, are placed already), each with
    whether it surely is: `global` gives a target that has ranks saving parameters within its trust
    range, and whose range stops below the break-even rank, one of them whatever calibration finds;
    a target with no such rank stays dense (energy too); the rest may go either way."""
    free = [i for i in targets if i.name not in fixed]
    specs = [shape_spec(i) for i in free]
    ranges = (trust_ranges_for(specs, c) if c.allocation == "global" else None) or {}
    options = [rank_options(s, c.multiple, ranges.get(s.name)) for s in specs]  # (ranks, dense allowed)
    sure = [c.allocation == "global" and ranks.size > 0 and not dense_ok for ranks, dense_ok in options]
    maybe = [ranks.size > 0 and not s for (ranks, _), s in zip(options, sure)]
    # every `maybe` target dense, the others at their lowest rank, would spend more than the budget
    least = sum(s.params(int(ranks[0]) if is_sure else DENSE)
                for s, (ranks, _), is_sure in zip(specs, options, sure))
    budget = global_budget(specs, c.ratio, c.multiple, ranges, c.trust_region) if c.allocation == "global" else None
    some = c.allocation == "global" and any(maybe) and least > (budget or budget_for_ratio(specs, c.ratio))
    planned = Planned(c.allocation, c.ratio, sum(maybe), some)
    for info, is_sure, is_maybe in zip(free, sure, maybe):
        if is_sure or is_maybe:
            setattr(model.get_submodule(info.name), PLANNED_BY, (planned, is_sure))


def stamp_planned(model: nn.Module, line: str) -> None:
    """Gives the factors a pass just marked on plan's meta model (`mark_planned`) where the pass is
    ('line 12', or the --set that added it)."""
    for m in model.modules():
        planned = getattr(m, PLANNED_BY, (None,))[0]
        if planned is not None and planned.line is None:
            planned.line = line


def _planned_overlap(targets, model: nn.Module) -> dict:
    """Planned -> (targets it surely factorizes, targets it may factorize, whether those are all of
    its `maybe` targets still in the model), per earlier budgeted pass among `targets`' marks."""
    found: dict = {}
    for info in targets:
        planned, is_sure = getattr(model.get_submodule(info.name), PLANNED_BY, (None, False))
        if planned is not None:
            found.setdefault(planned, ([], []))[0 if is_sure else 1].append(info.name)
    present = {}
    for m in model.modules():  # an earlier removal may have taken some of them: then none is sure
        planned, is_sure = getattr(m, PLANNED_BY, (None, True))
        if planned in found and not is_sure:
            present[planned] = present.get(planned, 0) + 1
    return {p: (sure, maybe, p.some and len(maybe) == present.get(p, 0) == p.maybe)
            for p, (sure, maybe) in found.items()}


def _names(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''} {'is' if len(names) == 1 else 'are'}"


def check_not_planned(targets, model: nn.Module) -> None:
    """A target an earlier budgeted pass factorizes at run time whatever calibration finds is refused
    before compute, as the run refuses it when this pass starts (svd_checks._check_not_factorized): a target
    whose rank there surely saves parameters, or every target of that pass that may go either way
    where its budget cannot keep them all dense. Also a factorized layer of a block plan's meta model
    dropped for a removal that picks at run time (`check_not_hidden`)."""
    check_not_hidden(targets, model)
    group = {i.name: i.group for i in targets}
    for planned, (sure, maybe, all_of_some) in _planned_overlap(targets, model).items():
        if sure:
            as_if = as_if_words(model, {group[n] for n in sure} - {None})  # plan's stand-in blocks
            raise BadValue("targets", f"svd: {_names(sure)} already factorized (by {planned.by()}: its "
                                      f"{planned.allocation} allocation gives "
                                      f"{'it a rank that saves' if len(sure) == 1 else 'them ranks that save'} "
                                      f"parameters whatever calibration finds{as_if}); {_advice(sure)}",
                           reads=("ignore",))
        if all_of_some:
            as_if = as_if_words(model, {group[n] for n in maybe} - {None})
            raise BadValue("targets", f"svd: {_names(maybe)} already factorized, some of them at least (by "
                                      f"{planned.by()}: its {planned.allocation} allocation, keeping {planned.ratio} "
                                      "of its targets' parameters, cannot leave them all dense; which it "
                                      f"factorizes, it decides after calibration{as_if}); {_advice(maybe)}",
                           reads=("ignore",))


def check_not_hidden(targets, model: nn.Module) -> None:
    """A factorized layer of a block that plan's meta model dropped as a placeholder for a removal
    picking its blocks at run time (remove_blocks_budget.factorized_in: the smallest blocks are dropped,
    often those factorized) is refused where the run may keep its block and this pass would then
    target it: at some position it may have, the layer there is one of `targets` (same name, same
    role), so the run would stop when this pass starts (svd_checks._check_not_factorized)."""
    names = {i.name for i in targets}
    planned = getattr(model, PLANNED_ATTR, {})
    for group, hidden in planned.get("hidden", {}).items():
        for h in hidden:
            places = [f"{h['attr']}.{q}.{h['suffix']}" for q in range(h["lo"], h["hi"] + 1)]
            if hit := [n for n in places if n in names]:
                raise BadValue("targets", f"svd: {_hidden_words(h, group, planned)} is already factorized, and "
                                          f"this pass targets it if its block is kept ({' or '.join(hit)} then); "
                                          f"leave it out with svd.ignore (at each of those), or remove its "
                                          "block by index, or factorize once at a lower ratio",
                               reads=("ignore",))


def _hidden_words(hidden: dict, group: str, planned: dict) -> str:
    """'transformer_blocks.1.ff.net.2 (teacher block 1, which the removal at line 4 may keep: it picks
    blocks at run time, and plan counts the smallest as gone)'."""
    lines = [str(r["line"]) for r in planned.get("removals", ()) if group in r["groups"] and r["run_time"]
             and r["line"] is not None]
    by = (f"the removal{'s' if len(lines) > 1 else ''} at line{'s' if len(lines) > 1 else ''} {', '.join(lines)}"
          if lines else "an earlier removal")
    block = f"teacher block {hidden['teacher']}" if hidden["teacher"] is not None else "its block"
    return (f"{hidden['name']} ({block}, which {by} may keep: it picks blocks at run time, and plan "
            "counts the smallest as gone)")


def as_if_words(model: nn.Module, groups) -> str:
    """Where layers of `groups` are named on plan's meta model after a removal that picks its blocks at run
    time: that the names are as if it takes the smallest blocks (the last of equal ones: what the meta model
    dropped, remove_blocks_budget.placeholders): '; named as if the removal at line 14, which picks its
    blocks at run time, takes the smallest blocks'; '' elsewhere (a run's own model too)."""
    planned = getattr(model, PLANNED_ATTR, {})
    removals = [r for r in planned.get("removals", ()) if r["run_time"] and set(groups) & set(r["groups"])]
    if not removals and not any(planned.get("pending", {}).get(g) for g in groups):
        return ""
    lines = [str(r["line"]) for r in removals if r["line"] is not None]
    by = (f"the removal{'s' if len(lines) > 1 else ''} at line{'s' if len(lines) > 1 else ''} {', '.join(lines)}, "
          f"which pick{'' if len(lines) > 1 else 's'} {'their' if len(lines) > 1 else 'its'} blocks at run time,"
          if lines else "an earlier removal, which picks its blocks at run time,")
    return f"; named as if {by} take{'' if len(lines) > 1 else 's'} the smallest blocks"


def _advice(names: list[str]) -> str:
    return f"leave {'it' if len(names) == 1 else 'them'} out with svd.ignore, or factorize once at a lower ratio"


def planned_notes(targets, model: nn.Module) -> list[tuple[str, str, tuple]]:
    """(key, note, keys read besides targets: ignore) per earlier budgeted pass that may factorize
    some of `targets` at run time (ranks decided after calibration): the run stops when this pass
    starts if it does."""
    out = []
    for planned, (_, maybe, _) in _planned_overlap(targets, model).items():
        if maybe:
            out.append(("targets", f"svd: {_names(maybe)} factorized by {planned.by()} if its "
                                   f"{planned.allocation} allocation, decided after calibration, gives "
                                   f"{'it a rank that saves' if len(maybe) == 1 else 'them ranks that save'} "
                                   "parameters; then the run stops when this pass starts (a layer is factorized "
                                   f"once): {_advice(maybe)}", ("ignore",)))
    return out
