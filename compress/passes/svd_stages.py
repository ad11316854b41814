"""What the svd pass does with what its walk (svd_walk) visits: one target factorized from its stats,
a stage of targets (with compensation: svd_compensate's Newton steps at the measured best fraction),
a block's group of stages, and each result committed to the pass's records.

`Stages` holds what those visits share: the targets' asymmetric fits until their layer is committed,
and `state`, what has been compressed so far (it names the student-mode calibration cache files).
"""

from __future__ import annotations

from torch import nn

from compress.arch.base import Adapter, LinearInfo
from compress.calib_stats import Stats
from compress.passes.base import relative_error
from compress.passes.svd_compensate import line_search, newton_steps
from compress.passes.svd_fisher_roots import Roots
from compress.passes.svd_layer import compress_layer
from compress.passes.svd_targets import uses_output_gram
from compress.passes.svd_walk import module_digest
from compress.replay import Prefix


class Stages:
    """The visits of one svd pass's walk. svd_pass: the SVDPass (its config, roots and per-target
    decisions); ranks: name -> fixed rank; records: name -> the report's record (filled);
    summary: label -> each compensated stage's search (filled); few: the batches compensation
    measures on, a share `share` of all; refs: `toward`'s predictions on them (None without
    compensation); compensated: the roots of the targets compensation applies to."""

    def __init__(self, svd_pass, model: nn.Module, adapter: Adapter, ranks: dict, records: dict,
                 summary: dict, few: list, refs: list | None, compensated: Roots, share: float):
        self.p, self.model, self.adapter = svd_pass, model, adapter
        self.ranks, self.records, self.summary = ranks, records, summary
        self.few, self.refs, self.compensated, self.share = few, refs, compensated, share
        self.state: list = []  # (name, rank, digest) of what has been compressed so far
        self.upstream: dict[str, tuple | None] = {}  # name -> asymmetric (step, offset), until committed

    def factorize(self, info: LinearInfo, stats: Stats, step=None, rank=None) -> dict:
        """The record of `info` factorized (the model edited). rank: None chooses it (fixed, or by
        the energy rule); "dense" or an int imposes it. step: a compensation step added to W."""
        c = self.p.config
        choose = self.p._choose(info, self.ranks) if rank is None else (
            lambda dec: None if rank == "dense" else rank)
        if info.name not in self.upstream:
            self.upstream[info.name] = self.p._asymmetric_step(self.model, info, stats)
        extra, offset = self.upstream[info.name] or (None, None)
        fitted = extra is not None and step is None  # the fit alone: the report compares it to its optimum
        if extra is not None:
            step = extra if step is None else step + extra
        return compress_layer(self.model, info, stats, method=c.method, alpha=c.alpha,
                              center=self.p._center(info), gram_is_output=uses_output_gram(info),
                              choose_rank=choose, out_root=self.p.roots.get(info.name), step=step,
                              offset=offset, fitted=fitted)

    def commit(self, info: LinearInfo, record: dict) -> bool:
        """Keep `record` as the target's; returns whether the model changed (not left dense)."""
        if self.upstream.pop(info.name, None) is not None:  # (out, in) float64: not kept past its layer
            record = dict(record, asymmetric=True)
        self.records[info.name] = record
        self.state.append((info.name, record["rank"], module_digest(self.model, info.name)))
        return record["rank"] != "dense"

    def visit(self, info: LinearInfo, stats: Stats) -> bool:
        return self.commit(info, self.factorize(info, stats))

    def visit_stage(self, label: str, pairs: list, prefix: Prefix) -> bool:
        """pairs: (info, stats) of one stage; with compensation each target is factorized at
        W + β·Δ for the β the line search measures best on `few` (its search under `label`)."""
        c, refs, few = self.p.config, self.refs, self.few
        guide = self.p.guide_for("compensation")
        steps = newton_steps(self.model, self.adapter, few, refs, pairs, self.compensated, c.fisher_probes,
                             self.share, prefix, guide) if self.compensated else {}
        if not steps:
            return any([self.visit(info, stats) for info, stats in pairs])
        near = next((s["step"] for s in reversed(self.summary.values()) if s["step"]), None) \
            if c.compensate_search == "walk" else None
        chosen, search = line_search(self.model, pairs, steps, self.factorize,
                                     lambda: relative_error(self.model, refs, self.adapter, few, prefix, guide=guide),
                                     near)
        self.summary[label if label not in self.summary else f"{label} ({len(self.summary) + 1})"] = search
        return any([self.commit(info, dict(chosen[info.name], compensation_step=search["step"]
                                           if info.name in steps else None)) for info, _ in pairs])

    def visit_group(self, where: str, start: int, pairs: list) -> bool:
        """Two stages, in the order a block runs them: the MLP's targets then compensate for the
        error its attention (and modulation) targets just left as well. A stage is labelled by where
        it is and its roles ("double 3 attention+modulation", "double 3 mlp", "top level
        modulation"). Both stages change nothing before block `start` (execution order), so their
        forwards replay what came before it (recorded once, `replay.Prefix`). Returns whether the
        model changed."""
        before = [p for p in pairs if p[0].role != "mlp"]
        mlp = [p for p in pairs if p[0].role == "mlp"]
        prefix, changed = Prefix(self.model, self.adapter, self.few, start), False
        for stage in (before, mlp):
            if stage:
                roles = "+".join(sorted({info.role for info, _ in stage}))
                changed = self.visit_stage(f"{where} {roles}", stage, prefix) or changed
        return changed
