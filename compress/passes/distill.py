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

import shutil
from dataclasses import dataclass

from compress.distill_data import DATA_SOURCES
from compress.distill_folder import check_folder
from compress.distill_utils import TRAIN_MODES, warmup_length, will_have_factors
from compress.errors import BadValue, UserError, not_one_of
from compress.passes.base import Pass, RunContext
from compress.passes.distill_kd_teacher import KD_TEACHERS, base_chain, kd_target, kd_words
from compress.passes.distill_notes import distills_the_teacher, error_rose
from compress.passes.distill_resume import NOT_FINGERPRINTED
from compress.passes.distill_trainer import _Trainer


@dataclass
class DistillConfig:
    """Recipe keys of the `distill` pass."""

    steps: int = 500  # optimizer steps
    batch_size: int = 32  # per process
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20  # ≥ steps: a tenth of steps instead (a note says so)
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm (0: no clipping)
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 0.1  # multiplies the SUM over mapped blocks
    mask_massive: float | None = None  # k: leave teacher features beyond k std out of the feature loss
    train: str = "all"  # all | factors (LowRankLinear layers only) | non_factors
    data: str = "toy"  # toy | teacher_samples | folder
    latents_dir: str | None = None  # data: folder
    num_samples: int = 1024  # data: teacher_samples
    sample_steps: int = 20  # data: teacher_samples (sampler steps)
    guidance_scale: float = 1.0  # data: teacher_samples: classifier-free guidance of the sampler (1: none)
    gradient_checkpointing: bool = False
    mixed_precision: str = "bf16"  # no | bf16 | fp16; autocast on GPU only, CPU always runs fp32
    checkpoint_every: int = 100  # steps; 0: no periodic checkpoints
    keep_checkpoints: int = 2
    max_steps_this_run: int | None = None  # stop (checkpointed) after this many steps in this invocation
    progress: bool = True  # rich progress bar (main process)
    plot: bool = True  # loss.png beside loss.csv (matplotlib)
    kd_teacher: str = "teacher"  # teacher (the recipe's) | base (the first teacher of its chain of outputs)
    # the string keys' choices: refused at recipe load naming them (recipe_convert._choosing), and here
    CHOICES = {"mixed_precision": ("no", "bf16", "fp16"), "train": TRAIN_MODES, "data": DATA_SOURCES,
               "kd_teacher": KD_TEACHERS}

    def validate(self) -> None:
        """The keys' values alone, at recipe load (BadValue names the key); `check` calls it too."""
        for key, (ok, allowed) in _RANGES.items():
            value = getattr(self, key)
            if not (value is None and key in _NULLABLE) and not (_number(value) and ok(value)):
                raise BadValue(key, f"distill.{key} must be {allowed}, got {value!r}", reads=())
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise BadValue(key, not_one_of(f"distill.{key}", getattr(self, key), allowed), reads=())
        if self.lambda_task + self.lambda_out + self.lambda_feat == 0:
            raise BadValue("lambda_task", "distill.lambda_task, lambda_out and lambda_feat must not all be 0",
                           reads=("lambda_out", "lambda_feat"))
        self._validate_data()

    def _validate_data(self) -> None:
        if self.data == "folder" and not self.latents_dir:
            raise BadValue("data", "distill.data: folder needs latents_dir", reads=("latents_dir",))
        if self.data == "teacher_samples":
            for key in ("num_samples", "sample_steps"):
                if getattr(self, key) < 1:
                    raise BadValue(key, f"distill.{key} must be ≥ 1, got {getattr(self, key)}", reads=("data",))
        if self.guidance_scale < 1 or (self.guidance_scale != 1.0 and self.data != "teacher_samples"):
            raise BadValue("guidance_scale", f"distill.guidance_scale ({self.guidance_scale}) is the "
                                             "teacher sampler's: ≥ 1, and only with data: teacher_samples",
                           reads=("data",))
        # keys that would do nothing: refused, so a forgotten `data:` is not a run on other data
        if self.latents_dir is not None and self.data != "folder":
            raise BadValue("latents_dir", f"distill.latents_dir is read only with data: folder "
                                          f"(data is {self.data!r})", reads=("data",))
        for key in ("num_samples", "sample_steps"):
            if getattr(self, key) != self.__dataclass_fields__[key].default and self.data != "teacher_samples":
                raise BadValue(key, f"distill.{key} is used only with data: teacher_samples "
                                    f"(data is {self.data!r})", reads=("data",))
        if self.mask_massive and self.lambda_feat == 0:
            raise BadValue("mask_massive", "distill.mask_massive masks the feature loss, which "
                                           "lambda_feat: 0 leaves out", reads=("lambda_feat",))


_RANGES = {  # key -> (test, what it must be)
    "steps": (lambda v: v >= 1, "an integer ≥ 1"), "batch_size": (lambda v: v >= 1, "an integer ≥ 1"),
    "lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, "≥ 0"),
    "warmup_steps": (lambda v: v >= 0, "≥ 0"), "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "grad_clip": (lambda v: v >= 0, "≥ 0 (0: no clipping)"),
    "lambda_task": (lambda v: v >= 0, "≥ 0"), "lambda_out": (lambda v: v >= 0, "≥ 0"),
    "lambda_feat": (lambda v: v >= 0, "≥ 0"),
    "mask_massive": (lambda v: v >= 0, "≥ 0 (standard deviations; 0: off) or null"),
    "max_steps_this_run": (lambda v: v >= 1, "an integer ≥ 1 or null"),
    "checkpoint_every": (lambda v: v >= 0, "≥ 0 (0: no periodic checkpoints)"),
    "keep_checkpoints": (lambda v: v >= 1, "≥ 1"),
}
_NULLABLE = ("mask_massive", "max_steps_this_run")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class DistillPass(Pass):
    name = "distill"
    config_cls = DistillConfig
    needs_teacher = True
    data_parallel = True
    result_free = NOT_FINGERPRINTED

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
        trainer = _Trainer(self.config, ctx, kd)
        self.dir = trainer.dir
        model = trainer.fit(model)
        record = ctx.report["distill"]
        after = record.get("pred_rel_error_after")  # (None on the other processes of a launch)
        self.base_error = None if kd is None or after is None else {"source": kd.source, "relative_error": after}
        self.rose = error_rose(self.config, record)  # the held-out error ended above where it started
        if self.rose is not None:
            record["error_rose"] = self.rose
        return model

    def against_base(self) -> dict | None:
        """kd_teacher: base: the chain's base and the held-out error after training against it (its record's)."""
        return getattr(self, "base_error", None)

    def ran_notes(self) -> list[tuple[str, tuple[str, ...]]]:
        """The warning of a run that left the student further from the teacher (distill_notes.error_rose),
        with the keys it names as likely causes."""
        rose = getattr(self, "rose", None)
        return [(rose["warning"], tuple(rose["reads"]))] if rose else []

    def stage_saved(self) -> None:
        """The runner's stage now holds the trained student: the training checkpoints (model and
        optimizer state, several times the model) are no longer needed to resume."""
        if getattr(self, "dir", None) is not None:
            shutil.rmtree(self.dir / "checkpoints", ignore_errors=True)


def _shortened(steps: int, warmup: int) -> str:
    """What `warmup_length` makes of a warm-up not below steps, in words: a tenth of steps, or none."""
    n = warmup_length(steps, warmup)
    if n == 0:
        return f"the run has no warm-up instead (a tenth of {steps} step{'s' if steps > 1 else ''} rounds to 0)"
    return f"the warm-up is {n} step{'s' if n > 1 else ''} (a tenth of steps) instead"
