"""`distill`: knowledge-distillation recovery fine-tuning of the compressed student against the frozen teacher.

    L = λ_task · task loss + λ_out · MSE(student pred, teacher pred) + λ_feat · Σ_blocks nMSE(block outputs)

(thesis eq. 2.90; losses in `compress.distill_utils`, data in `compress.distill_data`, the training loop in
`compress.passes.distill_trainer`). Both models see the same noisy input, timestep and prompt: the kwargs
`adapter.task_loss` returns. Student blocks are compared with the teacher blocks `ctx.block_map` maps them to
(identity without removed blocks).

Runs on `accelerate`: plain `dit-compress run` trains in one process; under
`accelerate launch --num_processes N -m compress.cli run RECIPE` it is data-parallel (each process draws its
own batches, generator seeded with seed + process_index; gradients are averaged, so every process holds the
same weights). For a student that does not fit one device, pick FSDP in `accelerate config`
(`distributed_type: FSDP`, e.g. `fsdp_sharding_strategy: FULL_SHARD`, `fsdp_auto_wrap_policy:
TRANSFORMER_BASED_WRAP` with the block class, `fsdp_state_dict_type: SHARDED_STATE_DICT`); the loop is the
same: `accelerator.prepare`, `backward`, `clip_grad_norm_` and `save_state` handle the sharding.

Checkpoints (`checkpoint_every`) go to run_dir/distill/checkpoints/step-XXXXXXXX (a recipe's second distill
pass: run_dir/distill-2/..., its record in the report with the first's under "earlier"): accelerate's save_state
(model, optimizer, scheduler, RNG states) plus each process's generator, step and loss history. With
`ctx.resume` the last checkpoint is loaded and the run ends with the same weights as an uninterrupted one.
SIGINT/SIGTERM/SIGHUP (or `max_steps_this_run`) write a checkpoint and raise `TrainingInterrupted` (exit status
128 + the signal's number; 75).
"""

from __future__ import annotations

from compress.distill_folder import check_folder
from compress.distill_utils import warmup_length, will_have_factors
from compress.errors import BadValue, UserError
from compress.passes.base import Pass, RunContext
from compress.passes.distill_config import DistillConfig
from compress.passes.distill_kd_teacher import base_chain, kd_target, kd_words
from compress.passes.distill_notes import distills_the_teacher, error_rose
from compress.passes.distill_checkpoint_folders import stage_saved
from compress.passes.distill_resume import NOT_FINGERPRINTED
from compress.passes.distill_scaler import skipped_words
from compress.passes.distill_trainer import _Trainer


