"""The checkpoint folders of distill passes on disk (RUN/distill*/checkpoints): a pass's checkpoints set aside
as one set (`set_aside`, into DISCARDED, named by their fingerprint; the oldest past KEPT_ASIDE removed) for a
--resume to take back, what an older dit-compress's swap left filed (`finish_swap`), a pass's checkpoints removed
once its stage is saved (`stage_saved`, the sets aside kept past it: `keep_past`), and every removal made so
that a kill midway leaves no checkpoint that reads whole (`remove_whole`, `whole_checkpoints`). The training
loop's own checkpoints (writing, loading) are `distill_checkpoints.Checkpoints`'."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from compress import json_read
from compress.interrupts import interrupts_held
from compress.passes.distill_resume import DISCARDED, KEPT_ASIDE, KEPT_PAST, newest_meta

_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # a set aside's name (Checkpoints._fingerprint)
_STEP = re.compile(r"(tmp-)?step-\d+")  # a checkpoint's folder (Checkpoints._save)


def aside_as(root: Path, aside: Path) -> Path:
    """Where `set_aside` puts `root`'s checkpoints: ASIDE/<the fingerprint its newest checkpoint records>
    ('unrecorded' where none records one), '-2', '-3', ... added where a set there has that name."""
    meta, _ = newest_meta(root)
    fingerprint = meta.get("fingerprint") if meta else None
    name = fingerprint if isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint) else "unrecorded"
    target, n = aside / name, 1
    while target.exists():
        n += 1
        target = aside / f"{name}-{n}"
    return target


def set_aside(root: Path, aside: Path, spare: Path | None = None) -> Path:
    """`root`'s checkpoints moved into `aside` as one set (`aside_as`), what an interrupted one left filed
    first (`finish_swap`); where `aside` then holds more than KEPT_ASIDE sets, the ones trained longest ago
    are removed, each said in a line (never this one nor `spare`). Returns where it went."""
    finish_swap(root, aside)
    return _moved_aside(root, aside, spare)


def _moved_aside(folder: Path, aside: Path, spare: Path | None = None) -> Path:
    """`set_aside`'s move: one rename (a Ctrl-C before or after it leaves every set whole, each in one place)."""
    target = aside_as(folder, aside)
    aside.mkdir(parents=True, exist_ok=True)
    folder.replace(target)
    _drop_oldest(aside, {target, spare})
    return target


def sets_aside(aside: Path) -> list[Path]:
    """The sets of checkpoints in `aside`, the one trained last first."""
    sets = [p for p in aside.iterdir() if p.is_dir()] if aside.is_dir() else []
    return sorted(sets, key=_trained_at, reverse=True)


def _trained_at(folder: Path) -> float:
    """When `folder`'s newest checkpoint was written (its meta.json's time; the folder's where none has one)."""
    return max((m.stat().st_mtime for m in folder.glob("step-*/meta.json")), default=folder.stat().st_mtime)


def _drop_oldest(aside: Path, kept: set) -> None:
    """Past KEPT_ASIDE sets in `aside`, those trained longest ago removed (never those in `kept`), each said."""
    from compress.report import console

    sets = sets_aside(aside)
    room = max(0, KEPT_ASIDE - sum(1 for s in sets if s in kept))
    for old in [s for s in sets if s not in kept][room:]:
        meta, _ = newest_meta(old)
        step = f" (step {meta['step']})" if meta and "step" in meta else ""
        console.print(f"distill: removed {old}{step}, the oldest of the checkpoints set aside: {KEPT_ASIDE} sets "
                      "are kept", highlight=False, markup=False)
        remove_whole(old)


def finish_swap(root: Path, aside: Path) -> None:
    """What an older dit-compress left where it set checkpoints aside, filed into `aside` as sets
    (`aside_as`), so that none is lost or read in the wrong place: its swap stopped between two renames
    (ROOT.swapping, or ROOT.swapping-N: checkpoints on their way to `aside`), and its `aside` holding one
    set's step-N folders directly. A pass whose `root` is then gone takes back the set trained with its
    settings, as after any setting aside (Checkpoints._takes_back). Every path that writes these folders
    calls it first (or removes them all: `remove_checkpoints`)."""
    flat = [p for p in aside.glob("*step-*") if _STEP.fullmatch(p.name)] if aside.is_dir() else []
    if flat:  # (one rename each, into the same set: stopped midway, the next call moves the rest)
        meta, _ = newest_meta(aside)
        target = aside / (meta["fingerprint"] if _FINGERPRINT.fullmatch(str(meta and meta["fingerprint"]))
                          else "unrecorded")
        target.mkdir(exist_ok=True)
        for step in flat:
            step.replace(target / step.name)
    for between in sorted(root.parent.glob(f"{root.name}.swapping*")):
        if between.is_dir() and any(between.iterdir()):
            _moved_aside(between, aside)
        else:
            shutil.rmtree(between, ignore_errors=True)


