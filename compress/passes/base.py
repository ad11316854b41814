"""The contract between the runner and a pass.

A pass module holds a config dataclass (its fields are the recipe keys, with defaults and a docstring)
and a `Pass` subclass. The runner builds `PassCls(config)` and calls `run(model, ctx)`, which returns
the (possibly new) student model and records what it did into `ctx.report[<pass name>]`.
Passes declare what they need (`needs_calibration`, `needs_teacher`) and what they do
(`changes_weights`); the runner never checks names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from compress.arch.base import Adapter
from compress.errors import UserError
from compress.guided import relative_distance
from compress.replay import Prefix, replaying


@torch.no_grad()
def predictions(model: nn.Module, adapter: Adapter, batches: list[dict]) -> list[torch.Tensor]:
    """The final prediction (float64) on every batch."""
    return [adapter.predict(model, kw).double() for kw in batches]


@torch.no_grad()
def relative_error(student: nn.Module, reference: list[torch.Tensor], adapter: Adapter,
                   batches: list[dict], prefix: Prefix | None = None, kept: list | None = None,
                   guide=None) -> float:
    """||student - teacher|| / ||teacher|| of the final prediction over the batches (guided.relative_distance,
    one batch's prediction at a time), against the teacher's `predictions` on them (computed once). prefix: a
    `replay.Prefix` over these batches (the forwards then run only its blocks from `start` on). kept: a list
    each batch's prediction (float64) is appended to (the held-out guided error's, runner_heldout). guide: a
    guided.CalibrationGuidance: the error of the batches' guided predictions instead."""
    def predicted():
        for b, (kw, _) in enumerate(zip(batches, reference)):  # pairs only: no forward past the reference
            with replaying(prefix, b):
                s = adapter.predict(student, kw).double()
            if kept is not None:
                kept.append(s)
            yield s if guide is None else guide.of(s, b)
    target = reference if guide is None else [guide.of(t, b) for b, t in enumerate(reference)]
    return relative_distance(predicted(), target)


@dataclass
class RunContext:
    adapter: Adapter
    family: str
    teacher: nn.Module  # the original model, frozen; never modified by passes
    run_dir: Path  # scratch space that survives interruption: caches, checkpoints
    seed: int = 0
    device: torch.device = torch.device("cpu")
    # () -> list of forward-kwargs batches on which to calibrate (prompts x timesteps x CFG branches)
    calibration_inputs: Callable[[], list[dict]] | None = None
    # () -> list of held-out forward-kwargs batches for teacher-relative errors
    eval_inputs: Callable[[], list[dict]] | None = None
    # () -> how the held-out predictions combine into the guided ones the source's pipeline samples with
    # (guided.HeldOutGuidance), read after eval_inputs; None where it samples one branch (Flux.1-dev, synthetic)
    heldout_guidance: Callable[[], Any] = lambda: None
    # (batch_size, generator) -> (clean latents, cond kwargs) for training (distillation)
    train_batch: Callable[[int, torch.Generator], tuple[torch.Tensor, dict]] | None = None
    # (model, clean latents, cond, generator) -> (loss, forward kwargs): the teacher's own training
    # objective; None means the adapter's (the real model's) objective
    task_loss: Callable | None = None
    calibration: Any = None  # the recipe's calibration config (CalibrationConfig)
    source_kind: str | None = None  # its source's kind (inputs.source_kind: toy, pipeline, synthetic)
    # () -> the teacher's pipeline's scheduler config (teacher samples are drawn as it samples), or
    # None (toy and synthetic sources: the family's default sampler)
    scheduler_config: Callable[[], dict | None] = lambda: None
    # () -> the empty prompt's cond kwargs, one row (classifier-free guidance in teacher samples);
    # None where the source has none (synthetic; a pipeline calibrated without CFG branches)
    unconditional: Callable[[], dict] | None = None
    fingerprint: str = ""  # of teacher + calibration config + code version (calibration cache key)
    report: dict = field(default_factory=dict)  # pass name -> JSON-able record
    block_map: dict[str, list[int]] | None = None  # student block -> teacher block, per group
    resume: bool = False
    # passes run so far that change the student's weights (`Pass.changes_weights`), set by the
    # runner before each pass: a measurement recorded at another version scored another model
    student_version: int = 0
    # block weights read just in time (recipe `stream: true`): passes that stream use it; None:
    # the student is resident
    blocks: Any = None
    # () -> None, called (rank 0) before a pass writes what --resume takes for this run's own work ahead of its
    # stage (distill's checkpoints): a finished run's stages a plain rerun kept go then (runner_stages.discard_finished)
    before_saving: Callable[[], None] = lambda: None
    # () -> the interrupt note (runner_folders.interrupt_note) while a finished run's stages a plain rerun kept
    # are still held, else "": a Ctrl-C before this run's first checkpoint saves none, keeping them (distill)
    finished_note: Callable[[], str] = lambda: ""