class DistillPass(Pass):
    name = "distill"
    config_cls = DistillConfig
    needs_teacher = True
    data_parallel = True
    result_free = NOT_FINGERPRINTED
    index: int | None = None  # its place in the recipe's passes (build_passes); None: made alone (its keys: distill.KEY)

    def check(self, model, adapter) -> None:
        """The keys against `model`, the recipe's teacher as the passes before leave it (a meta copy: its
        compression record kept, whose chain kd_teacher: base follows)."""
        self._check_student(model, adapter)
        if self.config.kd_teacher == "base" and not self.resumed_past:  # done (--resume): no base needed
            base_chain(model)

    def _check_student(self, model, adapter) -> None:
        cfg = self.config
        cfg.validate()
        if cfg.data == "folder":
            try:
                check_folder(cfg.latents_dir, model, adapter)
            except UserError as e:  # at the latents_dir line of the recipe
                raise BadValue("latents_dir", str(e), reads=()) from None
        if cfg.train == "factors" and not will_have_factors(model):
            raise BadValue("train", "distill.train: factors, but no svd pass before it factorizes a layer "
                                    "and the teacher has no low-rank layers; add an svd pass first, or use "
                                    "train: all", reads=())  # the passes before it, not this pass's other keys

    def notes(self, model, adapter) -> list[tuple[str, str]]:
        """A distill before any pass that changes the student (`distills_the_teacher`); a warm-up as
        long as the run (steps shortened for a quick try, the default warmup_steps kept) would end
        before the learning rate reached lr or decayed: `warmup_length` shortens it, and the note says to what."""
        cfg = self.config
        first = distills_the_teacher(cfg, model)  # before any pass that changes the student
        if cfg.warmup_steps < cfg.steps:
            return first
        return first + [("warmup_steps", f"distill.warmup_steps ({cfg.warmup_steps}) is not below steps "
                                         f"({cfg.steps}): the learning rate would never reach lr nor decay; "
                                         f"{_shortened(cfg.steps, cfg.warmup_steps)}; set warmup_steps below steps "
                                         "to choose it",
                         ("steps",))]  # the keys it read besides warmup_steps: a --set of lr is not named

    def plan(self, model, adapter, calibration_rows: int | None = None) -> dict:
        cfg = self.config
        kd = {"kd_teacher": kd_words(model)} if cfg.kd_teacher == "base" else {}
        return {"steps": cfg.steps, "batch_size_per_process": cfg.batch_size, "train": cfg.train,
                "data": cfg.data, "lambdas": [cfg.lambda_task, cfg.lambda_out, cfg.lambda_feat], **kd}

    def reads_calibration_inputs(self) -> bool:
        """data: teacher_samples samples the teacher on the calibration inputs (distill_data.teacher_sample_cache)."""
        return self.config.data == "teacher_samples"

    def run(self, model, ctx: RunContext):
        self._check_student(model, ctx.adapter)  # the student: kd_teacher reads the recipe's teacher
        kd = (kd_target(ctx.teacher, ctx.block_map, model, self.config.data == "teacher_samples")
              if self.config.kd_teacher == "base" else None)
        trainer = _Trainer(self.config, ctx, kd, self.index)
        self.dir = trainer.dir
        model = trainer.fit(model)
        self.fingerprint = trainer._fingerprint()  # (of the training done: what its saved stage keeps sets by)
        record = ctx.report["distill"]
        after = record.get("pred_rel_error_after")  # (None on the other processes of a launch)
        self.base_error = None if kd is None or after is None else {"source": kd.source, "relative_error": after}
        self.rose = error_rose(self.config, record)  # the held-out error ended above where it started
        if self.rose is not None:
            record["error_rose"] = self.rose
        self.skipped = skipped_words(record)  # fp16's grad scaler skipped most steps
        return model

    def against_base(self) -> dict | None:
        """kd_teacher: base: the chain's base and the held-out error after training against it (its record's)."""
        return getattr(self, "base_error", None)

    def ran_notes(self) -> list[tuple[str, tuple[str, ...]]]:
        """The warning of a run whose fp16 grad scaler skipped most of its steps (distill_scaler.skipped_words),
        and of one that left the student further from the teacher (distill_notes.error_rose), with the keys
        it names as likely causes."""
        rose, skipped = getattr(self, "rose", None), getattr(self, "skipped", None)
        return ([(skipped, ("mixed_precision",))] if skipped else []) + \
            ([(rose["warning"], tuple(rose["reads"]))] if rose else [])

    def stage_saved(self) -> None:
        """The runner's stage now holds the trained student: the training checkpoints (model and
        optimizer state, several times the model) are no longer needed to resume, nor what a swap an older
        dit-compress stopped left. Those --resume set aside (DISCARDED) are kept past this first stage saved
        since (said in a line, with their size): a --resume that undoes the change that set them aside passes
        over this stage and takes them back; the pass's next stage saved with other settings removes them
        (distill_checkpoint_folders.stage_saved)."""
        if getattr(self, "dir", None) is None:
            return
        kept = stage_saved(self.dir, self.fingerprint)
        if kept:
            from compress.calib_footprint import human_size
            from compress.report import console

            size = sum(f.stat().st_size for s in kept for f in s.rglob("*") if f.is_file())
            console.print(f"distill: keeps the checkpoints set aside ({', '.join(map(str, kept))}; {human_size(size)}) "
                          "past this saved stage: a --resume that undoes the change that set them aside takes them "
                          "back; this pass's next stage saved with other settings removes them, as does a run that "
                          "starts over", highlight=False, markup=False)


def _shortened(steps: int, warmup: int) -> str:
    """What `warmup_length` makes of a warm-up not below steps, in words: a tenth of steps, or none."""
    n = warmup_length(steps, warmup)
    if n == 0:
        return f"the run has no warm-up instead (a tenth of {steps} step{'s' if steps > 1 else ''} rounds to 0)"
    return f"the warm-up is {n} step{'s' if n > 1 else ''} (a tenth of steps) instead"
