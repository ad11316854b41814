"""The svd pass's options against the trained toy PixArt's held-out prediction error: the Fisher
weightings, the asymmetric fit and within-block sequential calibration each lower it."""

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fisher_weighting_lowers_the_prediction_error_of_the_toy_teacher(tmp_path):
    errors = _toy_errors(tmp_path, {"all": dict(fisher="all"), "none": dict(fisher="none", asymmetric=False)})
    assert errors["all"] < 0.7 * errors["none"], errors


def _toy_errors(tmp_path, configs: dict, latents: int = 32) -> dict:
    """Held-out teacher-relative prediction error of the toy PixArt after the svd pass at 50% with
    each config (on `latents` training latents x both CFG branches, batches of 64 rows)."""
    from compress.toy.data import model_inputs as toy_inputs
    from compress.toy.evaluate import prediction_error
    from compress.toy.weights import load_toy_teacher

    teacher = load_toy_teacher("pixart")
    full = toy_inputs("pixart", latents, seed=1, split="train", cfg=True)
    n = 2 * latents
    batches = [{k: v[i:i + 64] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
                for k, v in full.items()} for i in range(0, n, 64)]
    errors = {}
    for name, cfg in configs.items():
        key = (latents, tuple(sorted(cfg.items())))  # the same config on the same latents: the same run
        if key not in _RUNS:
            student = load_toy_teacher("pixart")
            ctx = RunContext(adapter=get_adapter(student), family="pixart", teacher=teacher,
                             run_dir=tmp_path / name, calibration_inputs=lambda: batches, fingerprint="t")
            SVDPass(SVDConfig(ratio=0.5, multiple=4, progress=False, **cfg)).run(student, ctx)
            assert ctx.report["svd"]["max_loss_ratio"] <= 1.001  # optimal in its own (weighted) metric
            assert ctx.report["svd"]["fisher"] == cfg.get("fisher", "all")
            _RUNS[key] = prediction_error(student, teacher, "pixart", n=64), ctx.report["svd"]["asymmetric"]
        errors[name], errors[name + " asymmetric"] = _RUNS[key]
    return errors


# (latents, config) -> (held-out error, the asymmetric fits' record): the tests share the runs they
# have in common (the pass on the toy teacher is deterministic on one thread: the same numbers again)
_RUNS: dict = {}


def test_block_fisher_and_asymmetric_fit_lower_the_streamable_prediction_error(tmp_path):
    """What streamed weights allow (no whole-model backward): the block Fisher beats no Fisher,
    and the asymmetric fit (auto) adds to it."""
    errors = _toy_errors(tmp_path, {"none": dict(fisher="none", asymmetric=False),
                                    "block": dict(fisher="block", asymmetric=False),
                                    "block+auto": dict(fisher="block")}, latents=64)
    assert len(errors["block+auto asymmetric"]) > 0
    assert errors["block"] < 0.97 * errors["none"], errors
    assert errors["block+auto"] < 0.95 * errors["block"], errors


def test_asymmetric_fit_lowers_the_unweighted_prediction_error_of_the_toy_teacher(tmp_path):
    """Without an output Fisher (as when block weights stream) the targets fit the uncompressed
    model's outputs from the student's inputs (auto); with the Fisher, auto leaves them alone."""
    errors = _toy_errors(tmp_path, {"auto": dict(fisher="none"), "off": dict(fisher="none", asymmetric=False),
                                    "fisher": dict(fisher="all")}, latents=64)
    assert len(errors["auto asymmetric"]) > 0 and errors["off asymmetric"] == errors["fisher asymmetric"] == []
    assert errors["auto"] < 0.95 * errors["off"], errors


def test_sequential_calibration_lowers_the_asymmetric_prediction_error_of_the_toy_teacher(tmp_path):
    """Targets fitted asymmetrically (fisher: none) with their stats taken within-block sequentially
    (auto: each later linear fitted on the inputs the block's compressed earlier ones give it)."""
    errors = _toy_errors(tmp_path, {"auto": dict(fisher="none"),
                                    "block-level": dict(fisher="none", sequential=False)}, latents=64)
    assert errors["auto"] < 0.95 * errors["block-level"], errors
