"""Pieces of knowledge-distillation fine-tuning (`compress.passes.distill`) that are not the loop itself:
block-output capture, the KD losses (thesis eq. 2.88–2.90), block-map resolution, which parameters train,
the warm-up + cosine schedule, stop signals, and the loss-curve files (CSV + PNG).

Losses (all per step, on the same noisy input, timestep and prompt):
    L = λ_task · L_task + λ_out · MSE(student pred, teacher pred) + λ_feat · Σ_blocks nMSE(F_s, F_map(s))
where nMSE is `kd_losses.normalized_mse` (the error divided by the teacher feature's mean square, eq. 2.89's
w_i) and F are a block's residual-stream outputs (`adapter.hidden_of_output`; Flux: image and text streams).
"""

from __future__ import annotations

import csv
import math
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.errors import UserError, not_one_of
from compress.interrupts import STOPS, handled, raise_stop, took
from compress.kd_losses import massive_activation_mask, normalized_mse
from compress.lowrank import LowRankLinear
from compress.passes.distill_config import TRAIN_MODES
from compress.report import save_figure

if TYPE_CHECKING:
    from compress.passes.distill import DistillConfig

CURVE_COLUMNS = ("step", "loss", "task", "out", "feat", "lr", "grad_norm")


# ---- capture -------------------------------------------------------------------------------------


class BlockOutputs:
    """Forward hooks on every block of `model` recording its residual-stream outputs.

    `outputs[(group, index)]` is the list from `adapter.hidden_of_output` (PixArt: [(B, N, D)];
    Flux: [image (B, N, D), text (B, L, D)]). With `detach` the tensors are cut from the graph (teacher).
    """

    def __init__(self, model: nn.Module, adapter, detach: bool):
        self.adapter, self.detach = adapter, detach
        self.outputs: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.handles = [block.register_forward_hook(self._hook(group, index))
                        for group, index, block in adapter.iter_blocks(model)]

    def _hook(self, group: str, index: int):
        def hook(module, args, output):
            hidden = self.adapter.hidden_of_output(output)
            self.outputs[(group, index)] = [h.detach() if self.detach else h for h in hidden]
        return hook

    def clear(self) -> None:
        self.outputs = {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], {}


