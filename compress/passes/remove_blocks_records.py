"""What a removal leaves in the report and the log: earlier svd records, their totals and importance
scores following their blocks to their new indices, each removal pass's own record and the total in
teacher indices (`merge_report`), the line naming the blocks it took (`removal_line`)."""

from __future__ import annotations

from compress.arch.base import Adapter
from compress.report_card import _gone, _how


def renumber_layer_records(report: dict, adapter: Adapter, before: dict[str, list[int]],
                           after: dict[str, list[int]]) -> None:
    """What earlier svd passes recorded per layer follows the layers' blocks to their new indices,
    and what they recorded of removed blocks goes, so `inspect` reads each layer's own numbers: the
    per-layer records (report["svd"]["layers"]), the lists of layer names (dense, fused_gelu, ...)
    and the compensation stages ("double 3 mlp"); the totals over them (params_before, params_after,
    kept_ratio, ...) are those of the layers left (svd_totals). `before` / `after`: student -> teacher
    block maps around this pass. (report["svd"]["passes"] keeps each pass's record as it ran, and
    report["svd"]["global"] its allocation: budget, spend and the weights of the layers it weighed.)"""
    svd = report.get("svd")
    if not svd:
        return
    keep = {g: [before[g].index(t) for t in teacher] for g, teacher in after.items()}  # current indices

    def new(name: str, **label) -> str | None:
        return adapter.renumbered(name, keep, **label)

    if svd.get("layers"):
        svd["layers"] = {n: r for old, r in svd["layers"].items() if (n := new(old)) is not None}
    for key in ("dense", "fused_gelu", "clamped_grams", "asymmetric"):
        if isinstance(svd.get(key), list):
            svd[key] = [n for old in svd[key] if (n := new(old)) is not None]
    if svd.get("compensation"):
        svd["compensation"] = {n: v for old, v in svd["compensation"].items()
                               if (n := new(old, sep=" ", by_name=True)) is not None}
    if "params_before" in svd:  # the summary over the layers (svd_summary.merge_report)
        svd.update(svd_totals(svd.get("layers", {})))


def svd_totals(layers: dict[str, dict]) -> dict:
    """What the svd summary (svd_summary.summary) derives from the per-layer records: parameter
    totals, kept_ratio, dense and clamped layers, the worst loss ratios and fit gap, of `layers`; its
    settings (method, allocation, ...) are each pass's and stay."""
    from types import SimpleNamespace

    from compress.passes.svd_summary import SETTINGS, summary

    derived = summary(layers, SimpleNamespace(**dict.fromkeys(SETTINGS)))
    return {k: v for k, v in derived.items() if k not in SETTINGS}


def renumber_block_scores(report: dict, before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
    """An importance pass's block scores (report["importance"]["blocks"]) follow their blocks to their
    indices in the student this pass leaves: `index` is the block's new index, None (null) for a block
    it removed, whose scores stay (they are why a removal by importance took it); `teacher_index`
    stays. `before` / `after`: student -> teacher block maps around this pass."""
    record = report.get("importance")
    if not record:
        return
    new = {g: {before[g].index(t): i for i, t in enumerate(teacher)} for g, teacher in after.items()}
    for block in record.get("blocks", []):
        if block["index"] is not None and block["group"] in new:
            block["index"] = new[block["group"]].get(block["index"])


def merge_report(previous: dict | None, this: dict) -> dict:
    """A recipe may hold several removal passes: `passes` keeps each pass's own record and
    `removed_total` the teacher blocks all of them removed (each record's `removed` is its own pass's
    only); the top level stays the last pass's record, as a report of one removal reads.
    `previous`: the report's record so far (one written before `passes` was kept counts as one pass)."""
    earlier = [] if not previous else previous.get("passes") or [previous]
    runs = earlier + [this]
    total = {g: sorted({t for r in runs for t in r["removed"].get(g, [])}) for g in this["removed"]}
    return dict(this, passes=runs, removed_total=total)


def removal_line(record: dict) -> str:
    """What a job's log says as a removal pass ends: its blocks in teacher indices and how they were
    chosen, in the model card's words (report_card `_gone`, `_how`): 'remove_blocks: removed
    single_transformer_blocks (single) [3] (teacher indices; chosen by learned; ...)', or that it
    removed none. `record`: this pass's own."""
    gone = _gone(record)
    if not gone:
        return "remove_blocks: removed no blocks"
    return f"remove_blocks: removed {gone} (teacher indices; {_how(record)})"
