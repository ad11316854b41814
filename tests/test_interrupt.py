"""SIGTERM / SIGINT during calibration, factorization or distillation, then `--resume`: the output is
byte-identical to an uninterrupted run, and no output folder is left half-written."""

import os
import signal

import pytest

from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import tiny_flux

RECIPE = """\
model: flux
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [attention, mlp], ratio: 0.5, multiple: 2, progress: false}}
  - distill: {{data: toy, steps: 6, batch_size: 4, lr: 0.001, checkpoint_every: 2, progress: false}}
"""
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupt")
    tiny_flux().save_pretrained(tmp / "teacher")
    text = RECIPE.format(teacher=tmp / "teacher")
    reference = _run(tmp, text, "ref")
    return tmp, text, (reference / WEIGHTS).read_bytes()


def _run(tmp, text, name, resume=False):
    recipe = parse_recipe(text, str(tmp / "r.yaml"))
    return Runner(recipe, tmp / f"out-{name}", tmp / f"run-{name}", resume=resume).run()


def _signal_on_call(monkeypatch, owner, attr, call: int, sig=signal.SIGTERM):
    """Deliver a real signal to this process on the `call`-th call of owner.attr."""
    real = getattr(owner, attr)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapper)


def _interrupted_then_resumed(setup, monkeypatch, name, owner, attr, call, sig=signal.SIGTERM):
    tmp, text, reference = setup
    if owner is not None:  # else the caller set its signal up
        _signal_on_call(monkeypatch, owner, attr, call, sig)
    from compress.passes.distill_trainer import TrainingInterrupted

    with pytest.raises((KeyboardInterrupt, TrainingInterrupted)):
        _run(tmp, text, name)
    assert not (tmp / f"out-{name}").exists()
    monkeypatch.undo()
    out = _run(tmp, text, name, resume=True)
    assert (out / WEIGHTS).read_bytes() == reference


def test_sigterm_during_calibration(setup, monkeypatch):
    from compress.calib import BlockCalibration

    _interrupted_then_resumed(setup, monkeypatch, "calib", BlockCalibration, "_run", 3)


def test_sigint_during_factorization(setup, monkeypatch):
    from compress.passes import svd_stages as svd

    # Ctrl-C as in a terminal: a suite started as a background job inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_then_resumed(setup, monkeypatch, "factor", svd, "compress_layer", 4, signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_during_distillation(setup, monkeypatch):
    from compress.passes import distill_trainer

    _interrupted_then_resumed(setup, monkeypatch, "distill", distill_trainer._Trainer, "_train_step", 4)
    assert not list((setup[0] / "run-distill" / "distill").rglob("step-*"))  # resumed, then cleared


def test_a_saved_stage_replaces_the_distill_checkpoints(setup):
    """Once the runner has saved the distill stage, its training checkpoints (model + optimizer
    state, several times the model) go; the loss curves stay."""
    run = setup[0] / "run-ref"
    assert (run / "distill" / "loss.csv").is_file()
    assert not list((run / "distill").rglob("step-*"))


@pytest.mark.parametrize("when", ["export", "held-out inputs"])
def test_sigterm_before_the_first_pass_or_during_the_export(setup, monkeypatch, when):
    """The whole run unwinds on SIGTERM, not only its passes: an export stopped midway leaves no
    hidden copy of the model beside --out."""
    import compress.io_export
    import compress.runner

    tmp = setup[0]
    if when == "export":  # the export's weights are written, its texts not yet
        _signal_on_call(monkeypatch, compress.io_export, "write_texts", 3)  # 2 stages, then the export
    else:  # the teacher's held-out predictions, before the first pass
        _signal_on_call(monkeypatch, compress.runner, "predictions", 1)
    _interrupted_then_resumed(setup, monkeypatch, when.replace(" ", "-"), None, None, None)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out-")]


