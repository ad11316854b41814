"""The training loop of the `distill` pass (`compress.passes.distill`): setup on `accelerate`, the
steps, checkpoints and their resume (`compress.passes.distill_checkpoints`), the teacher-relative
evaluation and the report record, and `TrainingInterrupted`, raised when a run stops on request after
writing a checkpoint."""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from compress.distill_data import make_source
from compress.distill_utils import (BlockOutputs, OutputCapture, StopSignals, accelerator_for, agreed_stop,
                                    feature_loss, output_loss, resolve_block_map, select_trainable, stop_slots,
                                    stop_words, stops_taken, warmup_cosine, write_curves)
from compress.dtype_range import overflow_hint
from compress.errors import NumericError, UserError
from compress.inputs import moved
from compress.io import cast
from compress.io_tensors import nonfinite
from compress.passes.base import RunContext
from compress.passes.distill_checkpoint_folders import finish_swap, remove_whole
from compress.passes.distill_checkpoints import Checkpoints
from compress.passes.distill_progress import TERMS, fmt_terms, weights_of
from compress.passes.distill_resume import DISCARDED, checksum, lower_lr, resume_keeps, trains_again
from compress.passes.distill_scaler import scaler_record, step_skipped
from compress.progress import WORDS, bar as progress_bar
from compress.runner_resume_step import distill_folder
from compress.runner_setup import locate

if TYPE_CHECKING:
    from compress.passes.distill import DistillConfig
    from compress.passes.distill_kd_teacher import KdTarget


class TrainingInterrupted(UserError):
    """Stopped on request (signal or max_steps_this_run) after writing a checkpoint; resume to go on."""

    exit_code = 130  # as a Ctrl-C; a signal's stop: 128 + its number (`signum`)
    label = ""  # a requested stop, not an error

    def __init__(self, message: str, signum: int | None = None):  # SIGTERM 143, SIGHUP 129, as a shell says
        super().__init__(message)
        self.exit_code = self.exit_code if signum is None else 128 + int(signum)


class StepLimitReached(TrainingInterrupted):
    """Stopped by `max_steps_this_run` after its checkpoint: the run went as far as the recipe asked
    for this invocation. Exit status 75 (EX_TEMPFAIL, 'try again later'), not 130, so a job script
    tells a planned stop (rerun with --resume) from an interruption."""

    exit_code = 75


