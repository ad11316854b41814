"""The checkpoints of the `distill` pass's training loop (`Checkpoints`, which
`compress.passes.distill_trainer._Trainer` builds on): what the training depends on and its fingerprint,
writing a checkpoint (whole or not at all; a full disk said as ENOSPC, a file-size limit as EFBIG), and loading the newest one that
reads whole where a run resumes (whether its settings allow that: `compress.passes.distill_resume`)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError

from compress import json_read
from compress.calib_store import write_stopped
from compress.distill_utils import write_curves
from compress.errors import UserError
from compress.interrupts import interrupts_held
from compress.passes.distill_resume import (DISCARDED, KEPT_ASIDE, KEPT_PAST, NOT_FINGERPRINTED, ONCE_FINGERPRINTED,
                                            calibration_settings, from_its_start, newest_meta, of_other_keys,
                                            older_defaults, setting_changes)

_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # a set aside's name (Checkpoints._fingerprint)
_STEP = re.compile(r"(tmp-)?step-\d+")  # a checkpoint's folder (Checkpoints._save)


class Checkpoints:
    """The checkpoint methods of `_Trainer`, which sets what they read: cfg, ctx, acc, dir, block_map,
    incoming, step, history, before, generator, seconds_before, resumed, t0."""

    # ---- checkpoints --------------------------------------------------------------------------
    def _settings(self) -> dict:
        """What the training depends on: config keys (not `NOT_FINGERPRINTED`), seed, process count,
        block map and the incoming student's checksum; with data: teacher_samples also the samples'
        calibration (`calibration_settings`: the run fingerprint, which keys their cache)."""
        keys = {k: v for k, v in asdict(self.cfg).items() if k not in NOT_FINGERPRINTED}
        keys.update(seed=self.ctx.seed, processes=self.acc.num_processes, block_map=self.block_map,
                    student=self.incoming)
        if self.cfg.data == "teacher_samples":
            keys["calibration"] = calibration_settings(self.ctx.calibration, self.ctx.fingerprint)
        return keys

    def _fingerprint(self, meta: dict | None = None) -> str:
        """Of `_settings`; as an older dit-compress took it for a checkpoint whose `meta` records no
        calibration, or was hashed with a key now result-free (ONCE_FINGERPRINTED: the value its meta
        records; the recipe's where it records no settings), or before a distill key was added (one it does
        not record, left out where the recipe has it at its default: older_defaults): it keeps resuming."""
        settings = self._settings()
        if meta is not None:
            then = meta.get("settings")
            if "calibration" not in (then or {}):
                settings.pop("calibration", None)
            if isinstance(then, dict):
                now = json.loads(json.dumps(settings, default=str))  # as meta.json holds them
                for key, default in older_defaults(then, now).items():
                    if now[key] == default:
                        settings.pop(key)
            for key in ONCE_FINGERPRINTED:
                if not isinstance(then, dict):
                    settings[key] = getattr(self.cfg, key)
                elif key in then:
                    settings[key] = then[key]
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _save(self) -> None:
        acc, root = self.acc, self.dir / "checkpoints"
        final, tmp = root / f"step-{self.step:08d}", root / f"tmp-step-{self.step:08d}"
        if acc.is_main_process:
            self.ctx.before_saving()  # a finished run's stages kept so far are not resumed over this checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            torch.save({"step": self.step, "generator": self.generator.get_state(), "history": self.history,
                        "before": self.before, "seconds": self.seconds_before + time.perf_counter() - self.t0,
                        "resumed": self.resumed},
                       tmp / f"train_state_{acc.process_index}.pt")
        except RuntimeError as e:  # torch's zip writer on a full disk or at ulimit -f: "unexpected pos"
            stopped = write_stopped(tmp, list(tmp.rglob("*")))
            if stopped is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(stopped, os.strerror(stopped), str(tmp)) from e
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "meta.json").write_text(json.dumps({"fingerprint": self._fingerprint(), "step": self.step,
                                                       "processes": acc.num_processes,
                                                       "settings": self._settings()}, default=str))
            remove_whole(final)
            tmp.replace(final)
            for old in sorted(root.glob("step-*"))[:-max(1, self.cfg.keep_checkpoints)]:
                remove_whole(old)
            write_curves(self.history, self.dir / "loss.csv")
        acc.wait_for_everyone()

    def _discard_of_other_keys(self) -> None:
        """--resume where the newest checkpoint that reads was trained with other distill keys alone (a
        `--set passes.N.distill.lr=...` or steps, which the learning-rate schedule spans): its checkpoints
        are set aside (in DISCARDED beside them, `set_aside`: a key changed by mistake loses no training),
        said in one line, and the pass trains from its start, as --resume trains a pass after a changed one.
        Where a set aside was trained with these settings (the rerun going back to them), it is taken back
        (`_takes_back`): the pass resumes from it. Other differences are _load_latest's refusal, a damaged
        checkpoint its warning."""
        root = self.dir / "checkpoints"
        aside = root.with_name(DISCARDED)
        if self.acc.is_main_process:  # (what an interrupted setting aside left: filed before any is read)
            finish_swap(root, aside)
        self.acc.wait_for_everyone()
        meta, path = newest_meta(root)
        if meta is None:
            if not any(root.glob("step-*")):  # (none written since they were set aside)
                self._takes_back(root, aside, None)
            return
        if meta["fingerprint"] == self._fingerprint(meta):
            return
        keys = {k for k in asdict(self.cfg) if k not in NOT_FINGERPRINTED}
        now = self._settings()
        if not of_other_keys(meta.get("settings"), now, keys):
            return
        if self._takes_back(root, aside, setting_changes(meta, now)):
            return
        if self.acc.is_main_process:
            from compress.report import console

            console.print(f"distill: checkpoint {path} was trained with other settings ({setting_changes(meta, now)}): "
                          f"--resume moves {root} to {aside_as(root, aside)} and trains this pass from its start; "
                          "a --resume with the keys it was trained with takes it back (it is kept past this pass, "
                          "until a later one with other settings ends)", highlight=False, markup=False)
        self.acc.wait_for_everyone()  # (every process has read its meta.json)
        if self.acc.is_main_process:
            set_aside(root, aside)
        self.acc.wait_for_everyone()

    def _takes_back(self, root: Path, aside: Path, changes: str | None) -> bool:
        """Whether a set in `aside` was trained with these settings (its newest checkpoint that reads: the
        fingerprint, incoming student included): then `root`'s are set aside (`changes`: how they differ, in
        words; None: `root` holds none) and that set goes to `root`, said in one line, and the pass resumes from
        it. Stopped between the two renames, `root` is gone and both are in `aside`: the next --resume takes
        it back so."""
        for back in sets_aside(aside):
            meta, _ = newest_meta(back)
            if meta is not None and meta["fingerprint"] == self._fingerprint(meta):
                break
        else:
            return False
        if self.acc.is_main_process:
            from compress.report import console

            rest = ("" if changes is None else
                    f", and sets {root}, trained with other settings ({changes}), aside ({aside_as(root, aside)})")
            console.print(f"distill: --resume takes back {back}, trained with these settings (step {meta['step']})"
                          f"{rest}", highlight=False, markup=False)
        self.acc.wait_for_everyone()  # (every process has read its meta.json)
        if self.acc.is_main_process:
            if changes is not None:
                set_aside(root, aside, spare=back)
            remove_whole(root)  # (one without a checkpoint: a tmp-step-N a kill left)
            back.replace(root)
            (root / KEPT_PAST).unlink(missing_ok=True)  # (the pass's own again: set aside anew if need be)
        self.acc.wait_for_everyone()
        return True

    def _load_latest(self) -> None:
        """Load the newest checkpoint that reads whole; a damaged one (cut short by a full disk, a kill
        mid-write, a deleted file) is named in a warning and the one before it is used. Every process
        tries the same checkpoint and they go back together where any of them failed to read it."""
        done = sorted((self.dir / "checkpoints").glob("step-*"), reverse=True)
        damaged: list[tuple[Path, str]] = []
        for path in done:
            why = None
            try:
                meta = json_read.read(path / "meta.json")
                if not isinstance(meta, dict) or "fingerprint" not in meta:
                    raise ValueError("meta.json records no fingerprint")
            except (OSError, ValueError) as e:
                why, meta = _why(e), None
            if meta is not None and meta["fingerprint"] != self._fingerprint(meta):
                raise UserError(f"distill: checkpoint {path} was trained with other settings "
                                f"({setting_changes(meta, self._settings())}); {self._from_its_start(meta)}")
            if why is None:
                try:
                    self.acc.load_state(str(path))
                    state = torch.load(path / f"train_state_{self.acc.process_index}.pt", weights_only=False)
                    step, history, before, generator = (state["step"], state["history"], state["before"],
                                                        state["generator"])
                except torch.cuda.OutOfMemoryError:
                    raise
                except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, SafetensorError,
                        pickle.UnpicklingError) as e:
                    why = _why(e)
            why = self._anyone_failed(why)
            if why is not None:
                damaged.append((path, why))
                continue
            self.step, self.history, self.before = step, history, before
            self.seconds_before, self.resumed = float(state.get("seconds", 0.0)), int(state.get("resumed", 0)) + 1
            self.generator.set_state(generator)
            if self.acc.is_main_process:  # else the log's first line (step 15/30) is all that says so
                from compress.report import console, warn

                for bad, bad_why in damaged:
                    warn(f"distill: checkpoint {bad} is damaged ({bad_why}): continuing from {path}, the newest "
                         "that reads whole")
                console.print(f"distill: continuing from its checkpoint at step {self.step}/{self.cfg.steps} "
                              f"({path})", highlight=False, markup=False)
            return
        if damaged:
            bad, why = damaged[0]
            n = len(damaged) - 1
            older = {0: "and no older one is kept", 1: "as is the older one"}.get(n, f"as are the {n} older ones")
            raise UserError(f"distill: checkpoint {bad} is damaged ({why}), {older}; {self._from_its_start()}")

    def _from_its_start(self, meta: dict | None = None) -> str:
        """distill_resume.from_its_start of this pass; its teacher samples said kept unless a checkpoint's
        `meta` records them of another seed or calibration than now (their cache's key) or records none."""
        then, now = (meta or {}).get("settings"), json.loads(json.dumps(self._settings(), default=str))
        samples = meta is None or (isinstance(then, dict) and all(then.get(k) == now.get(k)
                                                                   for k in ("seed", "calibration")))
        return from_its_start(self.dir / "checkpoints", self.cfg, self.index, samples)

    def _anyone_failed(self, why: str | None) -> str | None:
        """`why` on one process, the same answer on all: the first failing rank's reason (with its
        rank where there are several), or None where every process read the checkpoint."""
        if self.acc.num_processes == 1:
            return why
        import torch.distributed as dist

        every: list = [None] * self.acc.num_processes
        dist.all_gather_object(every, why)
        rank, first = next(((r, w) for r, w in enumerate(every) if w is not None), (None, None))
        return None if first is None else f"process {rank}: {first}"


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
    False: runner_stages._cleared, which finishes a removal `stage_saved` began, gives them its rule), or
    what a swap an older dit-compress stopped left (ROOT.swapping*); the folders removed, returned. A Ctrl-C
    (SIGTERM) is held until all are gone (a half-removed step-N left a checkpoint no resume could read); a
    kill leaves the rest to the next --resume that keeps the pass's stage (runner_stages._cleared), none of
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
    and runner_stages._cleared, which finishes what a stop left of it): those a stage saved earlier with
    another fingerprint kept (KEPT_PAST) removed, the others marked with `fingerprint` and returned (kept)."""
    kept = []
    for old in sets_aside(aside):
        by = kept_past(old)
        if by is not None and by != fingerprint:
            remove_whole(old)
            continue
        if by is None:
            (old / KEPT_PAST).write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
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


def _why(e: BaseException) -> str:
    """An exception in a few words, on one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()  # (torch adds sentences of advice: the first says what)
    return f"{type(e).__name__}: {text[0].split('. ')[0].removesuffix('.')}" if text else type(e).__name__
