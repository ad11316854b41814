"""A distill pass that diverges (passes/distill_trainer.py): it stops with one line naming the step and the
student's first weight, gradient or layer that is not finite, writes no checkpoint of weights that are
not finite, and says what --resume at a lower lr needs; never a NaN student handed on to be saved."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.errors import NumericError
from tests.conftest import model_inputs, tiny_pixart
from compress.passes.distill import DistillConfig, DistillPass
from tests.passes.distill_helpers import context, distill, factorize

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint_weights(run_dir):
    """{checkpoint folder name: its model's tensors}."""
    return {c.name: load_file(str(c / "model.safetensors"))
            for c in sorted((run_dir / "distill" / "checkpoints").glob("step-*"))}


def test_a_gradient_that_is_not_finite_stops_before_the_step_and_its_checkpoints_stay_finite(tmp_path):
    """lr 3 without clipping: step 2's loss is finite (~1e21) but its gradient NaN. AdamW applied it, the
    step-2 checkpoint held NaN in most weights and --resume went on from it; the stop came a step later,
    'non-finite loss at step 3 ...; lower lr or check the student', naming nothing."""
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    with pytest.raises(NumericError) as e:
        distill(student, teacher, tmp_path, lr=3, grad_clip=0, warmup_steps=0, steps=4, checkpoint_every=1)
    words = str(e.value)
    assert "\n" not in words
    assert words.startswith("distill: non-finite gradient at step 2 (loss "), words
    assert "trained weights hold NaN/Inf, the first pos_embed.proj.weight; lower distill.lr (3) or set " \
           "distill.grad_clip (0 now: no clipping) and rerun with --resume (it trains this pass from its start: " \
           f"it moves {tmp_path / 'distill' / 'checkpoints'}, trained at these settings, into " \
           f"{tmp_path / 'distill' / 'checkpoints.discarded'})" in words, words
    saved = _checkpoint_weights(tmp_path)
    assert list(saved) == ["step-00000001"]
    assert all(torch.isfinite(t).all() for t in saved["step-00000001"].values())
    # the checkpoint kept resumes (at its lr: the same step stops it again, before writing anything)
    with pytest.raises(NumericError, match="^distill: non-finite gradient at step 2 "):
        distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, lr=3, grad_clip=0, warmup_steps=0,
                steps=4, checkpoint_every=1, resume=True)
    assert list(_checkpoint_weights(tmp_path)) == ["step-00000001"]


def test_clipping_at_a_nan_norm_does_not_change_which_gradients_are_named(tmp_path):
    """Clipping at a NaN total norm multiplies every gradient by NaN (torch's clip; accelerate 0.34 clips
    even at grad_clip 0): the line named 108 of 108 gradients, the first scale_shift_table, whose gradient
    backward left finite. It names those backward left non-finite, as without clipping."""
    teacher = tiny_pixart()
    words = {}
    for clip in (0, 1e30):  # 1e30: no finite norm reaches it, so step 1 is the same as unclipped
        with pytest.raises(NumericError) as e:
            distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path / str(clip), lr=3,
                    grad_clip=clip, warmup_steps=0, steps=3)
        words[clip] = str(e.value).split("; ")[0]
    assert words[0] == words[1e30], words
    assert words[0].endswith("): the gradients of 84 of its 108 trained weights hold NaN/Inf, the first "
                             "pos_embed.proj.weight"), words


def test_a_checkpoint_of_weights_that_are_not_finite_is_never_written(tmp_path, monkeypatch):
    """An update that overflows the weights themselves (finite gradients): the checkpoint after it is
    refused naming the weight, the earlier one kept."""
    import compress.passes.distill_trainer as trainer

    real = trainer._Trainer._train_step

    def overflowing(self, *a, **k):
        row = real(self, *a, **k)
        if self.step == 1:  # the second step's update
            self.acc.unwrap_model(self.student).proj_out.weight.data[0, 0] = float("inf")
        return row

    monkeypatch.setattr(trainer._Trainer, "_train_step", overflowing)
    teacher = tiny_pixart()
    with pytest.raises(NumericError, match=r"^distill: the student's weight proj_out.weight holds NaN/Inf after "
                                           r"step 2; lower distill.lr \(0.001\) and rerun with --resume \(it trains "):
        distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, steps=4, checkpoint_every=1)
    assert list(_checkpoint_weights(tmp_path)) == ["step-00000001"]


def test_a_loss_that_is_not_finite_names_the_students_first_layer_to_overflow(tmp_path):
    """lr 1e30: the second step's forward overflows; the line names where, in the student, not 'or check
    the student'."""
    teacher = tiny_pixart()
    with pytest.raises(NumericError) as e:
        distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, lr=1e30, steps=3, warmup_steps=0)
    words = str(e.value)
    assert words.startswith("distill: non-finite loss at step 2 (task "), words
    assert "'s output is the first to hold NaN/Inf" in words and "; lower distill.lr (1e+30) and rerun with " \
           "--resume; no checkpoint was written" in words, words


