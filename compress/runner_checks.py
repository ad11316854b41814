"""Checks of a recipe's passes before any compute, in recipe order, on a meta copy of the teacher.

Each pass is checked against the model as the passes before it leave it (`apply_planned`:
explicit and per-group block removal, fixed ranks; targets an svd pass factorizes at ranks decided
after calibration are marked with what is known of them, `svd_planned.mark_planned`). A removal
whose blocks are chosen by importance over several groups (a bare count on Flux) is placed only at
run time; a later pass that would fail if those blocks all came from one group gets a warning
(`SpreadRemovals`). A pass that trains on the toy data (`data: toy`) is checked against the
calibration source, which gives its batches (`check_data`).
"""
from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager

import torch

from compress.errors import BadValue, UserError
from compress.passes.removed_blocks import AfterRemoval, stamp_line
from compress.passes.svd_planned import stamp_planned
from compress.report import warn


def checked_in_order(passes, specs, model, adapter, inputs: str | None = None):
    """Each pass's config checked in recipe order against `model`, which takes each pass's planned
    changes (`apply_planned`) in turn; yields (pass, spec) after the pass is checked and its notes
    said, before it is applied (what `plan` reports of it). Errors name the recipe file and the line
    (or the --set) of the key they are about (`PassSpec.where`), and those about blocks earlier
    passes removed say which (`removal_note`). `inputs`: the calibration source's kind
    (inputs.source_kind: toy, pipeline, synthetic), for `check_data`; None: not checked."""
    teacher, removed, spread = adapter.block_counts(model), [], SpreadRemovals()
    for p, spec in zip(passes, specs):
        counts = adapter.block_counts(model)
        with _named(spec, counts, teacher, removed):
            p.check(model, adapter)
            check_data(p, spec, inputs)
            _warn_notes(p, spec, model, adapter)
            spread.check(p, spec, model, adapter)
        yield p, spec
        with _named(spec, counts, teacher, removed):
            p.apply_planned(model, adapter)
        stamp_line(model, spec.line)  # for later passes' notes
        stamp_planned(model, spec.loc.override or f"line {spec.line}")  # factors an svd pass makes at run time
        if adapter.block_counts(model) != counts:
            removed.append(spec.line)


@contextmanager
def _named(spec, counts: dict, teacher: dict, removed: list[int]):
    """A UserError inside, at its key's recipe line, with the removal note where it is about one."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{spec.where(e)}: {e}{removal_note(e, counts, teacher, removed)}") from None


def check_passes(passes, specs, model, adapter, inputs: str | None = None) -> None:
    """Every pass's config checked in recipe order against a meta copy of `model` (checked_in_order;
    `inputs`: the calibration source's kind, for `check_data`)."""
    for _ in checked_in_order(passes, specs, meta_clone(model), adapter, inputs):
        pass


def check_data(p, spec, inputs: str | None) -> None:
    """A pass that trains on the toy data (its config's `data: toy`: distill's default) takes its
    batches from the calibration source (the runner's `train_batch`): the toy's digits from source
    toy; none from a pipeline source, refused here, before any pass runs, rather than when the pass
    starts; from source synthetic, that source's random latents and text embeddings, as the rest of
    such a smoke-test run, said in a warning. `inputs`: the source's kind (inputs.source_kind)."""
    if getattr(p.config, "data", None) != "toy" or inputs in (None, "toy"):
        return
    if inputs == "pipeline":
        raise BadValue("data", f"{spec.name}: data: toy trains on the toy data, and this run calibrates "
                               f"through a pipeline: set {spec.name}.data to 'teacher_samples' or 'folder'")
    message = (f"{spec.name}: data: toy with calibration.source {inputs} trains on that source's random "
               "latents and text embeddings, not on the toy's digits nor on images (a smoke test): set "
               f"{spec.name}.data to 'teacher_samples' or 'folder' to train on samples")
    warn(f"{spec.where(BadValue('data', message))}: {message}")


def _warn_notes(p, spec, model, adapter) -> None:
    """A warning per `Pass.notes`, at the line (or --set) of the key it names."""
    for key, message in p.notes(model, adapter):
        where = spec.where(BadValue(key, message))
        warn(f"{where}: {message}")


class SpreadRemovals:
    """The removals seen so far whose groups are decided at run time (`Pass.unplaced`), and the
    warning for a later pass that fails on the worst case: all those blocks from one group."""

    def __init__(self):
        self.lines, self.count = [], 0

    def check(self, p, spec, model, adapter) -> None:
        """Warns if `p` fails with the unplaced blocks all taken from one group; then records
        `p`'s own unplaced blocks (call before `p.apply_planned`)."""
        if self.count:
            self._warn_worst_case(p, spec, model, adapter)
        n = p.unplaced(model, adapter)
        if n:
            self.lines.append(spec.line)
            self.count += n

    def _warn_worst_case(self, p, spec, model, adapter) -> None:
        for group, have in adapter.block_counts(model).items():
            if have - self.count < 1:
                continue
            worst = meta_clone(model)
            adapter.remove_blocks(worst, {group: list(range(have - self.count, have))})
            try:
                p.check(worst, adapter)
            except UserError as e:
                by = " and ".join(map(str, self.lines))
                warn(f"{spec.where(e)}: {e} — if the removal at line {by} takes all {self.count} of its blocks "
                     f"from group '{group}' (it picks them by importance at run time; a count per group fixes "
                     "where they come from)")
                return


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
