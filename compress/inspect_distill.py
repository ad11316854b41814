"""`dit-compress inspect`'s lines on distillation (`distill_lines`): one per distill pass the run recorded
(report.json's `distill`, the records of earlier passes under its `earlier`), each with the steps done of those
asked (and those fp16's grad scaler skipped, where any: distill_scaler), the held-out teacher-relative error before → after it (marked where it rose: distill_notes.rose), how often
its training was resumed from a checkpoint, and its last step's loss terms, each where recorded."""

from __future__ import annotations

from compress.passes.distill_notes import rose
from compress.passes.distill_progress import TERMS, fmt_terms
from compress.report import error_figure, is_count, is_number


def distill_lines(report: dict) -> list[str]:
    """A line per distill pass of `report` (none without one)."""
    last = report.get("distill")
    if not isinstance(last, dict):
        return []
    records = [r for r in [*(last.get("earlier") or []), last] if isinstance(r, dict)]
    several = len(records) > 1
    return [distill_line(r, f" (pass {n} of {len(records)})" if several else "") for n, r in enumerate(records, 1)]


def distill_line(record: dict, which: str = "") -> str:
    """'distill: 60/60 steps (data toy, train all); held-out teacher-relative error 0.08092 → 0.09314
    (rose; its error_rose in report.json says why); resumed 1 time; last step: loss 0.1 out ... feat ...':
    the loss terms of nonzero weight in the record's `weights` (here lambda_task 0: no task term); a record
    without weights shows every term."""
    said = [f"{_steps(record)}{_settings(record)}", _error(record)]
    resumed = record.get("resumed")
    if is_count(resumed):
        said.append("not resumed" if resumed == 0 else f"resumed {resumed} time{'s' if resumed > 1 else ''}")
    last = record.get("last")
    if isinstance(last, dict) and all(is_number(last.get(k)) for k in TERMS):
        weights = record.get("weights")  # a term of weight 0 is no part of the loss (older records: every term)
        said.append(f"last step: {fmt_terms(last, weights if isinstance(weights, dict) else None)}")
    return f"distill{which}: " + "; ".join(said)


def _steps(record: dict) -> str:
    asked, done, skipped = record.get("steps"), record.get("steps_done"), record.get("steps_skipped")
    if is_count(asked) and is_count(done):  # fp16: the steps its grad scaler skipped (no update)
        return f"{done}/{asked} steps" + (f", {skipped} skipped (fp16 grad scaler)" if is_count(skipped) and skipped
                                          else "")
    return f"{asked} steps" if is_count(asked) else "steps not recorded"


def _settings(record: dict) -> str:
    shown = [f"{k} {record[k]}" for k in ("data", "train") if isinstance(record.get(k), str)]
    return f" ({', '.join(shown)})" if shown else ""


def _error(record: dict) -> str:
    before, after = record.get("pred_rel_error_before"), record.get("pred_rel_error_after")
    if not (is_number(before) and is_number(after)):
        return "held-out teacher-relative error not measured"
    why = "; its error_rose in report.json says why" if isinstance(record.get("error_rose"), dict) else ""
    marked = f" (rose{why})" if rose(before, after) else ""  # by more than float noise
    kd = record.get("kd_teacher")  # kd_teacher: base: measured against the chain's base
    base = kd.get("source") if isinstance(kd, dict) else None
    against = f" against the chain's base {base}" if isinstance(base, str) else ""
    return f"held-out teacher-relative error{against} {error_figure(before)} → {error_figure(after)}{marked}"
