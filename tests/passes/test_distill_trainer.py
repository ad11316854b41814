"""The distill pass's training loop (passes/distill_trainer.py) on tiny random diffusers models: bit-exact
resume, checkpoints of another run, stop signals, the non-finite loss's blame, the log off a terminal,
CUDA, and a 2-process data-parallel run."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.distill_utils import read_curves
from compress.errors import UserError
from compress.passes.distill import DistillConfig, DistillPass
from compress.passes.distill_trainer import StepLimitReached, TrainingInterrupted
from tests.conftest import tiny_pixart
from tests.passes.distill_helpers import context, distill, factorize, state, toy_data

HERE = Path(__file__).parent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_is_bit_exact(tmp_path):
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=6, checkpoint_every=2)
    with pytest.raises(StepLimitReached, match="step 3/6 on max_steps_this_run=3") as stopped:
        distill(copy.deepcopy(student), teacher, tmp_path / "cut", steps=6, checkpoint_every=2,
                max_steps_this_run=3)
    assert stopped.value.exit_code == 75  # a planned stop, told apart from a Ctrl-C's 130
    resumed, ctx = distill(copy.deepcopy(student), teacher, tmp_path / "cut", steps=6, checkpoint_every=2,
                           resume=True)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_curves(tmp_path / "cut" / "distill" / "loss.csv")) == 6
    assert read_curves(tmp_path / "cut" / "distill" / "loss.csv") == \
        read_curves(tmp_path / "full" / "distill" / "loss.csv")


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    """A fresh run clears the checkpoints an earlier run left in the same run dir (else they sort
    after its own and outlive them), and a resume refuses checkpoints trained from another student."""
    teacher = tiny_pixart()
    student, other = factorize(copy.deepcopy(teacher)), factorize(copy.deepcopy(teacher), rank=2)
    distill(copy.deepcopy(other), teacher, tmp_path, steps=6, checkpoint_every=2)  # leaves step-4, step-6
    with pytest.raises(TrainingInterrupted, match="step 1/6"):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=6, checkpoint_every=2, max_steps_this_run=1)
    assert [p.name for p in (tmp_path / "distill" / "checkpoints").glob("step-*")] == ["step-00000001"]
    resumed, _ = distill(copy.deepcopy(student), teacher, tmp_path, steps=6, checkpoint_every=2, resume=True)
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=6, checkpoint_every=2)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingInterrupted):  # another student's checkpoint, then a resume of this one
        distill(copy.deepcopy(other), teacher, tmp_path / "o", steps=6, checkpoint_every=2, max_steps_this_run=2)
    with pytest.raises(UserError, match=r"other settings \(the incoming student \(the passes before it wrote "
                                        r"another\)\); delete "):
        distill(copy.deepcopy(student), teacher, tmp_path / "o", steps=6, checkpoint_every=2, resume=True)


def test_resume_discards_a_checkpoint_of_other_distill_keys_and_trains_the_pass_from_its_start(tmp_path, capsys):
    """A resume after `--set passes.N.distill.lr=...` (or steps, which the cosine schedule spans) refused
    ('was trained with other settings (distill.lr: ...); delete RUN/distill/checkpoints ...') where a
    changed earlier pass has --resume discard the checkpoint and go on: it is discarded too, said in one
    line naming the keys, and the pass trains from its start (the teacher samples kept). Before the
    teacher loads (check_resumable_configs) it is no refusal; another process count still is, and other
    keys with another incoming student are refused as that student alone is."""
    from compress.passes.distill_resume import check_resumable_configs

    teacher = tiny_pixart()
    student, other = factorize(copy.deepcopy(teacher)), factorize(copy.deepcopy(teacher), rank=2)
    checkpoints = tmp_path / "distill" / "checkpoints"
    with pytest.raises(TrainingInterrupted):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=2, max_steps_this_run=1)
    (tmp_path / "distill" / "teacher_samples").mkdir()  # where data: teacher_samples caches them
    settings = dict(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, progress=False, plot=False)
    check_resumable_configs(tmp_path, [DistillConfig(**settings, lr=2e-3, weight_decay=0.1)])
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"WORLD_SIZE": "2"}), pytest.raises(UserError) as other_count:
        check_resumable_configs(tmp_path, [DistillConfig(**settings, lr=1e-3)])
    assert str(other_count.value).startswith(
        f"distill: checkpoint {checkpoints / 'step-00000001'} was trained by 1 process, 2 now: relaunch with 1 "
        "(dit-compress run … --resume) to continue it")
    with pytest.raises(UserError, match=r"other settings \(distill.lr: 0.001 in the checkpoint, 0.002 now; the "
                                        r"incoming student \(the passes before it wrote another\)\); delete "):
        distill(copy.deepcopy(other), teacher, tmp_path, steps=4, checkpoint_every=2, resume=True, lr=2e-3)
    assert (checkpoints / "step-00000001").is_dir()
    capsys.readouterr()
    resumed, _ = distill(copy.deepcopy(student), teacher, tmp_path, steps=4, resume=True, lr=2e-3, weight_decay=0.1)
    assert capsys.readouterr().err.replace("\n", " ").startswith(
        f"distill: checkpoint {checkpoints / 'step-00000001'} was trained with other settings (distill.lr: 0.001 "
        "in the checkpoint, 0.002 now; distill.weight_decay: 0.0 in the checkpoint, 0.1 now): --resume moves "
        f"{checkpoints} to {checkpoints}.discarded/")  # (/its fingerprint)
    fresh, _ = distill(copy.deepcopy(student), teacher, tmp_path / "fresh", steps=4, lr=2e-3, weight_decay=0.1)
    a, b = state(fresh), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "distill" / "teacher_samples").is_dir()
    # more steps: the learning rate's cosine spans them, so a checkpoint of 4 is no start for 6
    with pytest.raises(TrainingInterrupted):
        distill(copy.deepcopy(student), teacher, tmp_path / "s", steps=4, checkpoint_every=2, max_steps_this_run=2)
    capsys.readouterr()
    longer, _ = distill(copy.deepcopy(student), teacher, tmp_path / "s", steps=6, resume=True)
    assert "(distill.steps: 4 in the checkpoint, 6 now): --resume moves" in capsys.readouterr().err
    fresh, _ = distill(copy.deepcopy(student), teacher, tmp_path / "fresh6", steps=6)
    a, b = state(fresh), state(longer)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_agree(tmp_path):
    """2 CPU processes (gloo) via torchrun: after the steps both hold the same weights."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(HERE / "distill_two_procs.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"weights_{r}.pt") for r in (0, 1))
    start = torch.load(tmp_path / "weights_start.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], start[k]) for k in w0)
    assert (tmp_path / "distill" / "loss.csv").exists()


def test_a_process_stopped_by_another_ones_signal_exits_with_that_signals_status(tmp_path):
    """2 processes via torchrun, rank 1 alone sent SIGTERM in its second step: both stop after it (the
    step's all-reduce), each with 143; rank 0, which took no signal, said a Ctrl-C's 130 before. Its line
    says which rank took which signal ('on a stop signal; ...' said none)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           str(HERE / "distill_two_procs.py"), str(tmp_path), "SIGTERM"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(tmp_path / f"status_{r}").read_text() for r in (0, 1)] == ["143", "143"]
    assert (tmp_path / "message_0").read_text().startswith(
        "distill: stopped at step 2/3 on a stop signal (rank 1 took SIGTERM); checkpoint in ")
    assert (tmp_path / "message_0").read_text().endswith("; run again with --resume to continue")
    assert not list(tmp_path.glob("weights_[01].pt"))  # neither ran to the end


def test_signal_checkpoints_and_stops(tmp_path):
    import signal

    teacher = tiny_pixart()
    data = toy_data(teacher)
    calls = []
    # a terminal's Ctrl-C handler, as the command has it: a background job starts with SIGINT ignored,
    # which the pass rightly keeps (then the signal would be lost)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)

    def train_batch(batch_size, generator):  # SIGINT arrives during step 2
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return data(batch_size, generator)

    ctx = context(teacher, tmp_path, train_batch=train_batch)
    cfg = DistillConfig(steps=5, batch_size=2, checkpoint_every=0, progress=False, plot=False)
    # the line names the signal ('on a stop signal;' said none)
    try:
        with pytest.raises(TrainingInterrupted, match=r"step 2/5 on a stop signal \(SIGINT\); "):
            DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
        assert signal.getsignal(signal.SIGINT) is before  # handler restored
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert (tmp_path / "distill" / "checkpoints" / "step-00000002" / "meta.json").exists()


@pytest.mark.parametrize("where", ["prediction", "block"])
def test_a_teacher_that_overflows_is_blamed_not_the_student(tmp_path, where):
    """A non-finite loss names the teacher when its prediction or a block output it feeds the
    feature loss is not finite (a float16 overflow), and the student (lower lr) otherwise."""
    from compress.errors import NumericError

    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    layer = teacher.proj_out if where == "prediction" else teacher.transformer_blocks[1].ff.net[2]
    layer.bias.data[:] = float("inf")
    words = "the teacher's prediction" if where == "prediction" else "the teacher's output of block 1 of 'blocks'"
    with pytest.raises(NumericError, match=f"non-finite loss at step 1 .*; {words} is not finite") as e:
        distill(student, teacher, tmp_path)
    assert "float16" not in str(e.value) and "(float32 reaches 3.4e38" in str(e.value), e.value  # a float32 teacher
    with pytest.raises(NumericError, match=r"non-finite loss at step 2 .*; lower distill.lr \(1e\+30\)"):
        distill(factorize(copy.deepcopy(tiny_pixart()), rank=2), tiny_pixart(), tmp_path / "s", lr=1e30, steps=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distill_runs_on_cuda(tmp_path):
    teacher = tiny_pixart()
    ctx = context(teacher, tmp_path, device=torch.device("cuda"))
    cfg = DistillConfig(steps=2, batch_size=2, checkpoint_every=0, progress=False, plot=False)
    out = DistillPass(cfg).run(factorize(copy.deepcopy(teacher)), ctx)
    assert all(torch.isfinite(p).all() for p in out.parameters())


def test_progress_off_a_terminal_is_lines_on_stderr(tmp_path, capsys):
    """stdout carries results only; where the bar is not drawn (a log) a line per tenth of the run says
    how far it got."""
    teacher = tiny_pixart()
    distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, steps=20, batch_size=2,
            progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("distill ")]
    assert [line.split()[1] for line in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all("task " in line and "loss " in line for line in lines)


def test_a_resumed_run_says_it_continues_from_its_checkpoint(tmp_path, capsys):
    """After the passes' 'resuming after pass ...', the log would start at a later step with nothing
    saying why: the resume names the step and checkpoint it continues from (a fresh run says nothing)."""
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=2, max_steps_this_run=2)
    assert "continuing" not in capsys.readouterr().err
    distill(copy.deepcopy(student), teacher, tmp_path, steps=4, checkpoint_every=2, resume=True)
    checkpoint = tmp_path / "distill" / "checkpoints" / "step-00000002"
    assert f"distill: continuing from its checkpoint at step 2/4 ({checkpoint})\n" in capsys.readouterr().err


def test_the_record_counts_the_seconds_of_every_invocation_and_names_its_curves_absolute(tmp_path, monkeypatch):
    """After a resume report.json's distill seconds covered only the last invocation, and its
    files.loss_csv was relative to the folder the run was launched from: the checkpoint carries the
    training time so far ('seconds' counts all of it, 'seconds_this_run' this one), and the curves'
    path is absolute, as the report's other paths are."""
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, Path("r"), steps=4, checkpoint_every=2, max_steps_this_run=2)
    train_state = tmp_path / "r" / "distill" / "checkpoints" / "step-00000002" / "train_state_0.pt"
    saved = torch.load(train_state, weights_only=False)
    assert 0 < saved["seconds"] < 1000
    torch.save(dict(saved, seconds=1000.0), train_state)  # as if the first invocation trained 1000 s
    _, ctx = distill(copy.deepcopy(student), teacher, Path("r"), steps=4, checkpoint_every=2, resume=True)
    record = ctx.report["distill"]
    assert abs(record["seconds"] - 1000.0 - record["seconds_this_run"]) < 0.02
    assert 0 < record["seconds_this_run"] < 1000
    assert record["files"]["loss_csv"] == str(tmp_path / "r" / "distill" / "loss.csv")