def test_output_fishers_measured_before_an_interruption_are_not_measured_again(setup, monkeypatch):
    """One target per backward sweep (fisher_memory_gb tiny): SIGTERM in the third sweep leaves the
    first two Fishers on disk beside the stats cache; --resume measures only the rest and writes
    the same bytes as an uninterrupted run; a finished pass deletes them."""
    from compress.passes import svd_fisher

    tmp, text, _ = setup
    text = text.replace("progress: false}", "progress: false, fisher_memory_gb: 1.0e-9}", 1)
    real, calls = svd_fisher.output_fisher, []
    monkeypatch.setattr(svd_fisher, "output_fisher", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    reference = (_run(tmp, text, "fisher-ref") / WEIGHTS).read_bytes()
    total = len(calls)
    monkeypatch.undo()
    assert total > 3 and all(len(names) == 1 for names in calls), total
    assert not list((tmp / "run-fisher-ref").rglob("fisher*/*.pt"))
    calls.clear()
    _signal_on_call(monkeypatch, svd_fisher, "output_fisher", 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp, text, "fisher")
    monkeypatch.undo()
    assert len(list((tmp / "run-fisher").rglob("fisher-4probes/*.pt"))) == 2
    calls.clear()
    monkeypatch.setattr(svd_fisher, "output_fisher", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    out = _run(tmp, text, "fisher", resume=True)
    assert len(calls) == total - 2
    assert (out / WEIGHTS).read_bytes() == reference
    assert not list((tmp / "run-fisher").rglob("fisher*/*.pt"))


def test_a_rerun_without_resume_keeps_the_distill_checkpoint(setup, monkeypatch):
    """Ctrl-C in distill says 'run again with --resume'; the same command without it used to start
    at step 0 and delete the checkpoint and the stages. It is refused, naming what is there, and
    --resume then gives the uninterrupted run's bytes."""
    from compress.errors import UserError
    from compress.passes import distill_trainer

    tmp, text, reference = setup
    _signal_on_call(monkeypatch, distill_trainer._Trainer, "_train_step", 4)
    with pytest.raises(distill_trainer.TrainingInterrupted, match="run again with --resume"):
        _run(tmp, text, "again")
    monkeypatch.undo()
    checkpoints = sorted(p.name for p in (tmp / "run-again" / "distill" / "checkpoints").iterdir())
    with pytest.raises(UserError, match=r"run-again holds an interrupted run of this recipe \(1 of 2 passes done, "
                                        r"a distill checkpoint at step 4\): add --resume to continue, or --restart"):
        _run(tmp, text, "again")
    assert sorted(p.name for p in (tmp / "run-again" / "distill" / "checkpoints").iterdir()) == checkpoints
    assert (tmp / "run-again" / "stages" / "0-svd" / "state.json").is_file()
    out = _run(tmp, text, "again", resume=True)
    assert (out / WEIGHTS).read_bytes() == reference


# ---- what the CLI says after Ctrl-C ----------------------------------------------------------
def _interrupted_cli_run(tmp_path, capsys, *flags) -> str:
    """`dit-compress run` of tmp_path/r.yaml, which is interrupted: the last line it prints."""
    from compress.cli import main

    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                 "--run-dir", str(tmp_path / "run"), *flags]) == 130
    return capsys.readouterr().err.strip().splitlines()[-1]


def _interrupt_pass(monkeypatch, index: int):
    real = Runner._run_pass

    def run_pass(self, i, student):
        if i == index:
            raise KeyboardInterrupt
        return real(self, i, student)
    monkeypatch.setattr(Runner, "_run_pass", run_pass)


def _interrupt_teacher_loading(monkeypatch):
    import compress.runner_setup

    def load_teacher(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(compress.runner_setup, "load_teacher", load_teacher)


NOTHING_SAVED = "dit-compress: interrupted; nothing was saved yet: a rerun starts over"


@pytest.mark.parametrize("when", ["loading the teacher", "the first pass"])
def test_ctrl_c_before_anything_is_saved_does_not_offer_resume(pixart, monkeypatch, capsys, when):
    """It said 'rerun with --resume to continue', with nothing in the run folder to continue from."""
    tmp_path = pixart[0]
    if when == "loading the teacher":
        _interrupt_teacher_loading(monkeypatch)
    else:
        _interrupt_pass(monkeypatch, 0)
    assert _interrupted_cli_run(tmp_path, capsys) == NOTHING_SAVED


def test_ctrl_c_after_a_saved_pass_offers_resume_but_not_work_restart_discards(pixart, monkeypatch, capsys):
    """Ctrl-C in pass 2 names the saved pass and --resume; Ctrl-C in a --restart before it has
    discarded that pass does not offer it to --resume (the rerun with --restart starts over)."""
    tmp_path = pixart[0]
    _interrupt_pass(monkeypatch, 1)
    assert _interrupted_cli_run(tmp_path, capsys) == (
        f"dit-compress: interrupted; {tmp_path / 'run'} keeps its work (1 of 2 passes done): rerun with --resume "
        "to continue")
    _interrupt_teacher_loading(monkeypatch)
    assert _interrupted_cli_run(tmp_path, capsys, "--restart") == NOTHING_SAVED
    assert _interrupted_cli_run(tmp_path, capsys, "--resume").endswith("rerun with --resume to continue")


def test_a_resume_of_another_recipe_is_refused_before_loading(pixart, monkeypatch, capsys):
    """A --resume of another recipe is refused before its teacher loads (it was compared after, so a
    Ctrl-C while loading said what the Ctrl-C note says of work saved by another recipe); Ctrl-C
    while a --resume that changes only the passes still to run loads offers --resume again."""
    from compress.cli import main

    tmp_path = pixart[0]
    _interrupt_pass(monkeypatch, 1)
    _interrupted_cli_run(tmp_path, capsys)  # pass 1 saved
    _interrupt_teacher_loading(monkeypatch)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir",
                 str(tmp_path / "run"), "--resume", "--set", "calibration.num_prompts=3"]) == 2
    other = capsys.readouterr().err.strip()
    assert "the recipe changed since" in other and "calibration.num_prompts" in other and "--restart" in other
    later = _interrupted_cli_run(tmp_path, capsys, "--resume", "--set", "passes.1.svd.ratio=0.4")
    assert later.endswith("rerun with --resume to continue")


