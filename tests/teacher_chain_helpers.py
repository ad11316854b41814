"""Outputs compressed from outputs, for the tests of the teacher chain (report_teacher.teacher_chain)."""

import json
from pathlib import Path


def output_config(folder: Path, teacher: str | None) -> Path:
    """`folder` as a dit-compress output's config.json alone (a compression section recording
    `teacher`): what the chain reads, without weights."""
    folder.mkdir(parents=True, exist_ok=True)
    section = {"format": 1} if teacher is None else {"format": 1, "teacher": teacher}
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel",
                                                    "compression": section}))
    return folder


def chained_outputs(tmp_path: Path, base: str) -> tuple[Path, Path]:
    """(a, d): the output a records `base` as its teacher, d records a (absolute, as a run does)."""
    a = output_config(tmp_path / "a", base)
    return a, output_config(tmp_path / "d", str(a.resolve()))
