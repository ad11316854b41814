"""The svd pass: replace target linears by calibrated low-rank factors (LowRankLinear).

Flow (`SVDPass.run`): resolve targets → (global only, svd_global) a teacher-activation calibration that
measures every target's loss curve and, with `sensitivity`, its effect on the final prediction → ranks →
a block-by-block calibration that factorizes each block's targets before the next block runs
(`activations="student"`: later blocks calibrate on the compressed student's activations).
Modulation linears read a low-dimensional conditioning vector; their Grams are taken over a dense
timestep grid (`modulation_grid`) rather than the few calibration timesteps.
With `compensate` (default on; whitened targets in blocks that have an output Fisher) each block's
targets also absorb, to first order, the prediction error left before them: relative to the teacher
(`compensate_toward: teacher`, default; undoes earlier passes too) or to the model as the pass found
it (`input`) (svd_compensate: a K-FAC Newton step, scaled by a measured line search).
With `fisher` (default "all") each target's outputs are weighted by the output Fisher F = Σ JᵀJ of
the final prediction (svd_fisher): the factorization minimizes tr(F E G Eᵀ), a first-order estimate
of the prediction error, instead of the layer's own output error. On the toy teachers at 50% kept
parameters this cut the teacher-relative prediction error 2.1-2.6x against unweighted whitening.
Where the whole model's backward is out of reach (block weights streamed), `fisher: block` weights
each block's targets by the output Fisher of that block alone (svd_fisher.block_fisher).
Targets in blocks without the prediction's Fisher (`fisher: block` or `none`) are by default
fitted asymmetrically (`asymmetric: auto`; not the modulation linears, whose stats are the
conditioning's, on the student's stream alone: svd_walk.from_conditioning): W + Δ is the
least-squares map from the inputs the student feeds the layer to the outputs the uncompressed model
gives it (a reference stream in the calibration, `Stats.cross`), then truncated on the student's Gram (centered targets: an affine
fit on both streams' means, its offset into the bias). Their records add `fit_gap`: the layer's fit
above that fit's rank-r optimum without `asymmetric_damping`, a share of its output energy
(svd_layer._fit_record, linalg_steps.asymmetric_excess).
With `sequential` (auto: where targets are fitted asymmetrically) a block's targets are calibrated
in forward order, GPTQ's "true-sequential": each later stats key's Gram (and cross term) comes from
a re-run of that block alone with its earlier targets already compressed, so e.g. attn.to_out is fitted
on the inputs the compressed q/k/v give it (svd_walk.in_order); keys that do not read each other's
linears (Flux's image and text streams) share a level and one re-run (calib_flow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress.alloc import DENSE, energy_rank
from compress.arch.base import Adapter, LinearInfo
from compress.calib import BlockCalibration, model_digest
from compress.calib_stats import Stats, StatsCache
from compress.calib_store import BlockLoader
from compress.distill_utils import PLANNED_FACTORS
from compress.errors import UserError
from compress.fuse import fuse_gelu
from compress.linalg import normalized_curve
from compress.linalg_steps import asymmetric_step, centered_asymmetric_step
from compress.lowrank import LowRankLinear
from compress.passes.base import Pass, RunContext, predictions
from compress.passes.removed_blocks import MissingBlock, planned_blocks, teacher_view
from compress.passes.svd_checks import centered, check_config, refused_on_all, teacher_holds
from compress.passes.svd_values import check_values
from compress.passes.svd_summary import merge_report, summary
from compress.passes.svd_config import SVDConfig, shadow_notes, unused_notes
from compress.passes.svd_decisions import (NOT_FITTED, calibrates_sequentially, fits_asymmetrically,
                                           fitted_to_reference, prediction_fisher, streaming_refusals)
from compress.passes.svd_fisher import checkpointed
from compress.passes.svd_fisher_budget import fisher_budget, fisher_plan
from compress.passes.svd_fisher_measure import FisherMeasurement
from compress.passes.svd_fisher_roots import Roots
from compress.passes.svd_objective import PARTS, guide_for, objective_of, pass_guidance
from compress.passes.svd_global import GlobalAllocation
from compress.passes.svd_layer import dense_record, replace_linear
from compress.passes.svd_notes import (allocated_note, dense_ranks_note, floored_note, no_saving_rank_note,
                                       unchanged_note, whole_budget_note)
from compress.passes.svd_planned import mark_planned, planned_notes
from compress.passes.svd_stages import Stages
from compress.passes.svd_targets import (Resolved, idle_ignore_notes, renumbered_pattern_notes, shape_spec,
                                         uses_output_gram)
from compress.passes.svd_walk import walk
from compress.report import console, warn
from compress.stream_refusals import NotStreamable

LATER = "decided after calibration"


class SVDPass(GlobalAllocation, FisherMeasurement, Pass):
    name = "svd"
    config_cls = SVDConfig
    # sweeps of any size, and blocks recomputed in the backward, write the same factors (test_svd_fisher_pass)
    result_free = ("progress", "fisher_memory_gb", "gradient_checkpointing")
    needs_calibration = True
    measures_statistics = True

    def __init__(self, config: SVDConfig, loader: BlockLoader | None = None):
        super().__init__(config)
        self.loader = loader or BlockLoader()  # just-in-time block weights (big models)
        self.spill: Path | None = None  # block activations on disk (calibration.spill_activations)
        self.sampler: dict | None = None  # the teacher pipeline's scheduler config (ctx.scheduler_config)
        self.block_map: dict | None = None  # ctx.block_map: student -> teacher block, per group
        self.resolved = Resolved(config)  # targets and fixed ranks, once per model state (check, notes, plan, run)

    # ---- before any compute ---------------------------------------------------------------------
    def check(self, model: nn.Module, adapter: Adapter) -> None:
        self._check(model, adapter, *teacher_view(model, adapter))

    def _check(self, model: nn.Module, adapter: Adapter, teacher_counts: dict, block_map: dict | None,
               teacher: nn.Module | None = None) -> None:
        """check_config; a pattern naming a block past the last of its group says what became of it
        (`teacher_counts`, `block_map`: plan's meta model's, or the run's; `teacher`: the run's, which
        tells a factorized target of the teacher from an earlier pass's, svd_checks.factorized_by)."""
        check_values(self.config)
        in_teacher = teacher_holds(teacher, block_map) if teacher is not None else None
        try:
            check_config(self.config, model, *self.resolved.targets(model, adapter), in_teacher)
        except MissingBlock as e:
            raise e.explained(teacher_counts, block_map) from None
        self._check_fits(self.resolved.targets(model, adapter)[1])

    def _check_fits(self, targets: list[LinearInfo]) -> None:
        """svd.asymmetric: true on a pass none of whose targets can be fitted to the reference is
        refused, as compensate: true where it cannot apply: the run would fit nothing, and say so
        only in its report's empty `asymmetric`."""
        if self.config.asymmetric is not True or self._fits(targets):
            return
        raise refused_on_all("asymmetric", targets, "can be fitted to the reference", NOT_FITTED)

    def notes(self, model: nn.Module, adapter: Adapter) -> list[tuple[str, str, tuple]]:
        """A pass whose ranks, known before calibration, leave every target dense changes nothing (ranks
        decided after calibration: where no rank at svd.multiple saves; the run warns of the rest); a
        module name whose block index earlier removals renumbered names another teacher block; an ignore
        pattern naming none of the layers svd.targets matches leaves nothing out; a key the recipe wrote
        that the pass does not use (svd_config.unused_notes)."""
        c = self.config
        infos, targets = self.resolved.targets(model, adapter)
        named = [(f"{key}.{n}", p) for key in ("targets", "ignore", "center") for n, p in enumerate(getattr(c, key))]
        out = renumbered_pattern_notes(named + [(f"ranks.{p}", p) for p in c.ranks or {}], infos,
                               planned_blocks(model, adapter))
        out += idle_ignore_notes(infos, c.targets, c.ignore)  # an ignore that leaves nothing out
        out += shadow_notes(targets, c.ranks or {}, c.__dict__.get("_set_keys"), c.__dict__.get("_set_added"))
        out += unused_notes(c, targets)  # keys the recipe wrote that this pass does not use (svd.alpha, whitened)
        out += planned_notes(targets, model)  # an earlier pass's ranks decided after calibration
        ranks = self.resolved.ranks(model, adapter)
        if not targets:
            return out
        if len(ranks) < len(targets):  # budgeted (energy, global)
            said = no_saving_rank_note(c, targets, ranks) or whole_budget_note(c, targets, ranks)
            return out + [n for n in [said, dense_ranks_note(c, targets)] if n]
        if any(r is not DENSE for r in ranks.values()):  # ranks floored at multiple spend more than asked
            return out + [n for n in [floored_note(c, targets, ranks)] if n]
        return out + [unchanged_note(c, targets)]

    def check_streaming(self) -> None:
        """Block weights streamed: everything but whole-model forwards; what needs them, all at once."""
        refusals = streaming_refusals(self.config)
        if refusals:
            raise NotStreamable(self.name, refusals)

    def plan(self, model: nn.Module, adapter: Adapter, calibration_rows: int | None = None) -> dict:
        c = self.config
        targets, ranks = self.resolved.targets(model, adapter)[1], self.resolved.ranks(model, adapter)
        shown = {i.name: ("dense" if ranks.get(i.name, 0) is DENSE else ranks.get(i.name, LATER))
                 for i in targets}
        before = sum(shape_spec(i).params(DENSE) for i in targets)
        known = all(i.name in ranks for i in targets)
        after = sum(shape_spec(i).params(ranks[i.name]) for i in targets) if known else LATER
        weighted = [i for i in targets if self._prediction_fisher(i)]
        rows = self._fisher_rows(adapter, weighted, calibration_rows)
        fisher = fisher_plan(weighted, rows, c.fisher_memory_gb, c.gradient_checkpointing)
        fitted = sum(self._asymmetric(i) for i in targets if i.group is not None)
        return {"targets": [i.name for i in targets], "ranks": shown, "params_before": before,
                "params_after": after, "method": c.method, "allocation": c.allocation,
                **({"fitted_to_reference": fitted, "sequential": self._sequential(targets)} if fitted else {}),
                **({"fisher": fisher} if weighted else {})}

    def apply_planned(self, model: nn.Module, adapter: Adapter) -> None:
        """Fixed ranks (uniform, per_role, explicit) on plan's meta model; budgeted allocations
        (global, energy) are decided after calibration and left dense here, marked with what is known
        of them for later passes' checks (svd_planned.mark_planned)."""
        targets, ranks = self.resolved.targets(model, adapter)[1], self.resolved.ranks(model, adapter)
        if len(ranks) < len(targets):  # budgeted (global, energy): ranks decided at run time
            setattr(model, PLANNED_FACTORS, True)
            mark_planned(model, self.config, targets, ranks)
        for info in targets:
            rank = ranks.get(info.name)
            if isinstance(rank, int):
                bias = model.get_submodule(info.name).bias is not None
                with torch.device("meta"):
                    layer = LowRankLinear(info.in_features, info.out_features, rank, bias=bias)
                replace_linear(model, info.name, layer)

    # ---- compute ---------------------------------------------------------------------------------
    def run(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        c = self.config
        teacher = ctx.teacher if ctx.teacher is not None else model
        self._check(model, ctx.adapter, ctx.adapter.block_counts(teacher), ctx.block_map, ctx.teacher)
        if ctx.blocks is not None:  # the runner streams block weights
            self.loader = ctx.blocks
        spill = getattr(ctx.calibration, "spill_activations", False)
        self.spill = ctx.run_dir / "activations" if spill else None  # block inputs on disk
        self.sampler = ctx.scheduler_config()  # the modulation grid lies where the sampler steps
        self.block_map = ctx.block_map  # the calibration progress names a renumbered block's teacher index
        if ctx.calibration_inputs is None:
            raise UserError("the svd pass needs calibration inputs (a calibration section in the recipe)")
        targets = list(self.resolved.targets(model, ctx.adapter)[1])  # as _check resolved them
        if self._all_dense_before_calibration(model, ctx.adapter, targets):
            self._left_dense(targets, ctx.report.setdefault("svd", {}))
            return model
        batches = ctx.calibration_inputs()
        start = model_digest(model, ctx.block_map, self.loader)  # what earlier passes left
        cache_dir = ctx.run_dir / "calib" / ctx.fingerprint / start if ctx.fingerprint else None
        self.cache = StatsCache(cache_dir, ctx.device)
        report = ctx.report.setdefault("svd", {})
        records: dict[str, dict] = {}
        extra: dict = {}  # this pass's global allocation, if any
        ranks = dict(self.resolved.ranks(model, ctx.adapter))
        fixed = dict(ranks)  # those known before calibration
        self.scratch = ctx.run_dir  # what the pass measures per target goes to disk here
        from compress.runner_kept import fisher_folder

        # the prediction's Fishers: kept beside the stats cache (keyed to the model as found and the
        # inputs), so a pass interrupted after hours of sweeps does not measure them again; block
        # Fishers depend on the stream the walk feeds each block, and are measured anew
        reusable = cache_dir is not None and fisher_folder(c) is not None  # runner_caches reads the name
        fishers = cache_dir / fisher_folder(c) if reusable else ctx.run_dir / "fisher"
        self.budget = fisher_budget(c.fisher_memory_gb, ctx.device)  # bytes of Fishers per sweep
        if c.fisher_memory_gb == "auto":
            console.print(f"  fisher_memory_gb: auto, {self.budget / 2**30:.1f} GiB per sweep on {ctx.device}")
        self.roots = Roots(fishers, c.fisher_damping, self.budget, reuse=reusable,  # one block's pairs held
                           device=ctx.device,  # read there: a resumed pass's may not be the one that measured them
                           groups={i.name: (i.group, i.block) for i in targets},
                           revisit=c.allocation == "global" and c.fisher != "block",  # global walks twice
                           measured=(c.fisher, "fisher" in PARTS[objective_of(c)]))  # what its words say
        self.guide = pass_guidance(c, ctx.heldout_guidance, batches,  # None: each row's own (auto: never refused)
                                   getattr(ctx.calibration, "guidance_scale", None), ctx.source_kind)
        compensation: dict = {}
        finished = False
        try:
            with checkpointed(model, c.gradient_checkpointing):  # whole-model backwards keep block inputs
                self._measure_fishers(model, ctx.adapter, targets, batches)
                if c.allocation == "global":
                    ranks, extra["global"] = self._global_ranks(model, ctx.adapter, targets, batches, ranks)
                toward = ctx.teacher if c.compensate_toward == "teacher" and ctx.teacher is not None else model
                sequential = self._compress(model, ctx.adapter, targets, batches, ranks, records, toward,
                                            compensation)
            finished = True
        finally:
            self.roots.close(keep=not finished and reusable)
        self._warn_if_unchanged(targets, fixed, records)
        fused = fuse_gelu(model)  # FFN input layers apply their GELU (kernel epilogue on CUDA)
        this = dict(summary(records, c), targets=len(records), cache_hits=list(self.cache.hits),
                    fused_gelu=fused, compensation=compensation, sequential=sequential, **extra)
        merge_report(report, this, records, c)
        return model

    def _all_dense_before_calibration(self, model: nn.Module, adapter: Adapter, targets: list[LinearInfo]) -> bool:
        """Whether the ranks known before calibration (uniform, per_role, explicit ranks: every target's)
        keep every target dense, as `notes` warned: the pass then changes nothing, and calibrating it
        (hours on a real model) would only measure the losses of layers it keeps. Budgeted allocations
        (energy, global) decide after calibration: never."""
        ranks = self.resolved.ranks(model, adapter)
        return bool(targets) and len(ranks) == len(targets) and all(r is DENSE for r in ranks.values())

    def _left_dense(self, targets: list[LinearInfo], report: dict) -> None:
        """Every target kept dense without calibration (`_all_dense_before_calibration`): each one's record
        says so, with no loss measured (none was), and the pass's summary is theirs."""
        console.print(f"  every one of its {len(targets)} targets stays dense at its ranks: calibration skipped")
        records = {i.name: dense_record(i, self.config.method, i.bias, 0.0, " (not calibrated)") for i in targets}
        this = dict(summary(records, self.config), targets=len(records), cache_hits=[], fused_gelu=[],
                    compensation={}, sequential=False, calibrated=False)
        merge_report(report, this, records, self.config)

    def _warn_if_unchanged(self, targets: list[LinearInfo], fixed: dict, records: dict) -> None:
        """A budgeted allocation (energy, global) that left every target dense: the run would write the
        model as it found it and say nothing (`notes` warned before compute where the ranks known before
        calibration, `fixed`, told it; where a ratio or energy of 1 was warned of as changing little or
        nothing, this says which)."""
        if len(fixed) == len(targets) or no_saving_rank_note(self.config, targets, fixed):
            return
        note = allocated_note(self.config, records)
        if note:
            warn(note)

    def _choose(self, info: LinearInfo, ranks: dict) -> Callable:
        """decomposition -> rank (or DENSE): fixed, or by the energy rule on the measured curve."""
        if info.name in ranks:
            return lambda dec: ranks[info.name]
        if self.config.allocation != "energy":
            raise RuntimeError(f"no rank decided for {info.name}")
        return lambda dec: energy_rank(shape_spec(info, normalized_curve(dec.curve)),
                                       self.config.energy, self.config.multiple)

    def _compress(self, model, adapter, targets, batches, ranks, records, toward, summary) -> bool:
        """Block-by-block calibration that factorizes each block's targets before moving on
        (with compensation: at the measured best fraction of their Newton step toward the
        predictions of `toward`, the teacher or the model as the pass found it; svd_stages).
        summary: filled with each compensated stage's search. Returns whether the blocks were
        calibrated within-block sequentially (svd.sequential)."""
        c = self.config
        compensated = self._compensation_roots(targets)
        few = batches[: c.compensate_batches] if c.compensate_batches else batches
        refs = predictions(toward, adapter, few) if compensated else None
        stages = Stages(self, model, adapter, ranks, records, summary, few, refs, compensated,
                        len(few) / len(batches))
        cal = BlockCalibration(model, adapter, batches, c.activations, self.cache, self.loader,
                               c.progress, self._fits(targets), spill=self.spill, sampler=self.sampler,
                               block_map=self.block_map)
        sequential = self._sequential(targets)
        self._walk(cal, targets, stages.visit, stages.state if c.activations == "student" else [],
                   stages.visit_group, sequential)
        return sequential

    def _fits(self, targets: list[LinearInfo]) -> bool:
        return fits_asymmetrically(self.config, targets)

    def _sequential(self, targets: list[LinearInfo]) -> bool:
        return calibrates_sequentially(self.config, targets)

    def _asymmetric(self, info: LinearInfo) -> bool:
        return fitted_to_reference(self.config, info)

    def _prediction_fisher(self, info: LinearInfo) -> bool:
        return prediction_fisher(self.config, info)

    def _asymmetric_step(self, model, info: LinearInfo, stats: Stats) -> tuple | None:
        """(Δ (out, in), offset (out,): centered targets' affine fit, else None) or None."""
        if stats.cross is None or not self._asymmetric(info):
            return None
        weight, damping = model.get_submodule(info.name).weight, self.config.asymmetric_damping
        if self._center(info):
            return centered_asymmetric_step(weight, stats.gram, stats.cross, stats.total, stats.ref_total,
                                            stats.rows, damping, name=info.name)
        return asymmetric_step(weight, stats.gram, stats.cross, damping, name=info.name), None

    def guide_for(self, part: str):
        """The calibration guidance `part` ("fisher", "compensation") weighs errors by (svd_objective), or None."""
        return guide_for(objective_of(self.config), getattr(self, "guide", None), part)

    def _compensation_roots(self, targets: list[LinearInfo]) -> Roots:
        """name -> (L, L⁻¹) of the targets compensation applies to: whitened, with an output Fisher
        and an input Gram (empty when svd.compensate is off). Top-level targets that run before the
        blocks have something to undo only when earlier passes changed the model (toward teacher)."""
        c = self.config
        on = c.compensate is not False and c.method == "whitened"
        return self.roots.only([i.name for i in targets if on and self._prediction_fisher(i)
                                and i.name in self.roots and not uses_output_gram(i)])

    def _center(self, info: LinearInfo) -> bool:
        return centered(self.config, info)

    def _walk(self, cal: BlockCalibration, targets: list[LinearInfo], visit, state: list,
              visit_group=None, sequential: bool = False) -> None:
        """svd_walk.walk over this pass's targets; with fisher: block each block's output Fisher
        is measured before its targets are visited; sequential: within-block stages."""
        def before_block(block, pairs):
            if self.config.fisher == "block":
                self._block_roots(cal, block, [info for info, _ in pairs])

        walk(cal, targets, visit, state, self.cache, self.config.modulation_grid, visit_group, before_block,
             sequential)
