"""Which teacher a run read, as --resume, a plain rerun and the processes of a launch compare it: the
checksum of its weights (`weights_checksum`), its identity (`teacher_identity`: the source, the
--teacher-config and the checksum of the config file it reads, the loaded config and the weights), and
whether two identities are one teacher (`same_teacher`: a config by what it holds, else by the file it
names), with the difference in words (`teacher_change`) and what to do about it (`resume_advice`: undo
the edit of a config changed in place, else --restart or that teacher). Moved out of runner_resume.
Imports no torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from compress.output_names import without_refusal
from compress.recipe_teacher_config import FLAG, reads_no_config
from compress.runner_config_sum import CONFIG_SUM, config_checksum, config_read, config_target

if TYPE_CHECKING:
    import torch


def weights_checksum(teacher: torch.nn.Module, models) -> str:
    """A checksum of the teacher's weights (`models.fingerprint`: every byte), taken once per run."""
    h = hashlib.sha256()
    models.fingerprint(teacher, h)
    return h.hexdigest()


CHECKSUM_OF = "every byte"  # what `weights_checksum` reads (older runs: a few values of each tensor)
FILES = "files"  # in a teacher identity: io_signature.teacher_signature of its weight files (older runs: none)


def named_teacher(source: str, config: str | None) -> dict:
    """The teacher source and --teacher-config as --resume compares them (a local path made absolute, ~
    expanded: the output records them so), and CONFIG_SUM, the checksum of the config file the teacher reads
    (`config_read`) where it is local, known before the teacher loads."""
    def where(s):
        return str(Path(s).expanduser().resolve()) if s and Path(s).expanduser().exists() else s

    named = {"source": where(source), "config": where(config)}
    file = config_read(source, config)
    checksum = config_checksum(file) if file is not None else None
    return {**named, CONFIG_SUM: checksum} if checksum else named


def named_now(source: str, config: str | None) -> dict:
    """named_teacher's for the teacher a run names now, as the run compares it: a --teacher-config its toy
    or folder teacher does not read left out (runner_prepare drops it once warned)."""
    named = named_teacher(source, config)
    return named_teacher(source, None) if config and reads_no_config(named["source"], recorded=True) else named


def teacher_identity(source: str, config: str | None, teacher: torch.nn.Module, weights: str,
                     files: dict | None = None) -> dict:
    """What --resume compares besides the recipe: the teacher source and --teacher-config and the
    checksum of the config file it reads (named_teacher), the model config and `weights_checksum`; and
    FILES, the signature of a local teacher's weight files (`files`: io_signature.teacher_signature, where
    given), which tells a copy of it elsewhere before it loads (`copied`)."""
    loaded = without_refusal(dict(teacher.config))  # an output's (a run recorded before it: the same teacher)
    h = hashlib.sha256(json.dumps({k: v for k, v in loaded.items() if not k.startswith("_")},
                                  sort_keys=True, default=str).encode())
    h.update(weights.encode())
    identity = {**named_teacher(source, config), "checksum": h.hexdigest()[:16], "checksum_of": CHECKSUM_OF}
    return {**identity, FILES: files} if files else identity


def older_checksum(before: dict, now: dict) -> bool:
    """Whether `before` is an identity of the same source and --teacher-config whose checksum is of
    an older kind (a few values of each tensor: before CHECKSUM_OF), so its weights cannot be compared."""
    return before.get("checksum_of") != now.get("checksum_of") and before.get("source") == now["source"] \
        and same_config_of(before, now)


def same_teacher(before: dict, now: dict) -> bool:
    """Whether the teacher a stage recorded (`before`: teacher_identity's, as_compared) is `now`'s: every
    key the same, the config as `same_config_of` compares it (by what it holds, or by the file it names),
    the source the same or holding a copy of that teacher (`copied`: moved or copied elsewhere)."""
    def rest(teacher: dict) -> dict:
        return {k: v for k, v in teacher.items() if k not in ("source", "config", CONFIG_SUM, FILES)}

    return rest(before) == rest(now) and same_config_of(before, now) and (
        before.get("source") == now.get("source") or copied(before, now))


def copied(before: dict, now: dict) -> bool:
    """Whether the teacher `now` names at another path than `before` (teacher_identity's or named_teacher's)
    is a copy of it: the config file it reads holds the same and its weights are the same (`same_weights`).
    An older record without their signature, a toy or a Hub id: not a copy."""
    return same_weights(before, now) is True


