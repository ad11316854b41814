"""`inspect`'s stages: what each pass of the run did to the whole model, as report.json's `stages` records
it and the model card's stage table words it (report_card.model_card): the teacher's parameters, then per
pass its parameters after it, their share of the teacher's, its held-out teacher-relative error, where the
run recorded it its guided error (of the classifier-free-guided prediction its pipeline samples with:
runner_heldout), and where it distilled toward the chain's base (distill.kd_teacher: base), its error
against that base. An older report's missing field is '-' (null in --json); a report without stages shows none."""

from __future__ import annotations

from compress.report import error_figure, is_number
from compress.report_card import against_base, export_lines
from compress.report_fit import JSON_OR_WIDER, fitted_rows

TITLE = "stages: each pass's params and its error on held-out inputs"
COLUMNS = [("stage", "left"), ("params", "right"), ("of teacher", "right"), ("teacher-relative error", "right")]
GUIDED, BASE = ("guided error", "right"), ("against the chain's base", "right")  # where recorded
# where a terminal is too narrow for them all, first to last: the teacher-relative error stays
LEFT_OUT_FIRST = ("params", "of teacher", "against the chain's base", "guided error")


def stages_record(report: dict) -> dict | None:
    """--json's `stages`: {"teacher": {"source", "params"}, "passes": [{"pass", "params", "of_teacher",
    "relative_error", and "guided_error" and "kd_teacher": {"source", "relative_error"} where recorded}]}, each value as
    report.json has it (null where it has none); None where report.json records no stages."""
    stages = report.get("stages")
    if not isinstance(stages, list):
        return None
    teacher = report.get("teacher_params")
    teacher = teacher if is_number(teacher) and teacher > 0 else None
    passes = []
    for s in (s for s in stages if isinstance(s, dict)):
        params, base = s.get("params"), against_base(s)
        passes.append({"pass": s.get("pass"), "params": params,
                       "of_teacher": params / teacher if teacher and is_number(params) else None,
                       "relative_error": s.get("relative_error"),
                       **({"guided_error": s["guided_error"]} if "guided_error" in s else {}),
                       **({"kd_teacher": {"source": base.get("source"), "relative_error": base["relative_error"]}}
                          if base else {})})
    return {"teacher": {"source": report.get("teacher"), "params": teacher}, "passes": passes}


def stage_lines(report: dict, width: int | None, piped: bool = False) -> list:
    """What inspect prints of the stages: their table fitted to `width` (the chain's base column only where
    a pass recorded an error against it), or where even its least does not fit (under 30 columns: rich
    would cut its names, numbers and headers) a line per stage broken at its spaces to the width
    (report_fit.fitted_rows; `piped`: each line whole); then which weights the errors are of (the card's export words); [] where
    report.json records no stage."""
    record = stages_record(report)
    if not record or not record["passes"]:
        return []
    columns, rows, caption = stages_cells(record, report.get("heldout"))
    return [*fitted_rows(TITLE, caption, columns, rows, width, LEFT_OUT_FIRST, JSON_OR_WIDER, piped=piped),
            *export_lines(report)[1:]]


def stages_cells(record: dict, heldout=None) -> tuple[list[tuple[str, str]], list[list[str]], str | None]:
    """The columns, rows and caption of the stages of stages_record's `record`: the teacher's row, then a
    row per pass (a guided error's column where a pass recorded one, '-' where another did not); the
    caption names the teacher and the chain's base the errors are against, and the guided error's scale and
    held-out inputs where report.json's `heldout` records them (_guided_words)."""
    bases = list(dict.fromkeys(p["kd_teacher"]["source"] for p in record["passes"] if "kd_teacher" in p))
    guided = any("guided_error" in p for p in record["passes"])
    columns = COLUMNS + [GUIDED] * guided + [BASE] * bool(bases)
    rows = [["teacher", _count(record["teacher"]["params"]), "100.0%" if record["teacher"]["params"] else "-", "-"]
            + ["-"] * guided]
    for p in record["passes"]:
        rows.append([str(p["pass"] or "-"), _count(p["params"]), _share(p["of_teacher"]),
                     _error(p["relative_error"])] + [_error(p.get("guided_error"))] * guided)
    if bases:
        rows[0].append("-")
        for row, p in zip(rows[1:], record["passes"]):
            row.append(_error(p["kd_teacher"]["relative_error"]) if "kd_teacher" in p else "-")
    source = record["teacher"]["source"]
    said = ([f"the teacher: {source}"] if isinstance(source, str) else []) + (
        [f"guided error: of the classifier-free-guided prediction{_guided_words(heldout)}"] if guided else []) + (
        [f"the chain's base: {', '.join(map(str, bases))} (distill.kd_teacher: base)"] if bases else [])
    return columns, rows, "; ".join(said) or None


def _guided_words(heldout) -> str:
    """Where report.json's `heldout` (runner_heldout.heldout_record) records them, the guided error's scale
    and the held-out inputs (rows) it is measured on: ' at s = 3, on 64 held-out inputs'; else ''."""
    heldout = heldout if isinstance(heldout, dict) else {}
    scale, inputs = heldout.get("guidance_scale"), heldout.get("inputs")
    return (f" at s = {scale:g}" if is_number(scale) else "") + (
        f", on {inputs:,} held-out inputs" if is_number(inputs) else "")


def _count(value) -> str:
    return f"{value:,}" if is_number(value) else "-"


def _share(value) -> str:
    return f"{value:.1%}" if is_number(value) else "-"


def _error(value) -> str:
    return error_figure(value)  # 4 significant figures, as the card and eval print them