class OutputCapture:
    """A forward hook on the model itself keeping its last prediction, so the student's forward inside
    `adapter.task_loss` also serves the output-KD term (no second student forward)."""

    def __init__(self, model: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.value = output[0] if isinstance(output, (tuple, list)) else output.sample

    def pop(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("distill: the student's forward hook saw no output (task_loss did not call "
                               "the model?)")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.handle.remove()


# ---- losses --------------------------------------------------------------------------------------


def output_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor) -> torch.Tensor:
    """Plain MSE between predictions (same scale as the task loss), in float32."""
    return torch.nn.functional.mse_loss(student_pred.float(), teacher_pred.float())


def feature_loss(student: dict, teacher: dict, block_map: dict[str, list[int]],
                 mask_massive: float | None = None) -> torch.Tensor:
    """Σ over student blocks (group, i) and their output tensors of nMSE(student, teacher[(group, map[i])]).

    With `mask_massive = k`, elements of the teacher feature beyond k standard deviations of its mean
    ("massive activations", TinyFusion) are left out of both numerator and normaliser.
    """
    if not student:
        raise RuntimeError("distill: no student block outputs were captured")
    total = None
    for (group, index), s_list in student.items():
        key = (group, block_map[group][index])
        if key not in teacher:
            raise RuntimeError(f"distill: teacher block {key} produced no output")
        for s, t in zip(s_list, teacher[key]):
            mask = massive_activation_mask(t, mask_massive) if mask_massive else None
            term = normalized_mse(s, t, mask=mask)
            total = term if total is None else total + term
    return total


# ---- block map -----------------------------------------------------------------------------------


def resolve_block_map(adapter, student: nn.Module, teacher: nn.Module,
                      block_map: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """{group: [teacher block of student block 0, 1, ...]}; identity for groups the map leaves out,
    which then must have as many blocks as the teacher's. Raises UserError on a map that does not fit."""
    s_counts, t_counts = adapter.block_counts(student), adapter.block_counts(teacher)
    resolved = {}
    for group, n_student in s_counts.items():
        if group not in (block_map or {}):
            if n_student != t_counts[group]:
                raise UserError(f"distill: the student has {n_student} '{group}' blocks, the teacher "
                                f"{t_counts[group]}, and no block map says which teacher block each matches")
        mapping = list((block_map or {}).get(group, range(n_student)))
        if len(mapping) != n_student:
            raise UserError(f"distill: block map for group '{group}' has {len(mapping)} entries but the "
                            f"student has {n_student} blocks (teacher: {t_counts[group]})")
        if (past := block_beyond({group: mapping}, t_counts)) is not None:
            raise UserError(f"distill: block map for group '{group}' names teacher block {past[1]}, out of "
                            f"range 0..{t_counts[group] - 1}")
        resolved[group] = [int(i) for i in mapping]
    return resolved


def block_beyond(block_map: dict[str, list[int]], counts: dict[str, int]) -> tuple[str, int] | None:
    """(group, block) of the first entry of `block_map` ({group: [teacher block of student block 0, 1, ...]})
    that names no block of a teacher of `counts` blocks per group (outside 0..count - 1), None where every
    one names one: resolve_block_map's refusal, and kd_teacher: base's of a base of fewer blocks."""
    for group, mapping in block_map.items():
        for i in mapping:
            if not 0 <= i < counts.get(group, 0):
                return group, i
    return None


# ---- what trains ---------------------------------------------------------------------------------


def factor_param_names(model: nn.Module) -> set[str]:
    """Names of the parameters of every LowRankLinear (down.weight, up.weight, up.bias)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, LowRankLinear):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters())
    return names


PLANNED_FACTORS = "_dit_compress_factors_planned"  # on plan's meta model: an svd pass whose ranks are
# decided at run time (global, energy) leaves its targets dense there, but factorizes them in the run


def will_have_factors(model: nn.Module) -> bool:
    """The model has LowRankLinear layers, or an earlier svd pass will make them (plan's meta model)."""
    return bool(getattr(model, PLANNED_FACTORS, False)) or any(isinstance(m, LowRankLinear)
                                                               for m in model.modules())


def select_trainable(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Sets requires_grad by `mode` (all | factors | non_factors) and returns the trainable parameters."""
    if mode not in TRAIN_MODES:
        raise UserError(not_one_of("distill.train", mode, TRAIN_MODES))
    factors = factor_param_names(model)
    if mode == "factors" and not factors:
        raise UserError("distill.train: factors, but the model has no LowRankLinear layers "
                        "(run an svd pass first, or use train: all)")
    chosen = []
    for name, param in model.named_parameters():
        wanted = mode == "all" or (name in factors) == (mode == "factors")
        param.requires_grad_(wanted)
        if wanted:
            chosen.append(param)
    if not chosen:
        raise UserError(f"distill.train: {mode} leaves no parameter to train")
    return chosen


# ---- schedule ------------------------------------------------------------------------------------


def warmup_length(total: int, warmup: int) -> int:
    """The warm-up steps `warmup_cosine` runs: `warmup`, or a tenth of `total` where `warmup` ≥ `total`
    (a run shortened for a quick try under the default 20 would never reach lr nor decay from it)."""
    return warmup if warmup < total else total // 10


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over `warmup` steps (`warmup_length`), then cosine from 1 to
    `min_ratio` at `total`."""
    warmup = warmup_length(total, warmup)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- stop signals --------------------------------------------------------------------------------


class StopSignals:
    """Within the `with`, SIGINT/SIGTERM/SIGHUP set `requested` (checked once per step; noted for the
    exit status: interrupts.took) instead of killing the process, so the loop can write a checkpoint
    and exit cleanly. A second signal stops at once (a KeyboardInterrupt as the signal's own handler
    raises it: interrupts.raise_stop), unless it is the first one passed on (within SAME_STOP_S of
    it, or the same signal under a launcher): a terminal's Ctrl-C reaches torchrun's
    agent with its workers, and the agent sends them its own signal at once (then SIGKILL, 30 s later:
    a user still gets out). A signal the caller ignores (SIG_IGN: SIGINT in a background job, SIGHUP
    under nohup) stays ignored, as cli_entry and interrupts_held leave it. Outside the main thread
    signals cannot be caught: the flag then never sets."""

    SIGNALS = STOPS  # SIGINT, SIGTERM and (not on Windows) SIGHUP
    SAME_STOP_S = 2.0

    def __init__(self):
        self.requested: int | None = None
        self._previous = {}
        self._at = 0.0  # when the first signal came (time.monotonic)

    def _handler(self, signum, frame):
        if self.requested is None:
            self.requested, self._at = signum, time.monotonic()
            took(signum)
        elif not same_stop(time.monotonic() - self._at, signum == self.requested, launched()):
            raise_stop(signum, frame, self._previous.get(signum))  # a second one: give up the clean exit

    def __enter__(self):
        self._handled = handled(self.SIGNALS, self._handler)
        self._previous = self._handled.__enter__()
        return self

    def __exit__(self, *exc):
        self._handled.__exit__(*exc)
        self._previous = {}
        return False


def same_stop(since_first: float, same_signal: bool, under_launcher: bool) -> bool:
    """Whether a signal `since_first` seconds after the first of a `StopSignals` is that stop passed on
    (a launcher's), not a user's second one."""
    return since_first < StopSignals.SAME_STOP_S or (same_signal and under_launcher)


def stop_slots(requested: int | None, rank: int, processes: int) -> list[float]:
    """This process's stop signal (`StopSignals.requested`) in its own slot of one per process, 0
    elsewhere: summed over the launch in the step's one all-reduce, they say which rank took which
    signal (`stops_taken`)."""
    return [float(requested or 0) if r == rank else 0.0 for r in range(processes)]


def stops_taken(slots: list[float]) -> dict[int, int]:
    """{rank: signal} of the processes that took a stop signal, from the summed `stop_slots`."""
    return {rank: int(s) for rank, s in enumerate(slots) if s}


def agreed_stop(own: int | None, taken: dict[int, int]) -> int | None:
    """The signal this process stops on, where any process of the launch took one (`taken`:
    `stops_taken`): its own; else the one most processes took (on a tie, in STOPS' order: SIGINT,
    SIGTERM, SIGHUP), so a process stopped by another's SIGTERM exits 143 as that one does, not a
    Ctrl-C's 130; None where none took one."""
    if own is not None:
        return own
    votes = [sum(s == stop for s in taken.values()) for stop in STOPS]
    most = max(votes, default=0)
    return next((int(s) for s, n in zip(STOPS, votes) if n == most), None) if most > 0 else None


def stop_words(taken: dict[int, int], processes: int) -> str:
    """What stopped the run, for its stop line: 'a stop signal (SIGTERM)' in one process; which rank
    took which signal in a launch of several ('a stop signal (rank 1 took SIGTERM)', '(every process
    took SIGINT)': a Ctrl-C of the launch; '(ranks 0-2 took SIGINT, rank 3 took SIGTERM)')."""
    if not taken:
        return "a stop signal"
    if processes < 2:
        return f"a stop signal ({signal.Signals(next(iter(taken.values()))).name})"
    by_signal = {s: [r for r in sorted(taken) if taken[r] == s] for s in sorted(set(taken.values()))}
    if len(by_signal) == 1 and len(taken) == processes:
        return f"a stop signal (every process took {signal.Signals(next(iter(by_signal))).name})"
    said = [f"{_ranks(ranks)} took {signal.Signals(s).name}" for s, ranks in by_signal.items()]
    return f"a stop signal ({', '.join(said)})"


def _ranks(ranks: list[int]) -> str:
    """'rank 1'; 'ranks 0-2, 5': sorted ranks, runs of consecutive ones as a range."""
    runs = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    words = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"rank {words}" if len(ranks) == 1 else f"ranks {words}"


def launched() -> bool:
    """Whether this process runs under a launcher (torchrun, accelerate launch: runner_ranks)."""
    from compress.runner_ranks import launch_key

    return launch_key() is not None


# ---- loss curves ---------------------------------------------------------------------------------


def write_curves(history: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """history: one dict per step with CURVE_COLUMNS. Writes the CSV, and a log-scale PNG of the terms."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in CURVE_COLUMNS})
    tmp.replace(csv_path)
    if png_path is not None and history:
        _plot(history, png_path)


def _plot(history: list[dict], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    steps = [row["step"] for row in history]
    fig = plt.figure(figsize=(7, 4))
    ax = fig.add_axes((0.1, 0.12, 0.86, 0.78))
    for key in ("loss", "task", "out", "feat"):
        values = [row.get(key) for row in history]
        if any(v is not None and v > 0 for v in values):
            ax.plot(steps, values, label=key, linewidth=1.2 if key == "loss" else 0.8)
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel("loss term (unweighted)")
    ax.set_title("distill: loss curves")
    ax.legend()
    save_figure(fig, png_path, dpi=80)  # a temp file renamed into place: never a cut-off PNG


def read_curves(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def accelerator_for(cfg: DistillConfig, device: torch.device):
    """Its DDP does not look for parameters a step's loss left out: the trainer's loss always holds the
    task term (times lambda_task, 0 included), which reaches every trainable parameter through the
    student's output (find_unused_parameters=True made DDP search the graph each step and warn on each rank)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    on_cpu = device.type == "cpu"
    return Accelerator(cpu=on_cpu, mixed_precision="no" if on_cpu else cfg.mixed_precision,
                       step_scheduler_with_optimizer=False,  # one schedule step per optimizer step
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
