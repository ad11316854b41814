"""Whether a distill pass's checkpoints may be resumed: the settings a checkpoint's meta.json records
against the recipe's now (in words where they differ), and the process count that trained it,
checked before a resumed run loads anything (`check_resumable_configs`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch

from compress import json_read
from compress.errors import UserError
from compress.passes.distill_config import DistillConfig
from compress.runner_resume_step import distill_folder

# config keys that do not change the result (left out of the checkpoint fingerprint)
NOT_FINGERPRINTED = ("max_steps_this_run", "checkpoint_every", "keep_checkpoints", "progress", "plot",
                     "gradient_checkpointing")
# of those, the keys an older dit-compress hashed into a checkpoint's fingerprint (`Checkpoints._fingerprint`
# puts back the value its meta.json records, so that it keeps resuming)
ONCE_FINGERPRINTED = ("gradient_checkpointing",)
_SETTING_NAMES = {"seed": "calibration.seed", "processes": "process count"}
# beside a pass's checkpoints/: those --resume set aside (trained with other keys of the pass, or after a
# changed earlier pass), each set in a folder named by its fingerprint, the KEPT_ASIDE trained last, until
# the run starts over or a second stage of the pass with other settings is saved: the first one's saved
# stage keeps them, KEPT_PAST in each naming its fingerprint (distill_checkpoint_folders.set_aside, stage_saved)
DISCARDED = "checkpoints.discarded"
KEPT_ASIDE = 3
KEPT_PAST = "kept-past-stage.json"


def calibration_settings(calib, fingerprint: str) -> dict:
    """What teacher samples depend on beyond the distill keys, as a checkpoint records it: the
    recipe's calibration keys (calibration_keys), which a resumed run compares before the teacher
    loads, and the run `fingerprint`, which also holds the prompts read (a pipeline source's; a toy
    or synthetic source's PROMPT_KEYS, which it reads none of), the pipeline's other parts and the
    teacher (compared once the run has them)."""
    return {"config": calibration_keys(calib), "fingerprint": fingerprint}


def calibration_keys(calib) -> dict | None:
    """The recipe's calibration keys teacher samples depend on (`result_bearing`), but the seed
    (recorded apart) and the PROMPT_KEYS that choose the prompts: the run fingerprint holds the
    prompts read, so that an output's recipe.yaml (its prompt_file's lines inline) resumes a
    checkpoint of the recipe it was written from, as its stages do. None without a calibration."""
    return None if calib is None else _compared(asdict(calib))


def _compared(config: dict) -> dict:
    """Of recorded calibration keys, those compared (calibration_keys): a checkpoint of an older
    dit-compress records the PROMPT_KEYS too, left out here as they are now."""
    from compress.runner_resume import result_bearing

    return {k: v for k, v in result_bearing(config, prompts_apart=True).items() if k != "seed"}


def _calibration_words(then, now) -> str:
    """How a checkpoint's `calibration_settings` differ from now's, in words."""
    was = (then or {}).get("config") if isinstance(then, dict) else None
    is_ = (now or {}).get("config") if isinstance(now, dict) else None
    was, is_ = (_compared(c) if isinstance(c, dict) else None for c in (was, is_))
    if was is not None and is_ is not None and was != is_:
        return "; ".join(f"calibration.{k}: {was.get(k)!r} in the checkpoint, {is_.get(k)!r} now"
                         for k in sorted(set(was) | set(is_)) if was.get(k) != is_.get(k))
    return ("the calibration inputs (prompts, pipeline or teacher) changed, or the dit-compress version: "
            "its teacher samples are of other inputs")


def older_defaults(then: dict, now: dict) -> dict:
    """The distill keys `now` holds that a checkpoint's recorded settings `then` lack (its dit-compress had
    no such key yet), each at its DistillConfig default as meta.json holds it: what that checkpoint was
    trained with, so it compares at that value (setting_changes, of_other_keys, Checkpoints._fingerprint),
    not as None."""
    missing = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(DistillConfig)
               if f.name in now and f.name not in then}
    return json.loads(json.dumps(missing, default=str))


def setting_changes(meta: dict, now: dict) -> str:
    """The settings a checkpoint's meta.json records that differ from `now`, in words; what they may
    be where it records none (an older dit-compress). A distill key it does not record is compared at
    its default (older_defaults)."""
    then = meta.get("settings")
    if then is None:
        return (f"config, seed, block map, process count: {meta['processes']}, or another incoming student; "
                "this checkpoint does not record which")
    now = json.loads(json.dumps(now, default=str))  # as meta.json holds them
    then = {**older_defaults(then, now), **then}
    words = []
    for key in sorted(set(then) | set(now)):
        if (then.get(key) == now.get(key) or (key == "calibration" and key not in then)  # (older: compared as before)
                or key in ONCE_FINGERPRINTED):
            continue
        if key == "calibration":
            words.append(_calibration_words(then[key], now.get(key)))
        elif key == "student":
            words.append("the incoming student (the passes before it wrote another)")
        elif key == "block_map":
            words.append("block map")
        else:
            words.append(f"{_SETTING_NAMES.get(key, f'distill.{key}')}: {then.get(key)!r} in the checkpoint, "
                         f"{now.get(key)!r} now")
    return "; ".join(words) or "its fingerprint differs"


def pass_key(index: int | None) -> str:
    """How a distill pass's keys are named: 'passes.2.distill' (two distill passes told apart, as
    runner_failures' memory hints name them), 'distill' where its place is unknown (a pass made alone)."""
    return "distill" if index is None else f"passes.{index}.distill"


