"""Checks of a recipe's passes before any compute, in recipe order, on a meta copy of the teacher.

Each pass is checked against the model as the passes before it leave it (`apply_planned`:
explicit and per-group block removal, fixed ranks; targets an svd pass factorizes at ranks decided
after calibration are marked with what is known of them, `svd_planned.mark_planned`). A removal
whose blocks are chosen by importance over several groups (a bare count on Flux) is placed only at
run time; a later pass that fails for some ways of spreading those blocks over the groups gets a
warning, one that fails for every way an error (`SpreadRemovals`). A pass that trains on the toy
data (`data: toy`) is checked against the calibration source, which gives its batches (`check_data`).
"""
from __future__ import annotations

import copy
import itertools
import re
from contextlib import contextmanager

import torch

from compress.errors import BadValue, UserError
from compress.passes.base import STUDENT_CHANGED
from compress.passes.remove_blocks_budget import counts_after, spreads
from compress.passes.removed_blocks import (AfterRemoval, forget_taken, possible_counts, stamp_counts, stamp_line,
                                            taken_unplaced)
from compress.passes.svd_objective import PARTS, no_pairs
from compress.passes.svd_checks import stamp_factorized
from compress.passes.svd_planned import stamp_planned
from compress.recipe_convert import concerned, with_sets
from compress.report import warn


def checked_in_order(passes, specs, model, adapter, inputs: str | None = None, calibration=None,
                     single: bool = False):
    """Each pass's config checked in recipe order against `model`, which takes each pass's planned
    changes (`apply_planned`) in turn, and records on it the block counts per group the run may have
    after each removal (removed_blocks.possible_counts); yields (pass, spec) after the pass is checked
    and its notes said, before it is applied (what `plan` reports of it). Errors name the recipe file and the line
    (or the --set) of the key they are about (`PassSpec.where`), and those about blocks earlier
    passes removed say which (`removal_note`). `inputs`: the calibration source's kind
    (inputs.source_kind: toy, pipeline, synthetic), for `check_data`; None: not checked. `calibration`:
    the recipe's CalibrationConfig, for `Pass.calibration_notes` (with `inputs`); None: not said; with
    `inputs`, for `check_objective` too, as `single` (a pipeline source's pipeline runs one branch,
    calib_prompts.one_branch)."""
    teacher, removed, spread = adapter.block_counts(model), [], SpreadRemovals()
    for p, spec in zip(passes, specs):
        counts = adapter.block_counts(model)
        with _named(spec, counts, teacher, removed):
            p.check(model, adapter)
            check_data(p, spec, inputs)
            check_objective(p, spec, inputs, calibration, single)
            _warn_notes(p, spec, model, adapter, calibration, inputs)
            spread.check(p, spec, model, adapter)
        yield p, spec
        possible, taken = possible_counts(model, adapter), taken_unplaced(model)
        with _named(spec, counts, teacher, removed):
            p.apply_planned(model, adapter)
        stamp_line(model, spec.line)  # for later passes' notes
        if p.changes_weights:
            setattr(model, STUDENT_CHANGED, True)  # a later distill starts from a student, not the teacher
        stamp_planned(model, spec.loc.override or f"line {spec.line}")  # factors an svd pass makes at run time
        stamp_factorized(model, spec.loc.override or f"line {spec.line}")  # and those it made here
        if adapter.block_counts(model) != counts or taken_unplaced(model) != taken:  # a removal
            stamp_counts(model, counts_after(p.config, adapter, possible))
        if adapter.block_counts(model) != counts:
            removed.append(spec.line)


@contextmanager
def _named(spec, counts: dict, teacher: dict, removed: list[int]):
    """A UserError inside, at its key's recipe line, with the removal note where it is about one."""
    try:
        yield
    except UserError as e:
        where = spec.where(e, *recipe_reads(getattr(e, "reads", None)))
        raise UserError(f"{where}: {e}{removal_note(e, counts, teacher, removed)}") from None