def same_weights(before: dict, now: dict) -> bool | None:
    """Whether the teacher `now` names reads a config that holds what `before`'s held (CONFIG_SUM known in
    both) and the same weights: by the checksum of every byte where both record it (the loaded teacher's:
    every run takes it once, so comparing it costs nothing more), else (before it loads) by the signature
    of its weight files (FILES: size, safetensors header, each tensor's ends and 16 chunks of each file,
    about 1 MiB read per file, and their tensors' digest), recorded by the run against that of the files
    named now (`same_files`).
    None where that cannot be told: another config, an older record without them, a toy or a Hub id."""
    if before.get(CONFIG_SUM) is None or before.get(CONFIG_SUM) != now.get(CONFIG_SUM):
        return None
    if "checksum" in before and "checksum" in now:
        return before["checksum"] == now["checksum"] if before.get("checksum_of") == now.get("checksum_of") else None
    return same_files(before.get(FILES), now.get("source"))


def same_files(recorded, source) -> bool | None:
    """Whether the weight files of the local teacher `source` hold what a recorded signature (FILES) says
    (`files_say`): True where they do, False where they hold other tensors; None where either is
    missing or of another method, and where only the loaded teacher's checksum can tell (UNTOLD)."""
    return {SAME: True, OTHER: False}.get(files_say(recorded, source))


SAME, OTHER, UNTOLD = "same", "other", "untold before it loads"  # files_say's words


def files_say(recorded, source) -> str | None:
    """What the weight files of the local teacher `source` say of a recorded signature (FILES): SAME where
    they are files of the same signatures, whatever their names (a single file renamed, a folder moved),
    or hold the same tensors (io_signature.tensors_digest, where both have it: the teacher resharded, or
    its .bin written again as safetensors) in files that differ only by name (io_signature.tensors_say_same);
    UNTOLD where the tensors digests are equal but a file of one name holds other bytes: a copy re-saved
    with other metadata, tensor order or split, or a byte changed where the sampled digest does not read,
    which only the checksum of every byte of the loaded teacher tells apart; OTHER otherwise; None where
    either is missing or of another method. The digest is read only where the files' signatures differ
    (io_signature.signature_against)."""
    from compress.io_signature import comparable, same_contents, same_digest, signature_against, tensors_say_same

    if not (comparable(recorded) and isinstance(source, str)):
        return None
    now = signature_against(recorded, source, same_contents, renames_only=False)
    if now is None:
        return None
    if same_contents(now, recorded) or tensors_say_same(now, recorded):
        return SAME
    return UNTOLD if same_digest(now, recorded) else OTHER


def same_before_loading(before: dict, now: dict) -> bool:
    """same_teacher as the checks made before the teacher loads ask it (`now`: named_teacher's, `before`
    named_of's): the same teacher, or one whose copy at another path only its loaded checksum can tell
    (`untold_before_loading`), which --resume compares once it has loaded (runner_restore, runner_measured):
    a copy re-saved otherwise resumes, other weights are refused there."""
    return same_teacher(before, now) or untold_before_loading(before, now)


def untold_before_loading(before: dict, now: dict) -> bool:
    """Whether the teacher `now` names at another path than `before`, its config holding the same (CONFIG_SUM
    known in both) and all else the same, has weight files of which only the loaded checksum can tell
    whether they hold `before`'s weights (files_say's UNTOLD)."""
    if before.get("source") == now.get("source") or ("checksum" in before and "checksum" in now) \
            or before.get(CONFIG_SUM) is None or not same_teacher(before, {**now, "source": before.get("source")}):
        return False
    return files_say(before.get(FILES), now.get("source")) == UNTOLD


def teacher_moved(before: dict, now: dict) -> str | None:
    """'the teacher moved from A to B (its config and weights the same)' where `now` names a copy of the
    teacher `before` at another path (`same_teacher` by `copied`); else None."""
    if before.get("source") == now.get("source") or not same_teacher(before, now):
        return None
    return f"the teacher moved from {before['source']} to {now['source']} (its config and weights the same)"


def same_config_of(before: dict, now: dict) -> bool:
    """Whether two teacher identities (named_teacher's) read the same config: by what it holds (CONFIG_SUM)
    where both record it, so that a copy elsewhere is the same config and one changed in place is not;
    else (an older record) by the file their --teacher-configs name (`same_config`)."""
    return same_config(before.get("config"), now.get("config"), (before.get(CONFIG_SUM), now.get(CONFIG_SUM)))


