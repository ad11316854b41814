"""The checkpoints of the `distill` pass's training loop (`Checkpoints`, which
`compress.passes.distill_trainer._Trainer` builds on): what the training depends on and its fingerprint,
writing a checkpoint (whole or not at all; a full disk said as ENOSPC, a file-size limit as EFBIG), and loading the newest one that
reads whole where a run resumes (whether its settings allow that: `compress.passes.distill_resume`). Their
folders set aside, taken back and removed: `compress.passes.distill_checkpoint_folders`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
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
from compress.passes.distill_checkpoint_folders import aside_as, finish_swap, remove_whole, set_aside, sets_aside
from compress.passes.distill_resume import (DISCARDED, KEPT_PAST, NOT_FINGERPRINTED, ONCE_FINGERPRINTED,
                                            calibration_settings, from_its_start, newest_meta, of_other_keys,
                                            older_defaults, setting_changes)


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
                                                       "settings": self._settings()}, default=str), encoding="utf-8")
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
                    # onto the cpu, where it was made (the cpu generator's state, whose set_state takes a cpu
                    # ByteTensor; numbers), whatever device wrote it: a GPU run's file resumed without one
                    state = torch.load(path / f"train_state_{self.acc.process_index}.pt", map_location="cpu",
                                       weights_only=False)
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


def _why(e: BaseException) -> str:
    """An exception in a few words, on one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()  # (torch adds sentences of advice: the first says what)
    return f"{type(e).__name__}: {text[0].split('. ')[0].removesuffix('.')}" if text else type(e).__name__