# ---- a stop signal from outside, through the console script ----------------------------------
DISTILL = """\
model: flux
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - distill: {{data: toy, steps: 6, batch_size: 4, lr: 0.001, checkpoint_every: 2, progress: false}}
"""
# `dit-compress run r.yaml` as its console script runs it, in a terminal (SIGTERM and SIGHUP acted on,
# whatever the suite inherited); its third distill step waits for the test's signal
STOPPED_IN_DISTILL = """\
import os, signal, sys, time
for stop in ("SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, stop), signal.SIG_DFL)
from compress.passes import distill_trainer

real = distill_trainer._Trainer._train_step


def train_step(self, pred, feats, stop):
    if self.step == 2:
        os.write(1, b"step 3\\n")
        until = time.monotonic() + 60
        while stop.requested is None and time.monotonic() < until:
            time.sleep(0.01)
    return real(self, pred, feats, stop)


distill_trainer._Trainer._train_step = train_step
sys.argv = ["dit-compress", "run", "r.yaml", "--out", "out", "--run-dir", "run"]
from compress.cli_entry import main
sys.exit(main())
"""


def _this_compress() -> dict:
    """The environment of a child process that imports this `compress` (the one the tests import)."""
    from pathlib import Path

    import compress

    here = str(Path(compress.__file__).parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize("stop, status", [
    ("SIGTERM", 143),
    pytest.param("SIGHUP", 129, marks=pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP")),
])
def test_a_stop_signal_in_distill_checkpoints_and_exits_with_its_status(setup, tmp_path, stop, status):
    """A tester's finding: SIGHUP (the terminal closed, an SSH session dropped) killed `run` in distill
    with no word and no checkpoint since the last checkpoint_every (status 129); SIGTERM stopped it at
    the end of its step with a checkpoint and one line, but with status 130, a Ctrl-C's. Both stop as
    a Ctrl-C does now, with the status a shell gives a process the signal killed: 128 + its number."""
    import subprocess
    import sys

    (tmp_path / "r.yaml").write_text(DISTILL.format(teacher=setup[0] / "teacher"))
    env = _this_compress()
    p = subprocess.Popen([sys.executable, "-c", STOPPED_IN_DISTILL], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while p.stdout.readline() not in ("step 3\n", ""):  # to the third step, or the end
        pass
    p.send_signal(getattr(signal, stop))
    out, err = p.communicate(timeout=300)
    assert (p.returncode, err.strip().splitlines()[-1:]) == (status, [
        f"dit-compress: distill: stopped at step 3/6 on a stop signal ({stop}); checkpoint in "
        "run/distill/checkpoints; run again with --resume to continue"]), err
    assert "step-00000003" in [c.name for c in (tmp_path / "run" / "distill" / "checkpoints").iterdir()]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGHUP"), reason="no pseudo-terminal")
def test_a_terminal_that_closes_stops_distill_with_a_checkpoint_and_sighups_status(setup, tmp_path):
    """The terminal of `run` closing (an SSH session dropped) sends it SIGHUP, which killed it without a
    checkpoint; then whatever it writes there fails (EIO). The stop's checkpoint is written, and the
    status is SIGHUP's, 129 (with SIGHUP taken as a stop alone, the progress bar's last refresh raised
    OSError after the checkpoint: status 1, its traceback written to nowhere)."""
    import pty
    import sys

    (tmp_path / "r.yaml").write_text(DISTILL.format(teacher=setup[0] / "teacher").replace("false", "true"))
    env = _this_compress()
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `run` in a terminal of its own
        try:
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, "-c", STOPPED_IN_DISTILL], env)
        finally:
            os._exit(127)
    seen = b""
    while b"step 3" not in seen:
        try:
            seen += os.read(terminal, 4096)
        except OSError:  # the child ended first
            break
    os.close(terminal)  # the terminal goes: SIGHUP to the child
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert status == 129, seen.decode(errors="replace")[-2000:]
    assert "step-00000003" in [c.name for c in (tmp_path / "run" / "distill" / "checkpoints").iterdir()]
    assert not (tmp_path / "out").exists()