def recipe_reads(reads) -> list[str]:
    """The recipe keys (calibration.source) among the keys a check or note read (BadValue.reads, a
    note's third item), whose --sets `PassSpec.where` names as its `because`; the rest are the pass's."""
    return [k for k in reads or () if k.startswith("calibration.")]


def check_passes(passes, specs, model, adapter, inputs: str | None = None, calibration=None,
                 single: bool = False) -> None:
    """Every pass's config checked in recipe order against a meta copy of `model` (checked_in_order;
    `inputs`: the calibration source's kind, for `check_data`; `calibration`: the recipe's, for
    `Pass.calibration_notes` and, with `single`, `check_objective`)."""
    for _ in checked_in_order(passes, specs, meta_clone(model), adapter, inputs, calibration, single):
        pass


SOURCE = ("calibration.source",)  # what check_data reads besides data: no other key of the pass


def check_data(p, spec, inputs: str | None) -> None:
    """A pass that trains on the toy data (its config's `data: toy`: distill's default) takes its
    batches from the calibration source (the runner's `train_batch`): the toy's digits from source
    toy; none from a pipeline source, refused here, before any pass runs, rather than when the pass
    starts; from source synthetic, that source's random latents and text embeddings, as the rest of
    such a smoke-test run, said in a warning. `inputs`: the source's kind (inputs.source_kind)."""
    if getattr(p.config, "data", None) != "toy" or inputs in (None, "toy"):
        return
    if inputs == "pipeline":
        raise BadValue("data", f"{spec.name}.data: toy trains on the toy data, and this run calibrates "
                               f"through a pipeline: set {spec.name}.data to 'teacher_samples' or 'folder'",
                       reads=SOURCE)
    message = (f"{spec.name}.data: toy with calibration.source {inputs} trains on that source's random "
               "latents and text embeddings, not on the toy's digits nor on images (a smoke test): set "
               f"{spec.name}.data to 'teacher_samples' or 'folder' to train on samples")
    warn(f"{spec.where(BadValue('data', message, reads=SOURCE), *SOURCE)}: {message}")


def check_objective(p, spec, inputs: str | None, calibration, single: bool) -> None:
    """An svd pass whose svd.objective guides by each input's two CFG rows, where the recipe tells that its
    calibration inputs hold none (svd_objective.no_pairs: `inputs` the source's kind, `calibration` its
    CalibrationConfig, `single` a pipeline that runs one branch): refused here, before any pass runs, not
    when the pass starts after the passes before it (hours on a real model). A pass --resume runs past is not."""
    objective = getattr(p.config, "objective", "branches")
    if not PARTS.get(objective) or inputs is None or calibration is None or p.resumed_past:
        return
    found = no_pairs(calibration, inputs, single)
    if found is not None:
        why, fix, reads = found
        instead = f"set {fix}, or {spec.name}.objective: branches" if fix else f"set {spec.name}.objective: branches"
        raise BadValue("objective", f"{spec.name}.objective {objective} needs calibration inputs holding both "
                                    f"classifier-free-guidance branches of each input, and {why}: {instead}",
                       reads=reads)


def _warn_notes(p, spec, model, adapter, calibration=None, inputs: str | None = None) -> None:
    """A warning per `Pass.notes` and, given the recipe's calibration and its source's kind,
    `Pass.calibration_notes`, at the line (or --set) of the key it names, with the --sets of the keys
    it read where it lists them (its third item: the pass's, and recipe keys such as calibration.timesteps)."""
    said = p.calibration_notes(calibration, inputs) if calibration is not None and inputs is not None else []
    for key, message, *reads in p.notes(model, adapter) + said:  # reads: BadValue's, where the note lists them
        read = reads[0] if reads else None
        warn(f"{spec.where(BadValue(key, message, reads=read), *recipe_reads(read))}: {message}")


def warn_ran_notes(p, spec) -> None:
    """A warning per `Pass.ran_notes` of pass `p`, which has run, at its recipe line (`spec`'s), with
    the --sets of the keys the note names (and of none other)."""
    for message, reads in p.ran_notes():
        named = concerned(spec.keys, BadValue(reads[0], message, reads=reads[1:])) if reads else []
        warn(f"{with_sets(spec.loc, named)}: {message}")