class _Trainer(Checkpoints):
    def __init__(self, cfg: DistillConfig, ctx: RunContext, kd: KdTarget | None = None, index: int | None = None):
        self.cfg, self.ctx, self.adapter = cfg, ctx, ctx.adapter
        self.index = index  # the pass's place in the recipe's passes (None: unknown): its words' keys
        self.kd = kd  # kd_teacher: base: the chain's base distilled toward, in place of ctx.teacher
        # the frozen model the student is distilled toward and measured against, and its block map
        self.target, self.target_map = (kd.teacher, kd.block_map) if kd else (ctx.teacher, ctx.block_map)
        self.earlier = _earlier(ctx.report)  # records of the distill passes before this one
        self.dir = Path(ctx.run_dir) / distill_folder(len(self.earlier) + 1)
        self.acc = accelerator_for(cfg, torch.device(ctx.device))
        self.step, self.history, self.before, self.resumed = 0, [], None, 0  # resumed: from checkpoints, how often
        self.seconds_before = 0.0  # training time of earlier invocations (from the checkpoint resumed; 0 if older)
        self.t0 = time.perf_counter()

    # ---- setup --------------------------------------------------------------------------------
    def fit(self, model):
        cfg, acc = self.cfg, self.acc
        self.block_map = resolve_block_map(self.adapter, model, self.target, self.target_map)
        self.incoming = checksum(model)  # checkpoints resume only the training of this student
        if not self.ctx.resume:  # a fresh run: checkpoints left by an earlier run are not its own
            if self.acc.is_main_process:  # (those set aside kept: what an interrupted swap left filed there)
                finish_swap(self.dir / "checkpoints", self.dir / DISCARDED)
            remove_whole(self.dir / "checkpoints")
        else:  # those of other distill keys: trained again from the start
            self._discard_of_other_keys()
        first = next(model.parameters())
        home, dtype = first.device, first.dtype
        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        teacher_home = next(self.target.parameters()).device
        self.teacher = self.target.to(acc.device).eval().requires_grad_(False)
        student = model.to(acc.device)
        # the student as it comes, in its dtype (as the runner's stage errors measure it), unless a
        # checkpoint it resumes recorded this error already
        incoming = None if self._resumes() else self._eval_error(student)
        student = _cast(student, torch.float32)  # fp32 master weights
        params = select_trainable(student, cfg.train)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        self.source = make_source(cfg, self.ctx, acc)
        # the teacher's own objective (toy sources), else the adapter's at the noise levels the
        # teacher's sampler visits (Flux: σ shifted as FluxPipeline shifts it at the data's resolution)
        self.task_loss = self.ctx.task_loss or partial(self.adapter.task_loss, sampler=self.ctx.scheduler_config())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = partial(warmup_cosine, total=cfg.steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.generator = torch.Generator().manual_seed(self.ctx.seed + acc.process_index)
        self.student, self.optimizer, self.scheduler = acc.prepare(student, optimizer, scheduler)
        self.params = params
        if self.ctx.resume:
            self._load_latest()
        if self.before is None:
            self.before = incoming
        student.train()
        self.t0 = t0 = time.perf_counter()
        try:
            self._loop()
        finally:
            student.eval()
            self.target.to(teacher_home)  # later passes and the runner expect it where it was
        seconds = time.perf_counter() - t0
        if cfg.gradient_checkpointing:
            student.disable_gradient_checkpointing()
        model = acc.unwrap_model(self.student)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))
        model = _cast(model, dtype)
        self._finish(model, seconds)
        del self.student, self.optimizer, self.scheduler  # (no acc.free_memory(): its gc.collect is slow)
        return model.to(home)

    # ---- loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.cfg
        inner = self.acc.unwrap_model(self.student)
        pred = OutputCapture(inner)
        feats = (BlockOutputs(inner, self.adapter, detach=False), BlockOutputs(self.teacher, self.adapter,
                 detach=True)) if cfg.lambda_feat > 0 else None
        ran, saved = 0, False  # saved: a checkpoint of this run's
        shown = cfg.progress and self.acc.is_main_process
        try:
            with StopSignals() as stop, progress_bar(shown, transient=False) as bar:
                task = bar.add_task("distill", total=cfg.steps, completed=self.step)
                while self.step < cfg.steps:
                    row = self._train_step(pred, feats, stop)
                    taken = row.pop("stop")  # {rank: signal} of the processes that took one
                    # the signal this process stops on, as the all-reduce saw it (one after it: the next step's)
                    stop_now = agreed_stop(taken.get(self.acc.process_index), taken)
                    self.step += 1
                    ran += 1
                    self.history.append(row)
                    bar.update(task, completed=self.step, **{WORDS: fmt_terms(row, weights_of(cfg))})
                    last = self.step == cfg.steps
                    if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or last):
                        self._save()
                        saved = True
                    limit = cfg.max_steps_this_run is not None and ran >= cfg.max_steps_this_run
                    if not last and (stop_now or limit):
                        # a stop before this run's first checkpoint keeps the finished run it would discard
                        kept = self.ctx.finished_note() if stop_now and not saved else ""
                        if not kept and not (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                            self._save()
                        why = (stop_words(taken, self.acc.num_processes) if stop_now
                               else f"max_steps_this_run={cfg.max_steps_this_run}")
                        raise (TrainingInterrupted if stop_now else StepLimitReached)(
                            f"distill: stopped at step {self.step}/{cfg.steps} on {why}, before its first "
                            f"checkpoint{kept}" if kept else f"distill: stopped at step {self.step}/{cfg.steps} "
                            f"on {why}; checkpoint in {self.dir / 'checkpoints'}; run again with --resume to continue",
                            stop_now)
        finally:
            pred.remove()
            for f in feats or ():
                f.remove()

    def _train_step(self, pred: OutputCapture, feats, stop: StopSignals) -> dict:
        cfg, acc, adapter = self.cfg, self.acc, self.adapter
        latents, cond = self.source.batch(cfg.batch_size, self.generator)
        # the float32 master weights' inputs (data and calibration may be in the compute dtype)
        latents, cond = moved(latents, acc.device, torch.float32), moved(cond, acc.device, torch.float32)
        zero = torch.zeros((), device=acc.device)
        with acc.autocast():
            task, kwargs = self.task_loss(self.student, latents, cond, self.generator)
            student_pred = adapter.sampled_prediction(self.teacher, pred.pop())  # as adapter.predict
            out = feat = zero
            teacher_pred = None
            if cfg.lambda_out > 0 or cfg.lambda_feat > 0:
                with torch.no_grad():
                    teacher_pred = adapter.predict(self.teacher, _inputs_for(self.teacher, kwargs))
                if cfg.lambda_out > 0:
                    out = output_loss(student_pred, teacher_pred)
            if feats is not None:
                feat = feature_loss(feats[0].outputs, feats[1].outputs, self.block_map, cfg.mask_massive)
        # (the task term stays at lambda_task 0: it reaches every parameter, as DDP's settings assume)
        loss = cfg.lambda_task * task + cfg.lambda_out * out + cfg.lambda_feat * feat
        if not torch.isfinite(loss):
            teacher = teacher_trouble(teacher_pred, feats[1].outputs if feats else {})
            dtype = torch.float16 if acc.mixed_precision == "fp16" else next(self.teacher.parameters()).dtype
            raise _numeric(self.step, task, out, feat, teacher, dtype) if teacher else self._diverged(
                f"non-finite loss at step {self.step + 1} ({_terms(task, out, feat)})", self._student_trouble(kwargs))
        for f in feats or ():
            f.clear()
        acc.backward(loss)
        finite = self._finite_gradients()  # before clipping: a NaN norm's clip multiplies NaN into every gradient
        grad_norm = acc.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # before the step: AdamW would write the NaN into every weight, and the next checkpoint keep it
        # (fp16 mixed precision's grad scaler skips such a step and lowers its scale: not refused, counted:
        # distill_scaler, warned of where it skipped most of them)
        if getattr(acc, "scaler", None) is None and not math.isfinite(float(grad_norm)):
            raise self._diverged(f"non-finite gradient at step {self.step + 1} (loss {loss.item():.4g}, "
                                 f"grad norm {float(grad_norm)})", self._gradient_trouble(finite))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        skipped = step_skipped(acc, self.optimizer, float(grad_norm))  # fp16's grad scaler found Inf/NaN: no update
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # one all-reduce for logging and for agreeing on a stop (any process signalled -> all stop, on its signal)
        slots = stop_slots(stop.requested, acc.process_index, acc.num_processes)  # which rank took which signal
        stats = torch.cat([torch.stack([loss.detach(), task.detach(), out.detach(), feat.detach(),
                                        torch.as_tensor(grad_norm, device=acc.device).float()]).float(),
                           torch.tensor(slots, device=acc.device)])  # (5 + processes,)
        stats = acc.reduce(stats, "sum") if acc.num_processes > 1 else stats
        values = (stats[:5] / acc.num_processes).tolist()
        row = {"step": self.step + 1, **dict(zip(TERMS, values[:4])), "lr": lr, "grad_norm": values[4]}
        row["stop"] = stops_taken(stats[5:].tolist())  # {rank: signal}, {} where none took one
        if getattr(acc, "scaler", None) is not None:
            row["skipped"] = skipped  # (history only: loss.csv keeps its columns)
        return row

    # ---- evaluation and report ----------------------------------------------------------------
    @torch.no_grad()
    def _eval_error(self, student) -> float | None:
        """Teacher-relative error ||s − t|| / ||t|| of the final prediction on ctx.eval_inputs (main only),
        of `student` in its own dtype: the student the pass took or returns, not the float32 master
        weights it trains (in bfloat16 those differ by more than training moves them on a short run)."""
        if self.ctx.eval_inputs is None or not self.acc.is_main_process:
            return None
        was_training = student.training
        student.eval()
        num = den = 0.0
        for kwargs in self.ctx.eval_inputs():
            s = self.adapter.predict(student, _inputs_for(student, kwargs)).double()
            t = self.adapter.predict(self.teacher, _inputs_for(self.teacher, kwargs)).double()
            num, den = num + (s - t).square().sum().item(), den + t.square().sum().item()
        student.train(was_training)
        return (num / den) ** 0.5 if den else None

    def _resumes(self) -> bool:
        """Whether this run resumes from a checkpoint of this pass (one is there to read)."""
        return bool(self.ctx.resume) and any((self.dir / "checkpoints").glob("step-*"))

    def _finish(self, model, seconds: float) -> None:
        after = self._eval_error(model)
        if after is not None and not math.isfinite(after):  # refused before the runner saves its stage
            raise self._diverged(*self._heldout_trouble(model))
        record = {"steps": self.cfg.steps, "steps_done": self.step, "resumed": self.resumed,
                  "processes": self.acc.num_processes, "train": self.cfg.train, "data": self.cfg.data,
                  "block_map": self.block_map,
                  "objective": "context" if self.ctx.task_loss else f"{self.adapter.family} adapter",
                  "seconds_this_run": round(seconds, 2),  # this invocation's training; "seconds": all of it
                  "seconds": round(self.seconds_before + seconds, 2), "mixed_precision": self.acc.mixed_precision,
                  "pred_rel_error_before": self.before, "pred_rel_error_after": after,
                  **scaler_record(self.acc, self.history)}  # fp16: the steps its grad scaler skipped
        if self.history:
            record["first"] = {k: self.history[0][k] for k in TERMS}
            record["last"] = {k: self.history[-1][k] for k in TERMS}
            record["weights"] = weights_of(self.cfg)  # {term: its lambda}: what inspect's last-step words show
        if self.acc.is_main_process:
            csv_path, png_path = self.dir.absolute() / "loss.csv", self.dir.absolute() / "loss.png"
            write_curves(self.history, csv_path, png_path if self.cfg.plot else None)
            record["files"] = {"loss_csv": str(csv_path)}
            if self.cfg.plot:
                record["files"]["loss_png"] = str(png_path)
        if self.kd is not None:  # the errors above, the KD terms: against the chain's base
            record["kd_teacher"] = {"source": self.kd.source, "chain": self.kd.chain}
        if self.earlier:
            record["earlier"] = self.earlier
        self.ctx.report["distill"] = record


    # ---- divergence -------------------------------------------------------------------------
    def _save(self) -> None:
        """A checkpoint, never of weights that are not finite (--resume would go on from them)."""
        if (bad := _nonfinite_weight(self.acc.unwrap_model(self.student))) is not None:
            raise self._diverged(f"the student's weight {bad} holds NaN/Inf after step {self.step}", "")
        super()._save()

    def _diverged(self, what: str, culprit: str) -> NumericError:
        """The one line of a student that diverged: `what` (at which step), `culprit` (': the first of its
        weights or layers to hold NaN/Inf', or ''), what to change, and what --resume then does: a
        checkpoint resumes only at the lr it was trained with, so at another it is set aside (moved into
        DISCARDED, Checkpoints._discard_of_other_keys)."""
        cfg, root = self.cfg, self.dir / "checkpoints"
        kept = resume_keeps(cfg, self.index)
        change = f"distill: {what}{culprit}; {lower_lr(cfg, self.index)}"
        if not any(root.glob("step-*")):
            return NumericError(f"{change}{f' (it keeps {kept})' if kept else ''}; no checkpoint was written")
        # (its checkpoints' weights are finite, _save; at this lr a resumed run takes the same steps again)
        return NumericError(f"{change} ({trains_again(cfg, self.index)}: it moves {root}, trained at these "
                            f"settings, into {root.with_name(DISCARDED)})")

    def _student_trouble(self, kwargs: dict) -> str:
        """': the first weight, else layer output, of the student to hold NaN/Inf' on the step's inputs."""
        inner = self.acc.unwrap_model(self.student)
        if (name := _nonfinite_weight(inner)) is not None:
            return f": the student's weight {name} holds NaN/Inf"
        return _layer_words(locate(inner, self.adapter, _inputs_for(inner, kwargs), held="NaN/Inf"))

    def _finite_gradients(self) -> list[tuple[str, torch.Tensor]]:
        """(name, whether its gradient is finite: a 0-d bool tensor, read only where the step is refused)
        of each trained weight with a gradient, as backward left them. Clipping at a NaN total norm multiplies
        every gradient by NaN (torch's clip_grad_norm_ at any distill.grad_clip; at grad_clip 0 too on
        accelerate 0.x, which clips at inf where 1.x only measures): read after it, every gradient would be
        named, the first often a finite one. One isfinite pass over the gradients, no sync."""
        if getattr(self.acc, "scaler", None) is not None:
            return []  # (fp16's scaler skips such steps: never read)
        return [(name, torch.isfinite(p.grad.detach()).all())
                for name, p in self.acc.unwrap_model(self.student).named_parameters() if p.grad is not None]

    @staticmethod
    def _gradient_trouble(finite: list[tuple[str, torch.Tensor]]) -> str:
        """': how many trained weights' gradients hold NaN/Inf, the first by name', or ''."""
        bad = [name for name, ok in finite if not bool(ok)]
        return f": the gradients of {len(bad)} of its {len(finite)} trained weights hold NaN/Inf, the first {bad[0]}" \
            if bad else ""

    @torch.no_grad()
    def _heldout_trouble(self, model) -> tuple[str, str]:
        """(what, culprit) of a trained student whose held-out prediction is not finite: the first
        held-out batch that shows it and the student's first layer whose output holds NaN/Inf there."""
        batches = list(self.ctx.eval_inputs())
        for b, kwargs in enumerate(batches, 1):
            found = locate(model, self.adapter, _inputs_for(model, kwargs))
            if found is not None:
                return (f"the student's prediction after step {self.step} holds NaN/Inf on held-out batch {b} "
                        f"of {len(batches)}", _layer_words(found))
        return f"the student's teacher-relative error after step {self.step} is not finite", ""


def _nonfinite_weight(model) -> str | None:
    """The name of the model's first parameter that holds NaN/Inf, or None."""
    return next((name for name, p in model.named_parameters() if nonfinite(p.detach())), None)


def _layer_words(found: str | None) -> str:
    """runner_setup.locate's words after a colon, '' for None."""
    return f": {found}" if found else ""


def _earlier(report: dict) -> list[dict]:
    """The records of the recipe's earlier distill passes (the latest is report["distill"], with
    those before it under "earlier"): each pass keeps its own folder, curves and record."""
    last = report.get("distill")
    if last is None:
        return []
    return [*last.get("earlier", []), {k: v for k, v in last.items() if k != "earlier"}]


def teacher_trouble(pred: torch.Tensor | None, feats: dict) -> str | None:
    """What of the teacher's is not finite, the earliest first (a block's output, in the order the
    forward ran them, then the prediction), or None."""
    for (group, index), outputs in feats.items():
        if any(not bool(torch.isfinite(t).all()) for t in outputs):
            return f"the teacher's output of block {index} of '{group}'"
    if pred is not None and not bool(torch.isfinite(pred).all()):
        return "the teacher's prediction"
    return None


def _numeric(step, task, out, feat, teacher: str, dtype: torch.dtype):
    """A non-finite loss that the teacher's non-finite prediction or block output (`teacher`), computed
    in `dtype`, caused."""
    return NumericError(f"distill: non-finite loss at step {step + 1} ({_terms(task, out, feat)}); {teacher} "
                        f"is not finite ({overflow_hint(dtype)})")


def _terms(task, out, feat) -> str:
    return f"task {task.item():.4g}, out {out.item():.4g}, feat {feat.item():.4g}"


def _cast(model, dtype):
    """model.to(dtype) only when needed."""
    return model if next(model.parameters()).dtype == dtype else cast(model, dtype)


def _inputs_for(model: torch.nn.Module, kwargs: dict) -> dict:
    """kwargs on the model's device, floating tensors in its dtype (the teacher may compute in
    bf16 while the student trains float32 master weights)."""
    first = next(model.parameters())
    return moved(kwargs, first.device, first.dtype)