def same_config(before: str | None, now: str | None, checksums: tuple = (None, None)) -> bool:
    """Whether two --teacher-configs (named_teacher's) are one config: where both `checksums` (CONFIG_SUM)
    are known, whether they are equal; else whether they name the same file: `config_target`'s, so that a
    folder and the config.json it holds, or a symlink and its target, are one config; where either names
    none (gone since), as written."""
    if None not in checksums:
        return checksums[0] == checksums[1]
    if before == now:
        return True
    targets = (config_target(before), config_target(now)) if before and now else (None, None)
    return targets[0] is not None and targets[0] == targets[1]


def teacher_change(before: dict, now: dict, config_by: tuple[str, str] = FLAG) -> str:
    """What differs between two `teacher_identity`s, in words; `config_by`: how `now`'s config was given
    (recipe_teacher_config.config_by: --teacher-config, or the recipe's teacher_config at its file:line).
    A copy elsewhere whose config holds the same but whose weights differ says so (`other_weights`)."""
    if before["source"] != now["source"]:
        same = " (the same config, other weights)" if other_weights(before, now) else ""
        return f"was {before['source']}, now {now['source']}{same}"
    name, where = config_by
    if not same_config_of(before, now):
        if not same_config(before["config"], now["config"]):
            return f"{name}{where} was {_given(before['config'])}, now {_given(now['config'])}"
        file = (f"{name} {now['config']}{where}" if now["config"] else
                config_read(now["source"], None) or f"{now['source']}'s config")
        return f"{file} changed since the run (its contents differ)"
    if weights_changed(before, now):
        return f"the weights of {now['source']} changed since the run (its config holds the same)"
    return f"{now['source']} holds other weights or config"


def other_weights(before: dict, now: dict) -> bool:
    """Whether the teacher `now` names at another path than `before` reads a config that holds the same
    but other weights (`same_weights`); False where that cannot be told (an older record, a Hub id)."""
    return same_weights(before, now) is False


def weights_changed(before: dict, now: dict) -> bool:
    """Whether two `teacher_identity`s of one source whose config file holds the same (CONFIG_SUM known and
    equal in both) differ: the weights changed in place, which no other teacher named undoes."""
    return before["source"] == now["source"] and before.get(CONFIG_SUM) is not None \
        and before.get(CONFIG_SUM) == now.get(CONFIG_SUM) and before.get("checksum") != now.get("checksum")


def put_back(before: dict, now: dict) -> str | None:
    """'put back the weights SOURCE had' where `weights_changed`; 'undo the change to FILE' where a config
    was edited in place (`edited_config`); None otherwise (another teacher named: rerun with that one)."""
    if weights_changed(before, now):
        return f"put back the weights {now['source']} had"
    edited = edited_config(before, now)
    return f"undo the change to {edited}" if edited else None


def edited_config(before: dict, now: dict) -> str | None:
    """The config file edited in place since `before` was recorded, where that is what tells the two
    `teacher_identity`s apart (the same source and config named, what it holds changed: teacher_change's
    '... changed since the run'), so that the advice is to undo that edit rather than to name another
    teacher; None where another teacher or --teacher-config is named, or the configs are the same."""
    if before["source"] != now["source"] or same_config_of(before, now) \
            or not same_config(before["config"], now["config"]):
        return None
    file = config_read(now["source"], now["config"])
    return str(file) if file is not None else (now["config"] or f"{now['source']}'s config")


def resume_advice(before: dict, now: dict, resume: bool) -> str:
    """What to do about a teacher that changed since a run was interrupted (`teacher_change`): where its
    config was edited in place or its weights changed (`put_back`), undo that and --resume, or --restart; else --restart,
    or (a plain rerun's) rerun with the teacher it recorded and --resume. `resume`: said to --resume."""
    undo = put_back(before, now)
    if undo:
        how = "rerun with --resume" if resume else "add --resume to continue"
        restart = "rerun with --restart" if resume else "add --restart"
        return f"{undo} and {how}, or {restart} to start over"
    if resume:
        return "rerun with --restart to start over"
    return "add --restart to start over, or rerun with that teacher and --resume to continue"


def _given(config: str | None) -> str:
    return config or "not given"


def as_compared(teacher):
    """A teacher a stage recorded (teacher_identity's) as --resume compares it now: a --teacher-config its
    toy or folder teacher does not read taken out (runs before 652e195 recorded one; later runs drop it
    once warned, runner_prepare), so that it is no other teacher's."""
    if isinstance(teacher, dict) and teacher.get("config") and reads_no_config(teacher.get("source"), recorded=True):
        return dict(teacher, config=None)
    return teacher
