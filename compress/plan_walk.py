"""make_plan's walk over the passes: each planned on the meta model as the passes before leave it, then
applied (PassWalk); what a removal by importance does with the scores so far (ScoresSoFar) and what its
streamed skip scan reads and holds (streamed_scan); an svd pass's targets (svd_targets); where a pass is
in the recipe (pass_where)."""

from __future__ import annotations

from compress.calib_footprint import skip_scan_bytes
from compress.plan_budget import (budget_savings, budgeted_layers, count_ranges, decided_later, distill_student,
                                 ranged_keys, removal_shares, retargeted, smallest_blocks, spare_bound)
from compress.plan_statistics import svd_statistics
from compress.plan_words import bounded_keys, where_words
from compress.passes.remove_blocks_budget import counts_after
from compress.passes.removed_blocks import planned_blocks, possible_counts
from compress.passes.svd import LATER

class PassWalk:
    """make_plan's passes, each planned on the meta model as the passes before leave it, then applied
    (`add`): the plan's `steps`, and what its counts after read of them: the svd passes whose ranks are
    decided after calibration (`later`), the removals whose blocks are picked at run time (`unplaced`)
    or whose blocks differ in size (`uneven`), the importance scores so far (`scores`)."""

    def __init__(self, recipe, model, adapter, calib: dict):
        self.recipe, self.model, self.adapter, self.calib = recipe, model, adapter, calib  # calib: a footprint
        self.steps, self.scores, self.later, self.unplaced, self.uneven = [], ScoresSoFar(), [], [], []
        self.budgeted = []  # per entry of `later`: its dense targets on the meta model (budgeted_layers)
        self.removals_before = []  # per entry of `later`: the unplaced removals before its pass

    def add(self, p, spec) -> None:
        """Pass `p` (its recipe entry `spec`) planned, and applied to the meta model."""
        model, adapter = self.model, self.adapter
        named = dict(model.named_modules())  # as the pass finds the model: the names its targets use
        step = self._blocks(p, spec, {"pass": spec.name, **pass_where(spec),
                                      **(p.plan(model, adapter, self.calib["rows"]) or {})})
        self.budgeted = retargeted(self.budgeted, step, named)
        if step.get("params_after") == LATER:  # ranks decided after calibration: counted dense here
            self.later.append(decided_later(p, step, model, adapter))
            self.budgeted.append(budgeted_layers(self.later[-1], model, adapter))
            self.removals_before.append(len(self.unplaced))
        self._scores(step)
        if spec.name == "svd":  # the float64 statistics its calibration holds (plan_memory)
            step["statistics"] = svd_statistics(*svd_targets(p, spec, model, adapter), spec.config)
        if spec.name == "distill":  # the student it trains, as earlier passes leave it (plan_memory)
            spare = spare_bound(model, adapter, planned_blocks(model, adapter))[0]
            step["student"] = distill_student(model, self.later, self.budgeted, spec.config.train, spare)
        self.scores.see(p, spec, step)
        self.steps.append(step)

    def _blocks(self, p, spec, step: dict) -> dict:
        """`step` with the block counts a removal may find (count_ranges) and the removals before it whose
        blocks are picked at run time (at_most); pass `p` noted among the unplaced or uneven removals."""
        model, adapter = self.model, self.adapter
        if isinstance(step.get("blocks_before"), dict):  # a removal: its counts as the run may find them
            possible = possible_counts(model, adapter)
            step = count_ranges(step, possible, counts_after(p.config, adapter, possible))
        if self.unplaced and (bounded_keys(step | {"at_most": True}) or ranged_keys(step)):  # some blocks go
            step["at_most"] = list(self.unplaced)                    # before it from groups picked at run time
        if n := p.unplaced(model, adapter):  # blocks whose groups importance picks at run time
            self.unplaced.append({"pass": spec.name, **pass_where(spec), "blocks": n})
        if step.get("blocks_differ_in_size"):  # placed, but which blocks go changes the count
            self.uneven.append({"pass": spec.name, **pass_where(spec), "groups": step["blocks_differ_in_size"]})
        return step

    def _scores(self, step: dict) -> None:
        """A removal choosing by importance: what it does with the scores so far (ScoresSoFar.words), and
        what its streamed skip scan reads and holds."""
        scans = bool(step.get("scans"))  # blocks chosen by importance; none when it removes none
        reused = scans and self.scores.reused(step)
        if scans and (words := self.scores.words(step)):
            step["scores"] = words
        if self.recipe.stream and step.get("skip_scan") and step.get("scans", 1):
            step["streamed_scan"] = streamed_scan(step, reused, self.calib, self.model, self.adapter)

    def params_at_most(self, after: int, spare: int) -> int:
        """The most parameters the run may leave (plan's params_after_at_most), of `after` counted on the
        meta model and the `spare` (spare_bound) that removals picked at run time may leave."""
        taken = sum(u["blocks"] for u in self.unplaced)  # placed at run time
        shares = removal_shares(self.later, self.removals_before, len(self.unplaced))
        return (after - budget_savings(self.later, self.budgeted, self.model) + spare
                - smallest_blocks(self.model, self.adapter, taken, self.budgeted, shares))