def resume_keeps(cfg: DistillConfig, index: int | None, samples: bool = True) -> str:
    """What --resume keeps of a run whose distill pass `index` (None: unknown) stopped, in words: 'the
    passes before it', 'the teacher samples' (data: teacher_samples, where `samples`: they are of the
    inputs it reads now), both, or '' (neither)."""
    kept = ["the passes before it"] if index else []
    return " and ".join(kept + (["the teacher samples"] if samples and cfg.data == "teacher_samples" else []))


def lower_lr(cfg: DistillConfig, index: int | None) -> str:
    """What a diverged distill pass `index` is to change: 'lower passes.N.distill.lr (LR)[ or set
    passes.N.distill.grad_clip (0 now: no clipping)] and rerun with --resume'."""
    key = pass_key(index)
    clip = f" or set {key}.grad_clip (0 now: no clipping)" if cfg.grad_clip == 0 else ""
    return f"lower {key}.lr ({cfg.lr:g}){clip} and rerun with --resume"


def trains_again(cfg: DistillConfig, index: int | None) -> str:
    """What that --resume does: 'it keeps KEPT, and trains this pass from its start' (resume_keeps), or
    'it trains this pass from its start' where it keeps nothing."""
    kept = resume_keeps(cfg, index)
    return f"{f'it keeps {kept}, and ' if kept else 'it '}trains this pass from its start"


def from_its_start(checkpoints: Path, cfg: DistillConfig, index: int | None, samples: bool = True) -> str:
    """How a refused checkpoint's pass trains again: 'delete CHECKPOINTS to train this pass from its start
    (--resume keeps ...: resume_keeps), or rerun with --restart to start over'."""
    kept = resume_keeps(cfg, index, samples)
    return (f"delete {checkpoints} to train this pass from its start{f' (--resume keeps {kept})' if kept else ''}, "
            "or rerun with --restart to start over")


