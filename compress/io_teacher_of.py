"""The teacher a compressed model is compared with (eval, bench, distill's kd_teacher: base): `load_teacher_of`
loads it (io.load_teacher) of the model's family, checks it is the architecture the model was compressed from
(`check_same_architecture`; `check_same_config` against a config alone, as load_pipeline's base pipeline is),
and merges into it the LoRAs the model took since (lora_replay).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.arch import get_adapter
from compress.errors import UserError
from compress.io import load_teacher

GIVE_TEACHER = "pass its teacher with --teacher"  # check_same_architecture's way out (eval, bench)


def load_teacher_of(student: nn.Module, source: str, config: str | None = None,
                    loras: list[str] | None = None, dtype: torch.dtype | None = torch.float32,
                    advice: str = GIVE_TEACHER, where: str = "") -> nn.Module:
    """The teacher to compare `student` with (eval, bench): of the student's family, or a UserError;
    with the LoRAs the student recorded merged into it (`loras`: where they are now, eval's and
    bench's --lora, in place of the recorded places). `dtype`: load_teacher's (None: as stored,
    whose bytes bench compares the export's with). `advice`: how a teacher of other widths is put right
    (check_same_architecture's; distill's kd_teacher: base has no --teacher). `where`: the start of an
    error about the source or its config ('--teacher: ' where the command line gave it; io_source_config.checked)."""
    from compress.io_source_config import checked

    recorded = (getattr(student, "compression_meta", None) or {}).get("loras")
    if loras and not recorded:
        raise UserError("--lora: the model took no LoRA (dit-compress lora or compress.merge_lora); its teacher is "
                        "compared as it is")
    if recorded:  # said before the teacher loads: a LoRA no longer where the student recorded it
        from compress.lora_replay import replayed_sources

        replayed_sources(recorded, loras)
    family, src = get_adapter(student).family, checked(source, config, where)  # checked once
    found = src.family()  # from its config: before a Hub teacher downloads
    if found and found[0] != family:
        raise UserError(f"{where}teacher {source} is a {found[1]}; the model to compare with it is a "
                        f"{type(student).__name__}")
    teacher = load_teacher(src, dtype, config=config, family=family).eval()
    if get_adapter(teacher).family != family:
        raise UserError(f"{where}teacher {source} is a {type(teacher).__name__}; the model to compare with "
                        f"it is a {type(student).__name__}")
    check_same_architecture(student, teacher, source, advice)
    if recorded:  # a student that took LoRAs (dit-compress lora) stands for its teacher with them
        from compress.lora_replay import replay
        from compress.lora_replay_moved import took_counts

        meta = student.compression_meta
        replay(teacher, recorded, loras, meta.get("teacher"), source, meta.get("teacher_files"), took_counts(student))
    return teacher


def check_same_architecture(student: nn.Module, teacher: nn.Module, source: str, advice: str = GIVE_TEACHER) -> None:
    """A UserError naming the config keys where `teacher` is not the architecture `student` was
    compressed from (its widths, heads, channels ...); block counts may differ (removed blocks)."""
    check_same_config(student, dict(teacher.config), f"teacher {source}", advice)


def check_same_config(student: nn.Module, config: dict, what: str, advice: str) -> None:
    """check_same_architecture against a diffusers config (a dict), compared as diffusers builds models
    from both (config_compare: an explicit value equal to what a null resolves to is no difference)."""
    from compress.config_compare import config_differences, shown_differences

    differ = config_differences(dict(student.config), config, type(student).__name__)
    if differ:
        raise UserError(f"{what} is not the model this one was compressed from: its config "
                        f"has {shown_differences(differ)}; {advice}")