def distill_folders(run_dir: Path) -> list[Path]:
    """The distill passes' folders in `run_dir` (distill, distill-2, ...: distill_trainer)."""
    return sorted(d for d in Path(run_dir).glob("distill*") if d.is_dir())


def remove_checkpoints(folder: Path, aside: bool = True) -> list[Path]:
    """A distill pass's `folder` (RUN/distill) without its checkpoints, those set aside (not with `aside`
    False: runner_restore._cleared, which finishes a removal `stage_saved` began, gives them its rule), or
    what a swap an older dit-compress stopped left (ROOT.swapping*); the folders removed, returned. A Ctrl-C
    (SIGTERM) is held until all are gone (a half-removed step-N left a checkpoint no resume could read); a
    kill leaves the rest to the next --resume that keeps the pass's stage (runner_restore._cleared), none of
    it read as a checkpoint (`remove_whole`)."""
    kinds = (folder / "checkpoints", *([folder / DISCARDED] if aside else []),
             *sorted(folder.glob("checkpoints.swapping*")))
    found = [d for d in kinds if d.exists()]
    with interrupts_held():  # (seconds: the files of a few checkpoints)
        for d in found:
            remove_whole(d)
    return found


def stage_saved(folder: Path, fingerprint: str) -> list[Path]:
    """Once the stage of the distill pass whose folder is `folder` (trained with `fingerprint`) is saved:
    its checkpoints removed (the trained student is in the stage), with what an older swap left (filed
    first, finish_swap); of the sets aside (DISCARDED), those a stage saved earlier with another fingerprint
    kept (KEPT_PAST) removed too, the others kept past this stage, marked with `fingerprint`: a --resume that
    undoes the change that set them aside (this stage of the mistaken settings then passed over) takes them
    back. A Ctrl-C (SIGTERM) is held until done. Returns the sets kept."""
    root, aside = folder / "checkpoints", folder / DISCARDED
    with interrupts_held():  # (seconds: the files of a few checkpoints)
        finish_swap(root, aside)
        remove_whole(root)
        return keep_past(aside, fingerprint)


def keep_past(aside: Path, fingerprint: str) -> list[Path]:
    """The sets aside in `aside` (DISCARDED) past a stage of their pass saved with `fingerprint` (`stage_saved`,
    and runner_restore._cleared, which finishes what a stop left of it): those a stage saved earlier with
    another fingerprint kept (KEPT_PAST) removed, the others marked with `fingerprint` and returned (kept)."""
    kept = []
    for old in sets_aside(aside):
        by = kept_past(old)
        if by is not None and by != fingerprint:
            remove_whole(old)
            continue
        if by is None:
            (old / KEPT_PAST).write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
        kept.append(old)
    if aside.is_dir() and not any(aside.iterdir()):
        aside.rmdir()
    return kept


def kept_past(folder: Path) -> str | None:
    """The fingerprint of the distill training whose saved stage kept the set aside in `folder` (KEPT_PAST);
    None where none did (or its record does not read: kept once more, never removed early)."""
    try:
        fingerprint = json_read.read(folder / KEPT_PAST).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return fingerprint if isinstance(fingerprint, str) else None


def remove_whole(folder: Path) -> None:
    """A checkpoint's folder (step-N), or a folder of them (a pass's checkpoints, a set aside, DISCARDED),
    deleted so that a kill midway (kill -9: nothing holds it) leaves no checkpoint that reads as whole: every
    meta.json in it first (newest_meta, and so setting aside and taking back, pass over a step-N without one;
    `whole_checkpoints`), then the rest."""
    for meta in [folder / "meta.json", *folder.rglob("step-*/meta.json")]:
        try:
            meta.unlink(missing_ok=True)
        except OSError:  # (not a file): rmtree's to remove
            pass
    shutil.rmtree(folder, ignore_errors=True)


def whole_checkpoints(root: Path) -> bool:
    """Whether `root` holds a complete checkpoint (a step-N with its meta.json, written last; as
    runner_resume.distill_checkpoints counts them): a folder a kill left half removed (`remove_whole`: each
    meta.json goes first), or holding only a checkpoint being written (tmp-step-N), holds none."""
    return any((step / "meta.json").is_file() for step in root.glob("step-*"))
