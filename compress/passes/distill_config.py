"""The `distill` pass's recipe keys (`DistillConfig`: their values checked at recipe load, BadValue
naming the key) and the choices of its string keys. Imports no torch: recipe.load_recipe builds it
before torch's start-up."""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import BadValue, not_one_of

TRAIN_MODES = ("all", "factors", "non_factors")  # which parameters train (distill_utils.select_trainable)
DATA_SOURCES = ("toy", "teacher_samples", "folder")  # distill_data.make_source's
KD_TEACHERS = ("teacher", "base")  # toward which teacher (distill_kd_teacher.kd_target)


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