def check_resumable_configs(run_dir: Path, configs: list, calibration=None, indices: list | None = None) -> None:
    """Before a resumed run loads anything: the latest checkpoint of each distill pass (`configs`:
    their DistillConfigs, in recipe order, `indices` their places in the recipe's passes, None: not
    known; checkpoints in run_dir/distill, distill-2, ...) was
    trained, on teacher samples, with the recipe's `calibration` keys and by this many processes, or
    a UserError as _load_latest gives once the pass starts (seed, block map, incoming student and the
    prompts read are compared there: they need the run). One trained with other distill keys alone
    is no refusal: the pass discards it and trains from its start (`of_other_keys`)."""
    for n, cfg in enumerate(configs):
        folder = Path(run_dir) / distill_folder(n + 1)
        meta, checkpoint = newest_meta(folder / "checkpoints")
        then = meta.get("settings") if meta is not None else None
        if not isinstance(then, dict):
            continue
        now = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in NOT_FINGERPRINTED},
                                    default=str))  # as meta.json holds them
        config_then = {k: then[k] for k in now if k in then}
        _check_process_count(then.get("processes"), checkpoint, folder)
        calib_then = then.get("calibration")
        if (calibration is not None and cfg.data == "teacher_samples" and isinstance(calib_then, dict)
                and isinstance(calib_then.get("config"), dict)):
            config_then["calibration"] = {"config": _compared(calib_then["config"])}
            now["calibration"] = {"config": json.loads(json.dumps(calibration_keys(calibration), default=str))}
        # other distill keys alone are no refusal: the pass discards the checkpoint (`of_other_keys`)
        if config_then.get("calibration") != now.get("calibration"):
            raise UserError(f"distill: checkpoint {checkpoint} was trained with other settings "
                            f"({setting_changes({'settings': config_then}, now)}); "  # (its samples: of the old keys)
                            f"{from_its_start(folder / 'checkpoints', cfg, indices[n] if indices else None, False)}")


def newest_meta(checkpoints: Path) -> tuple[dict | None, Path | None]:
    """(meta.json, its checkpoint) of the newest checkpoint in `checkpoints` whose meta.json reads and
    records a fingerprint (the pass warns of a damaged one and resumes before it); (None, None): none."""
    for checkpoint in sorted(checkpoints.glob("step-*"), reverse=True):
        try:
            meta = json_read.read(checkpoint / "meta.json")
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "fingerprint" in meta:
            return meta, checkpoint
    return None, None


def of_other_keys(then, now: dict, keys) -> bool:
    """Whether a checkpoint's recorded settings `then` differ from `now` (`Checkpoints._settings`) in
    the distill config `keys` alone (a `--set passes.N.distill.lr=...`), which --resume answers by
    training the pass from its start, as it does a pass after a changed one; not where the seed,
    calibration, block map, process count or incoming student differ too, or nothing is recorded. A
    distill key `then` does not record is compared at its default (older_defaults)."""
    if not isinstance(then, dict):
        return False
    now = json.loads(json.dumps(now, default=str))  # as meta.json holds them
    then = {**older_defaults(then, now), **then}
    if "calibration" not in then:  # an older checkpoint's: compared without it (_fingerprint)
        now.pop("calibration", None)
    rest = [{k: v for k, v in s.items() if k not in {*keys, *ONCE_FINGERPRINTED}} for s in (then, now)]
    return rest[0] == rest[1] and any(then.get(k) != now.get(k) for k in keys)


def _check_process_count(then, checkpoint: Path, folder: Path) -> None:
    """A checkpoint trained by another number of processes (runner_ranks.world_size; 1 for a plain run) is
    refused before anything loads, saying how to continue it: the same count again, with --resume."""
    from compress.runner_ranks import world_size

    now = world_size()
    if not isinstance(then, int) or then == now:
        return
    launch = f"torchrun --nproc_per_node {then} -m compress.cli run …" if then > 1 else "dit-compress run …"
    raise UserError(f"distill: checkpoint {checkpoint} was trained by {then} process{'es' if then > 1 else ''}, "
                    f"{now} now: relaunch with {then} ({launch} --resume) to continue it, delete "
                    f"{folder / 'checkpoints'} to train this pass from its start, or rerun with --restart to "
                    "start over")


def checksum(model: torch.nn.Module) -> str:
    """Names, shapes and float64 sums of every tensor: which student a training starts from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{float(t.detach().sum(dtype=torch.float64)).hex()}".encode())
    return h.hexdigest()[:16]