def test_a_student_whose_held_out_prediction_is_not_finite_is_refused_naming_its_layer(tmp_path):
    """lr 1e6, clipped, one step: the weights stay finite (~1e6) but the held-out prediction is NaN. The
    pass returned that student (pred_rel_error_after nan) and the run wrote it as its output."""
    teacher = tiny_pixart()
    heldout = [model_inputs(teacher, batch=2, seed=5)]
    ctx = context(teacher, tmp_path, eval_inputs=lambda: heldout)
    cfg = DistillConfig(lr=1e6, grad_clip=1.0, steps=1, batch_size=4, warmup_steps=0, checkpoint_every=1,
                        progress=False, plot=False)
    with pytest.raises(NumericError) as e:
        DistillPass(cfg).run(factorize(copy.deepcopy(teacher), rank=2), ctx)
    words = str(e.value)
    assert words.startswith("distill: the student's prediction after step 1 holds NaN/Inf on held-out batch 1 "
                            "of 1: "), words
    # (runner_setup.locate's words, as the runner's held-out check says them: 'holds NaN/Inf ...: X's output is
    # the first to hold it')
    assert "'s output is the first to hold it" in words and "; lower distill.lr (1e+06) and rerun with --resume (it trains " in words


def test_after_the_refusal_its_words_resume_at_a_lower_lr(tmp_path):
    """What the line says to do works: --resume at a lower lr sets the checkpoints aside where the line
    says (it said 'it discards RUN/distill/checkpoints' since 24c7b7e moved them to checkpoints.discarded)
    and trains to the end."""
    import re

    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    with pytest.raises(NumericError, match="rerun with --resume") as e:
        distill(copy.deepcopy(student), teacher, tmp_path, lr=3, grad_clip=0, warmup_steps=0, steps=3,
                checkpoint_every=1)
    assert list(_checkpoint_weights(tmp_path)) == ["step-00000001"]
    before = (tmp_path / "distill" / "checkpoints" / "step-00000001" / "model.safetensors").read_bytes()
    moved = re.search(r"it moves (\S+), trained at these settings, into (\S+)\)$", str(e.value))
    assert moved and moved[1] == str(tmp_path / "distill" / "checkpoints"), str(e.value)
    out, ctx = distill(student, teacher, tmp_path, lr=1e-3, grad_clip=0, warmup_steps=0, steps=3,
                       checkpoint_every=1, resume=True)
    assert ctx.report["distill"]["steps_done"] == 3 and ctx.report["distill"]["resumed"] == 0  # from its start
    assert all(torch.isfinite(p).all() for p in out.parameters())
    (kept,) = Path(moved[2]).iterdir()  # (the set, named by its fingerprint)
    assert (kept / "step-00000001" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("index, data, checkpoint, said", [
    (0, "toy", False, "lower passes.0.distill.lr (1) and rerun with --resume; no checkpoint was written"),
    (2, "toy", False, "lower passes.2.distill.lr (1) and rerun with --resume (it keeps the passes before it); no "
                      "checkpoint was written"),
    (0, "teacher_samples", True, "lower passes.0.distill.lr (1) and rerun with --resume (it keeps the teacher "
                                 "samples, and trains this pass from its start: it moves {root}, trained at "
                                 "these settings, into {aside})"),
    (1, "teacher_samples", True, "lower passes.1.distill.lr (1) and rerun with --resume (it keeps the passes before "
                                 "it and the teacher samples, and trains this pass from its start: it moves "
                                 "{root}, trained at these settings, into {aside})"),
    (3, "folder", True, "lower passes.3.distill.lr (1) and rerun with --resume (it keeps the passes before it, and "
                        "trains this pass from its start: it moves {root}, trained at these settings, into "
                        "{aside})"),
])
def test_the_divergence_words_name_the_passs_key_and_only_what_resume_keeps(tmp_path, index, data, checkpoint, said):
    """'lower distill.lr (1e+30) and rerun with --resume (it keeps the passes before it and the teacher
    samples, ...)' was said of every distill pass: teacher samples with data: toy or folder, passes before it
    where it is the first, and 'distill.lr' where two distill passes are not told apart. Now the key is
    passes.N.distill.lr (as the out-of-memory hints name it) and the parenthesis says what --resume keeps."""
    from types import SimpleNamespace

    from compress.passes.distill_trainer import _Trainer

    folders = dict(latents_dir=str(tmp_path)) if data == "folder" else {}
    cfg = DistillConfig(lr=1.0, grad_clip=1.0, data=data, **folders)
    if checkpoint:
        (tmp_path / "checkpoints" / "step-00000001").mkdir(parents=True)
    trainer = SimpleNamespace(cfg=cfg, dir=tmp_path, index=index)
    words = str(_Trainer._diverged(trainer, "non-finite loss at step 2", ""))
    said = said.format(root=tmp_path / "checkpoints", aside=tmp_path / "checkpoints.discarded")
    assert words == f"distill: non-finite loss at step 2; {said}", words


def test_two_distill_passes_of_a_recipe_know_their_places(tmp_path):
    """build_passes tells each pass its index in the recipe's passes: the words above name its keys."""
    from compress.passes import build_passes
    from compress.recipe import parse_recipe

    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\npasses:\n  - distill: {steps: 1}\n"
                          "  - svd: {ratio: 0.5}\n  - distill: {steps: 1}\n", str(tmp_path / "r.yaml"))
    assert [p.index for p in build_passes(recipe)] == [0, 1, 2]


def test_a_diverging_distill_pass_made_by_the_recipe_names_its_key(tmp_path):
    """The words of a real divergence, of a pass with its place (as build_passes makes it): passes.1."""
    teacher = tiny_pixart()
    ctx = context(teacher, tmp_path)
    p = DistillPass(DistillConfig(lr=1e30, steps=3, batch_size=4, warmup_steps=0, progress=False, plot=False))
    p.index = 1
    with pytest.raises(NumericError) as e:
        p.run(factorize(copy.deepcopy(teacher), rank=2), ctx)
    assert "; lower passes.1.distill.lr (1e+30) and rerun with --resume (it keeps the passes before it); no " \
           "checkpoint was written" in str(e.value), str(e.value)
