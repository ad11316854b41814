"""Which teacher eval and bench measured an output against, as they say it: the source as --teacher
gave it or as the output records it (report_teacher.recorded_teacher), and which of the two. In a
chain of outputs (each compressed from the one before) the recorded teacher is the link before."""

from __future__ import annotations

GIVEN, RECORDED = "--teacher", "recorded"  # where the teacher came from: the --json key teacher_from


def teacher_fields(source: str, teacher_arg: str | None) -> dict:
    """The --json keys naming the teacher: {"teacher": source, "teacher_from": "--teacher" or
    "recorded"}; `teacher_arg`: the command's --teacher (None: the output's record gave `source`)."""
    return {"teacher": source, "teacher_from": GIVEN if teacher_arg else RECORDED}


def against(fields: dict, out) -> str:
    """'against the teacher SOURCE, given by --teacher' or 'against the teacher SOURCE, which OUT
    records' (`fields`: teacher_fields; `out`: the output as the user named it)."""
    where = "given by --teacher" if fields["teacher_from"] == GIVEN else f"which {out} records"
    return f"against the teacher {fields['teacher']}, {where}"
