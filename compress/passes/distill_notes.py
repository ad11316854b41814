"""What a distill pass says before it runs where it comes before any pass that changes the student
(`distills_the_teacher`), and of its result once it has trained: where its held-out teacher-relative
error ended above the error it started from, a warning naming the causes its settings make likely
(`error_rose`), recorded in its report record as `error_rose` and said at its recipe line
(`DistillPass.ran_notes`, runner_checks.warn_ran_notes)."""

from __future__ import annotations

from dataclasses import fields

from compress.passes.base import STUDENT_CHANGED
from compress.report import is_number

CURVE = "loss.csv"  # the pass's loss curve, in its run folder (distill_utils.write_curves)
# A rise counts where it is above RISE_RELATIVE of the error before and above RISE_FLOOR: the error is one
# pooled number (no per-sample spread) measured on the same held-out inputs (cached) before and after, so what
# moves it without training having moved the student is float arithmetic alone (fp32 predictions, kernels
# that sum in another order): a relative 1e-3 is far above that and far below a rise worth a word; the
# floor keeps an exact student (error ~1e-9, where fp32's own rounding is ~1e-7) from warning at all.
RISE_RELATIVE = 1e-3
RISE_FLOOR = 1e-6
# Under this many steps a rise is of Adam's first updates, which move each weight by about lr whatever its
# gradient's size (its moments are of a batch or two), at full lr where the warm-up rounds to none: named as the
# steps, with the lr where it is above the default (an lr meant for a longer, warmed-up run). toy-pixart.yaml
# (lr 5e-4 for 200 steps; held-out error 0.1971 before): 1 and 2 steps rose to 0.2681 and 0.2140, at lr 1e-4 fell
# to 0.1602 and 0.1495, 5 steps fell at both (0.1707, 0.1429); tiny PixArt (svd ratio 0.5, 0.4088 before): 1 and
# 2 steps rose at lr 1e-4 too (0.4096, 0.4097), 5 fell at both.
FEW_STEPS = 10


def distills_the_teacher(cfg, model) -> list[tuple]:
    """The note (key, message, keys read) of a distill that comes before any pass that changes the
    student (no STUDENT_CHANGED on plan's meta `model`), whose distillation losses compare the teacher
    with itself: nothing to recover, and a task term only trains it away from the teacher. Legal (a
    fine-tuning): none with lambda_out and lambda_feat 0 (the task loss alone), nor with kd_teacher: base,
    whose teacher is the chain's base. The key '' puts it at the pass's line."""
    if getattr(model, STUDENT_CHANGED, False) or cfg.kd_teacher == "base" or cfg.lambda_out + cfg.lambda_feat == 0:
        return []
    moves = (f"lambda_task {cfg.lambda_task:g} only trains it away from the teacher" if cfg.lambda_task > 0 else
             f"its {cfg.steps} steps leave it where it is")
    message = ("distill runs before any pass changes the student: it starts from the teacher itself, so its "
               f"distillation losses (lambda_out, lambda_feat) have nothing to recover and {moves}; put it after "
               "the passes that compress (remove_blocks, svd), or, to fine-tune the teacher on the task loss "
               "alone, set lambda_out: 0 and lambda_feat: 0 (no warning then)")
    return [("", message, ("lambda_task", "lambda_out", "lambda_feat", "kd_teacher"))]


def error_rose(cfg, record: dict) -> dict | None:
    """{before, after, reads, warning} where the pass's `record` (its report record) holds a held-out
    teacher-relative error after training (pred_rel_error_after) above the one before it; None where
    it is not above by more than float noise (`rose`), or either was not measured (a process other
    than rank 0, no held-out inputs).
    `reads`: the keys of the pass the warning names as likely causes (those its settings apply)."""
    before, after = record.get("pred_rel_error_before"), record.get("pred_rel_error_after")
    if not (_number(before) and _number(after) and rose(before, after)):
        return None
    causes = likely_causes(cfg)
    why = (f"likely cause{'s' if len(causes) > 1 else ''}: {'; '.join(causes.values())}" if causes else
           f"its settings name no usual cause (lambda_task 0, data: {cfg.data}, lr {cfg.lr:g}): see its loss "
           f"curve ({CURVE}); a lower lr or more steps may help")
    kd = record.get("kd_teacher")  # kd_teacher: base: measured against the chain's base
    against = f"the chain's base {kd['source']}" if isinstance(kd, dict) and kd.get("source") else "the teacher"
    warning = (f"distill: the held-out teacher-relative error rose over its {_steps(cfg.steps)}, from {before:.4g} "
               f"to {after:.4g}: the student ends further from {against} than it started; {why}")
    with_lr = ["lr"] if "steps" in causes and cfg.lr > _default(cfg, "lr") else []  # its words name the lr too
    return {"before": before, "after": after, "reads": list(causes) + with_lr, "warning": warning}


def rose(before: float, after: float) -> bool:
    """Whether the held-out error went from `before` to `after` by more than float noise: by more than
    RISE_RELATIVE of `before` and more than RISE_FLOOR (1e-9 -> 1.0000001e-9 did not rise)."""
    return after - before > max(RISE_RELATIVE * before, RISE_FLOOR)


def likely_causes(cfg) -> dict[str, str]:
    """{key: why} of the settings that may take the student away from the teacher, those that apply
    to `cfg` alone: fewer steps than FEW_STEPS (their words name an lr above the default with them: error_rose
    reads both keys then), a task term (trains toward the data's targets), the toy data (not the teacher's
    samples), an lr above the default (over more steps)."""
    causes = {}
    default = _default(cfg, "lr")
    if cfg.steps < FEW_STEPS:
        causes["steps"] = _few_steps_words(cfg, default)
    if cfg.lambda_task > 0:
        causes["lambda_task"] = (f"lambda_task {cfg.lambda_task:g} > 0 trains toward the data's targets, not toward "
                                 "the teacher (lambda_task: 0 trains on the teacher alone, as the shipped recipes)")
    if cfg.data == "toy":
        causes["data"] = ("data: toy trains on the calibration source's inputs, not on the teacher's own samples "
                          "(data: teacher_samples, as the shipped recipes)")
    if cfg.lr > default and cfg.steps >= FEW_STEPS:
        causes["lr"] = f"lr {cfg.lr:g} is above the default {default:g} (a lower lr takes smaller steps)"
    return causes


def _few_steps_words(cfg, default: float) -> str:
    """Why fewer than FEW_STEPS steps may raise the error: Adam's first updates, with the lr where it is above
    the default (then, on the toy recipes, the default lr lowered it)."""
    from compress.distill_utils import warmup_length

    warm = warmup_length(cfg.steps, cfg.warmup_steps)
    first = ("Adam's first updates move each weight by about lr whatever its gradient"
             f"{', at full lr with no warm-up' if warm == 0 else ''}")
    if cfg.lr > default:
        return (f"steps {cfg.steps} at lr {cfg.lr:g}, above the default {default:g}: {first}, too far for so few "
                "steps to come back from (an lr for a longer run: more steps lower it, as the toy recipes' 200 at "
                "lr 0.0005, or a lower lr for so few)")
    return f"steps {cfg.steps} is few: {first}, which so few steps may not come back from (more steps lower it)"


def _steps(n: int) -> str:
    return f"{n} step{'s' if n != 1 else ''}"


def _default(cfg, key: str):
    return next(f.default for f in fields(cfg) if f.name == key)


def _number(value) -> bool:
    return is_number(value) and value == value  # (not NaN)