def test_off_a_terminal_a_line_per_tenth_whatever_the_steps(tmp_path, capsys):
    """Its own logger logged every steps // 10 steps: 13 steps were 13 lines. Now compress.progress's
    tenths (and elapsed time), the loss terms after the count."""
    import re

    teacher = tiny_pixart()
    distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, steps=13, batch_size=2, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill ")]
    assert [line.split()[1] for line in lines] == [f"{s}/13" for s in (2, 3, 4, 6, 7, 8, 10, 11, 12, 13)]
    assert all(re.fullmatch(r"distill \d+/13 loss \S+ task \S+ out \S+ feat \S+ \(\d+:\d\d\)", line) for line in lines)


def test_its_words_name_only_the_terms_of_the_loss_and_fit_80_columns(tmp_path, capsys):
    """A new user's distill bar at 80 columns wrapped into two lines ('loss 50.13 task 12.25 out' /
    '7.335 feat 427.9') and named `task` though lambda_task was 0 (every shipped recipe's): a term of
    weight 0 is left out, in its log lines and after its bar, which then fits 80 columns."""
    import re

    from rich.console import Console

    import compress.report
    from compress.passes.distill_progress import fmt_terms
    from compress.progress import WORDS, bar

    teacher = tiny_pixart()
    distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, steps=3, batch_size=2, progress=True,
            lambda_task=0.0, lambda_feat=0.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill ")]
    assert lines and all(re.fullmatch(r"distill \d/3 loss \S+ out \S+ \(\d+:\d\d\)", line) for line in lines), lines
    words = fmt_terms({"loss": 50.13, "task": 12.25, "out": 7.335, "feat": 427.9}, {"task": 0.0, "out": 1.0, "feat": 0.1})
    assert words == "loss 50.13 out 7.335 feat 427.9"
    console = Console(width=80, record=True, force_terminal=True, file=open("/dev/null", "w"))
    real, compress.report.console = compress.report.console, console  # the terminal `bar` draws on
    try:
        shown = bar(True, log=False)
    finally:
        compress.report.console = real
    shown.add_task("distill", total=5000, completed=4999, **{WORDS: words})
    console.print(shown.make_tasks_table(shown.tasks))
    drawn = console.export_text().rstrip().splitlines()
    assert len(drawn) == 1 and drawn[0].startswith("distill ━"), drawn
    assert drawn[0].endswith(" 4999/5000 0:00:00 -:--:-- loss 50.13 out 7.335 feat 427.9"), drawn
