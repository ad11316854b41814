"""Which teacher eval and bench measured an output against, as they say it: the source as --teacher
gave it or as the output records it (report_teacher.recorded_teacher), and which of the two; for an
output that took LoRAs (dit-compress lora or compress.merge_lora), the LoRAs that teacher took to stand
for it (lora_replay.replay). In a chain of outputs (each compressed from the one before) the recorded
teacher is the link before."""

from __future__ import annotations

GIVEN, RECORDED = "--teacher", "recorded"  # where the teacher came from: the --json key teacher_from


def teacher_fields(source: str, teacher_arg: str | None, loras: list[dict] | None = None) -> dict:
    """The --json keys naming the teacher: {"teacher": source, "teacher_from": "--teacher" or
    "recorded"}, and "teacher_loras" where it took LoRAs (`loras`: teacher_loras); `teacher_arg`: the
    command's --teacher (None: the output's record gave `source`)."""
    fields = {"teacher": source, "teacher_from": GIVEN if teacher_arg else RECORDED}
    return {**fields, "teacher_loras": loras} if loras else fields


def teacher_loras(model, moved: list[str] | None = None) -> list[dict]:
    """[{"file": where a LoRA was read from, "scale": its scale}] for each LoRA the output `model` took
    (its compression record's loras, in order), which its teacher takes too (io_teacher_of.load_teacher_of):
    their recorded places, or `moved` (--lora: where they are now, absolute where local, as the places
    are recorded); [] for a model that took none."""
    recorded = (getattr(model, "compression_meta", None) or {}).get("loras") or []
    places = [_as_recorded(str(place)) for place in moved] if moved else [record["source"] for record in recorded]
    return [{"file": place, "scale": record["scale"]} for place, record in zip(places, recorded)]


def _as_recorded(place: str) -> str:
    """A LoRA's place as dit-compress lora records it (lora._source): an absolute path where it is
    local, else the Hub id as given."""
    from pathlib import Path

    from compress.io_source import looks_local

    return str(Path(place).expanduser().resolve()) if looks_local(place) else place


def against(fields: dict, out) -> str:
    """'against the teacher SOURCE, given by --teacher' or 'against the teacher SOURCE, which OUT
    records', and where it took LoRAs ', with the LoRA OUT took merged in: FILE at scale S' (`fields`:
    teacher_fields; `out`: the output as the user named it)."""
    where = "given by --teacher" if fields["teacher_from"] == GIVEN else f"which {out} records"
    return f"against the teacher {fields['teacher']}, {where}{_with_loras(fields.get('teacher_loras'), out)}"


def _with_loras(loras: list[dict] | None, out) -> str:
    """', with the LoRA OUT took merged in: FILE at scale S' ('the 2 LoRAs ...: A at scale S, B at
    scale T'), '' for none."""
    if not loras:
        return ""
    which = "the LoRA" if len(loras) == 1 else f"the {len(loras)} LoRAs"
    each = ", ".join(f"{lora['file']} at scale {lora['scale']:g}" for lora in loras)
    return f", with {which} {out} took merged in (dit-compress lora or compress.merge_lora): {each}"
