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
    _signal_on_call(monkeypatch, owner, attr, call, sig)
    from compress.passes.distill import TrainingInterrupted

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
    from compress.passes import svd

    # Ctrl-C as in a terminal: a suite started as a background job inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_then_resumed(setup, monkeypatch, "factor", svd, "compress_layer", 4, signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_during_distillation(setup, monkeypatch):
    from compress.passes import distill

    _interrupted_then_resumed(setup, monkeypatch, "distill", distill._Trainer, "_train_step", 4)