def svd_targets(p, spec, model, adapter) -> tuple[list, bool, bool]:
    """(an svd pass's targets on the model as it finds it, whether a reference stream pairs with its
    calibration, whether it calibrates within-block sequentially)."""
    from compress.passes.svd_decisions import calibrates_sequentially, fits_asymmetrically

    targets = p.resolved.targets(model, adapter)[1]
    return targets, fits_asymmetrically(spec.config, targets), calibrates_sequentially(spec.config, targets)


class ScoresSoFar:
    """The importance scores a remove_blocks choosing by importance finds recorded, as the run
    decides (remove_blocks.recorded): the last importance pass's, stale once a pass that changes
    weights (`Pass.changes_weights`: svd, distill, a removal) has run after it."""

    def __init__(self):
        self.line, self.criteria, self.stale_by = None, (), None  # line: where the last scan's pass is

    def see(self, p, spec, step: dict) -> None:
        """After pass `p` (recipe `spec`, plan `step`): a scan to reuse, or a change that stales it."""
        if p.changes_weights:
            if self.line is not None and self.stale_by is None:
                self.stale_by = f"{spec.name} ({where_words(pass_where(spec))})"
        elif "criteria" in step:
            self.line, self.criteria, self.stale_by = where_words(pass_where(spec)), step["criteria"], None

    def reused(self, step: dict) -> bool:
        return self.line is not None and self.stale_by is None and step["criterion"] in self.criteria

    def words(self, step: dict) -> str | None:
        """What a removal by importance (`step`) does with them; None with no importance pass before."""
        if self.line is None:
            return None
        if self.reused(step):
            return f"reused from the importance pass ({self.line})"
        if self.stale_by:
            return (f"scanned here: the importance pass ({self.line}) scored the model before "
                    f"{self.stale_by} changed it")
        return f"scanned here: the importance pass ({self.line}) has no {step['criterion']} scores"


def streamed_scan(step: dict, reused: bool, calib: dict, model, adapter) -> dict:
    """What a streamed skip scan of this step reads and holds (on the model as the step finds it):
    each block once per calibration batch, up to N + 1 residual streams of a batch. `reused`: a
    removal's first (or only) choice takes the scores of an importance pass before it (ScoresSoFar)."""
    blocks = sum(adapter.block_counts(model).values())
    scans = max(step.get("scans", 1) - (1 if reused else 0), 0)
    return {"scans": scans, "checkpoint_reads": scans * calib["batches"],
            "block_reads": scans * blocks * calib["batches"],
            "batch_bytes": skip_scan_bytes(calib, model.config, blocks)}


def pass_where(spec) -> dict:
    """Where a pass is, for its header: {'line': N} in the recipe file; {'line': None, 'set': the
    --set} for one a --set added (whose node's line, 1, is not the file's)."""
    override = spec.loc.override
    return {"line": None, "set": override} if override else {"line": spec.line}