class SpreadRemovals:
    """The removals seen so far whose groups are decided at run time (`Pass.unplaced`), and what a
    later pass does under them. The run may find any of the block counts per group plan's meta model
    recorded (removed_blocks.possible_counts: their blocks spread over the groups in any way that
    leaves each group one, `spreads`, as `least_important` picks, and what later removals take of the
    blocks left); a later pass is checked where each group loses the most it can (`worst_spreads`):
    failing there it is warned, failing for every count it is refused, as the run would refuse it
    whichever blocks the removal picks."""

    def __init__(self):
        self.lines = []

    def check(self, p, spec, model, adapter) -> None:
        """Refuses or warns if `p` fails for some spread of the unplaced blocks; then records `p`'s
        line if it places blocks at run time itself (call before `p.apply_planned`)."""
        count = taken_unplaced(model)
        if count:
            self._check_spreads(p, spec, model, adapter, count)
        if p.unplaced(model, adapter):
            self.lines.append(spec.line)

    def _check_spreads(self, p, spec, model, adapter, count: int) -> None:
        """Warns (the first group whose worst case fails `p`) or refuses (every case fails it; a
        BadValue of the error's key, which `_named` places) over what the run may find: the blocks
        each group has lost of the meta model's (`losses`), `count` of them unplaced."""
        have = adapter.block_counts(model)
        every, tried = losses(have, possible_counts(model, adapter), count), {}
        if not every:  # no count the run may find is recorded (the removals before refused every one)
            return
        failed = [(s, e) for s in worst_spreads(every) if (e := _failure(p, model, adapter, s, tried)) is not None]
        if failed and all(_failure(p, model, adapter, s, tried) is not None for s in every):
            spread, e = _tightest(every, tried, failed[0], _group_of(failed[0][1], p.config, adapter))
            how = "are spread over the groups (each keeps one)" if sum(spread.values()) == count else "go"
            words = (f"{e} — where {_by(self.lines, spread, count, have)}; {_it(self.lines)} by importance at "
                     f"run time, and this pass fails however they {how}")
            raise BadValue(e.key, words, e.reads, e.group) if isinstance(e, BadValue) else UserError(words)
        if failed:
            spread, e = failed[0]
            warn(f"{spec.where(e)}: {e} — if {_by(self.lines, spread, count, have)} ({_it(self.lines)} by "
                 "importance at run time; a count per group fixes where they come from)")


def losses(have: dict[str, int], possible: list[dict[str, int]], count: int) -> list[dict[str, int]]:
    """{group: blocks it has lost of the meta model's `have`} for each block count per group the run
    may find (`possible`: removed_blocks.possible_counts, the meta model's own where none is recorded:
    then every spread of the `count` unplaced blocks, `spreads`). A fraction per group after unplaced
    removals takes of the blocks they leave, so some may lose more than `count` in all; a count the
    meta model cannot hold is left out."""
    if possible == [have]:
        return spreads(have, count)
    out = [{g: n - found[g] for g, n in have.items()} for found in possible]
    return [lost for lost in out if min(lost.values()) >= 0]


def worst_spreads(every: list[dict[str, int]]) -> list[dict[str, int]]:
    """Per group, the first of `every` (the losses per group the run may find, `losses`) where it
    loses the most; each once, in group order."""
    out = []
    for g in every[0]:
        worst = max(every, key=lambda s: s[g])
        if worst not in out:
            out.append(worst)
    return out


def _failure(p, model, adapter, spread: dict[str, int], tried: dict) -> UserError | None:
    """The error `p.check` raises on a meta copy of `model` less the last `spread[g]` blocks of each
    group, None if it passes; `tried` keeps each spread's error."""
    key = tuple(spread.items())
    if key not in tried:
        left = meta_clone(model)
        adapter.remove_blocks(left, {g: list(range(n - k, n)) for g, n in adapter.block_counts(left).items()
                                     if (k := spread[g])})
        forget_taken(left)
        try:
            p.check(left, adapter)
            tried[key] = None
        except UserError as e:
            tried[key] = e
    return tried[key]