# set on plan's meta model (runner_checks.checked_in_order) once a pass that changes the student's
# weights (`Pass.changes_weights`) is planned: a pass checked later sees that the student is no longer
# the teacher itself (distill's notes: a distill before any such pass starts from the teacher)
STUDENT_CHANGED = "_dit_compress_student_changed"


class Pass:
    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    needs_calibration: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    # whether the pass changes the student's weights or blocks (factorizes, trains, removes): what
    # was measured before it (an importance scan's scores) no longer describes the student after it.
    # True unless a pass declares it only measures
    changes_weights: ClassVar[bool] = True
    # whether what the pass writes depends on the block statistics it measures (calib_stats, of its
    # STATS_VERSION): --resume keeps its stage, and the later ones, only under that version (runner_resume)
    measures_statistics: ClassVar[bool] = False
    # whether every process of a distributed launch runs the pass (data parallel: distill); the
    # others run on rank 0 alone, the other ranks waiting for its student (runner_ranks)
    data_parallel: ClassVar[bool] = False
    # config keys that cannot change what the pass writes: --resume allows them to change
    result_free: ClassVar[tuple[str, ...]] = ("progress",)
    # --resume continues after this pass (done before: runner_prepare sets it): its check asks nothing
    # that only running it needs (distill's kd_teacher: base, the chain's base)
    resumed_past: bool = False

    def __init__(self, config):
        self.config = config

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        """Validate the config against the model before any compute; raise UserError."""

    def notes(self, model: nn.Module, adapter: Adapter) -> list[tuple[str, str]]:
        """(recipe key, message) of what is legal but likely not meant (the runner warns, naming the
        key's line), after `check` passed; none by default. A third item, the other keys of the pass
        the note read (errors.BadValue.reads), keeps the --sets of the rest out of its line."""
        return []

    def calibration_notes(self, calib, kind: str) -> list[tuple[str, str]]:
        """(recipe key, message) of what is legal but likely not meant with the calibration inputs the
        recipe draws (calib: its CalibrationConfig, kind: its source's, inputs.source_kind), warned as
        `notes` are; none by default. Its third item may name calibration keys too (calibration.timesteps):
        at a line of the file, their --sets are named with it as those of the pass's keys are."""
        return []

    def ran_notes(self) -> list[tuple[str, tuple[str, ...]]]:
        """(message, the keys of the pass it names) of what the pass's `run` found likely not meant (a
        distill that left the student further from the teacher), which the runner warns at the pass's
        recipe line with the --sets of those keys (runner_checks.warn_ran_notes); none by default."""
        return []

    def against_base(self) -> dict | None:
        """{source, relative_error}: the held-out error of the student it returned against the chain's base
        it distilled toward (distill's kd_teacher: base), not the recipe's teacher, where it measured one;
        the runner's stage line and record give it beside the stage's own (runner_heldout). None by default."""
        return None

    def reads_calibration_inputs(self) -> bool:
        """Whether the pass reads the calibration inputs though it calibrates nothing on them (no block
        activations held: not `needs_calibration`), as distill's teacher samples start from their
        prompts; plan's calibration.drawn. No by default."""
        return False

    def check_streaming(self) -> None:
        """Whether this config runs with block weights streamed (recipe `stream: true`, where
        only one block is resident); raise UserError naming what needs the whole model."""
        raise UserError(f"the {self.name} pass needs the whole model in memory; with stream: true "
                        "a recipe may hold svd, importance and remove_blocks")

    def plan(self, model: nn.Module, adapter: Adapter, calibration_rows: int | None = None) -> dict:
        """A dry-run description (for `dit-compress plan`): what would change, without compute.
        calibration_rows: the calibration inputs (samples) the recipe will draw."""
        return {}

    def apply_planned(self, model: nn.Module, adapter: Adapter) -> None:
        """Apply to a (meta-device) model the structural changes known before any compute
        (explicit block removal, fixed ranks), so `plan` counts parameters after this pass."""

    def stage_saved(self) -> None:
        """Called once the runner has saved this pass's stage: drop what only resuming the pass
        itself needed (nothing by default)."""

    def unplaced(self, model: nn.Module, adapter: Adapter) -> int:
        """Blocks this pass removes from groups chosen only at run time (none by default)."""
        return 0

    def run(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        raise NotImplementedError
