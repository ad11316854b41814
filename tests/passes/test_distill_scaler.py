"""compress.passes.distill_scaler: float16 mixed precision's grad scaler skipping steps in a distill pass,
counted in its report record, warned of where it skipped most of them, and shown by inspect. The GPU's fp16 path
stood in for on the CPU: accelerate's Accelerator under mixed_precision fp16 with a CPU GradScaler."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.inspect_distill import distill_line
from tests.conftest import tiny_pixart
from tests.passes.distill_helpers import distill, factorize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fp16_scaler(monkeypatch):
    """distill's Accelerator under mixed_precision fp16 with a CPU grad scaler of init_scale set by the test."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import compress.passes.distill_trainer as trainer

    made = {"init_scale": 65536.0}

    def accelerator_for(cfg, device):
        acc = Accelerator(cpu=True, mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=made["init_scale"])
        return acc

    monkeypatch.setattr(trainer, "accelerator_for", accelerator_for)
    AcceleratorState._reset_state()  # accelerate keeps one mixed_precision per process: fp16 here alone
    yield made
    AcceleratorState._reset_state()


def _trained(tmp_path, init_scale, fp16_scaler, monkeypatch):
    """(the pass's report record, the pass, whether training moved the student) of 3 steps at `init_scale`."""
    from compress.passes.distill import DistillPass

    fp16_scaler["init_scale"] = init_scale
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ran, real = [], DistillPass.run
    monkeypatch.setattr(DistillPass, "run", lambda self, model, ctx: ran.append(self) or real(self, model, ctx))
    out, ctx = distill(student, teacher, tmp_path, steps=3, mixed_precision="fp16")
    moved = any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    return ctx.report["distill"], ran[0], moved


def test_a_grad_scaler_that_skips_every_step_is_counted_and_warned_of(tmp_path, fp16_scaler, monkeypatch):
    """T1 stop 53: under fp16 a grad scaler skipping every step (gradients overflowing float16; grad_norm inf in
    loss.csv) reported 'distill: 3/3 steps' without a word, the student untrained. Now report.json's distill
    record counts them (steps_skipped, grad_scale), the run warns at the pass's line and inspect shows it."""
    record, pass_, moved = _trained(tmp_path, 1e38, fp16_scaler, monkeypatch)  # scaled gradients overflow at every scale
    assert not moved
    assert record["steps_done"] == 3 and record["steps_skipped"] == 3 and record["grad_scale"] < 1e38
    notes = pass_.ran_notes()
    assert notes[0] == ("distill: 3 of 3 steps skipped: the gradients overflow float16 (mixed_precision: fp16's "
                        f"grad scaler skips such a step (its scale ended at {record['grad_scale']:g})), so the student "
                        "was not trained at all; use mixed_precision: bf16 (float32's range) or no",
                        ("mixed_precision",))
    assert distill_line(record).startswith("distill: 3/3 steps, 3 skipped (fp16 grad scaler) (data toy, train all); ")


def test_a_grad_scaler_that_skips_no_step_says_nothing(tmp_path, fp16_scaler, monkeypatch):
    record, pass_, moved = _trained(tmp_path, 1.0, fp16_scaler, monkeypatch)
    assert moved and record["steps_skipped"] == 0 and record["grad_scale"] == 1.0
    assert not any("skipped" in words for words, _ in pass_.ran_notes())
    assert distill_line(record).startswith("distill: 3/3 steps (data toy, train all); ")


def test_skipped_words_from_most_of_the_steps_on():
    from compress.passes.distill_scaler import skipped_words

    assert skipped_words({"steps_done": 4, "steps_skipped": 2}) is None  # half: not most
    assert skipped_words({"steps_done": 4, "steps_skipped": 3, "grad_scale": 0.5}).startswith(
        "distill: 3 of 4 steps skipped: the gradients overflow float16 (mixed_precision: fp16's grad scaler skips "
        "such a step (its scale ended at 0.5)), so the student trained on 1 of them alone; use mixed_precision: bf16")
    assert skipped_words({"steps_done": 4}) is None and skipped_words({"steps_done": 0, "steps_skipped": 0}) is None


def test_a_step_whose_gradient_norm_overflowed_under_a_scaler_counts_as_skipped():
    """Where accelerate clips the scaled gradients (its CPU fp16 path, T1's harness), their norm overflows to inf
    and clipping zeroes them: the step takes no gradient though the scaler saw none overflow. Without a scaler a
    non-finite norm is the trainer's refusal, not a skip."""
    from types import SimpleNamespace

    from compress.passes.distill_scaler import step_skipped

    scaled, plain = SimpleNamespace(scaler=object()), SimpleNamespace(scaler=None)
    taken, skipped = SimpleNamespace(step_was_skipped=False), SimpleNamespace(step_was_skipped=True)
    assert step_skipped(scaled, skipped, 1.0) and step_skipped(scaled, taken, float("inf"))
    assert not step_skipped(scaled, taken, 1.0) and not step_skipped(plain, skipped, float("inf"))