def _tightest(every: list[dict[str, int]], tried: dict, first: tuple, group: str | None) -> tuple:
    """For a pass every spread fails, the (spread, error) to say: where `group`, the group `first`'s
    error is about (`_group_of`), loses the least it can (what it loses however the blocks are
    spread), else `first`."""
    if group is None or group not in every[0]:
        return first
    spread = min(every, key=lambda s: s[group])
    return spread, tried[tuple(spread.items())]


def _group_of(error: UserError, config, adapter) -> str | None:
    """The block group a pass's error is about: the one its check gave it (BadValue.group: too many
    blocks of a group, a learned removal's windows of one, an index or a pattern naming a block past
    a group's last); else, for svd checks that do not say, the group of the blocks a module pattern at
    its recipe key names (targets.0, ignore.1, center.0: 'single_transformer_blocks.2.proj_out';
    ranks.PATTERN), read from the key, not from its words; None where it names none."""
    if getattr(error, "group", None) in {g.name for g in adapter.groups}:
        return error.group
    head, _, rest = getattr(error, "key", "").partition(".")
    value = rest if head == "ranks" else getattr(config, head, None)
    if isinstance(value, list) and rest.isdigit() and int(rest) < len(value):
        value = value[int(rest)]
    if not isinstance(value, str):
        return None
    return next((g.name for g in adapter.groups if re.match(rf"{re.escape(g.attr)}\.\d+(\.|$)", value)), None)


def _by(lines: list[int], spread: dict[str, int], count: int, have: dict[str, int]) -> str:
    """'the removal at line 5 takes all 2 of its blocks from group 'single'' (its block, of one), or
    '... takes 1 of its 4 blocks from group 'double' and 3 from group 'single''; where the groups lose
    other than the `count` unplaced blocks (a fraction per group after them took of those left), the
    counts the run then has of the meta model's `have`: 'the run has 1 block of group 'double' and 1
    of group 'single' here, as it may after the removal at line 5 takes its 2 blocks'."""
    many = len(lines) > 1
    who = (f"the removals at lines {' and '.join(map(str, lines))} take" if many else
           f"the removal at line {lines[0]} takes")
    its = "their" if many else "its"
    if sum(spread.values()) != count:
        left = [(g, have[g] - k) for g, k in spread.items()]
        first = f"{left[0][1]} block{'s' if left[0][1] != 1 else ''} of group '{left[0][0]}'"
        words = " and ".join([first] + [f"{n} of group '{g}'" for g, n in left[1:]])
        return f"the run has {words} here, as it may after {who} {f'{its} {count} blocks' if count > 1 else f'{its} block'}"
    parts = [(g, k) for g, k in spread.items() if k]
    if len(parts) == 1:
        return f"{who} {f'all {count} of {its} blocks' if count > 1 else f'{its} block'} from group '{parts[0][0]}'"
    rest = " and ".join(f"{k} from group '{g}'" for g, k in parts[1:])
    return f"{who} {parts[0][1]} of {its} {count} blocks from group '{parts[0][0]}' and {rest}"


def _it(lines: list[int]) -> str:
    return "they pick them" if len(lines) > 1 else "it picks them"


def removal_note(error: BaseException, counts: dict, teacher: dict, lines: list[int]) -> str:
    """Said after `error` of a pass that sees `counts` blocks per group where the teacher has
    `teacher`, when it is about the blocks left (removed_blocks.AfterRemoval): which passes (recipe
    lines) removed blocks, and that the rest are renumbered; "" otherwise."""
    if not isinstance(error, AfterRemoval) or counts == teacher:
        return ""
    by = (f"the pass at line {lines[0]}" if len(lines) == 1 else
          f"the passes at lines {', '.join(map(str, lines))}" if lines else "an earlier pass")
    now = ", ".join(f"{n} of the teacher's {teacher[g]} blocks in group '{g}'" for g, n in counts.items())
    return f" ({by} removed blocks: this pass sees {now}, renumbered from 0)"


def meta_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with every parameter and buffer on the meta device (no weights copied)."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = torch.nn.Parameter(meta, t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)
