"""svd_walk: the modulation Grams are taken at the σ the teacher's sampler steps through (Flux: FluxPipeline's
resolution-dependent shift, from the run's scheduler config), and cached under a name that says so."""

from __future__ import annotations

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from tests.arch.test_flux import FLUX_DEV, _theirs
from tests.conftest import model_inputs, tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


def _modulation_pass(tmp_path, sampler):
    """The σ of every forward of a modulation-only svd pass (grid of 4) and its cache files."""
    model = tiny_flux()
    batches = [model_inputs(model, seed=i) for i in range(2)]  # (2, 16, 8): 16 image tokens
    adapter = get_adapter(model)
    ctx = RunContext(adapter=adapter, family="flux", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="fp", scheduler_config=lambda: sampler)
    seen = set()
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(kwargs["timestep"].tolist()), with_kwargs=True)
    config = SVDConfig(targets=["modulation"], ranks={"modulation": 2}, modulation_grid=4, fisher="none",
                       multiple=2, progress=False)
    SVDPass(config).run(model, ctx)
    hook.remove()
    own = {float(t) for b in batches for t in b["timestep"]}
    return seen - own, sorted(p.name for p in tmp_path.rglob("conditioning-*"))


def test_modulation_grid_follows_the_samplers_shift(tmp_path):
    shifted, files = _modulation_pass(tmp_path / "dev", FLUX_DEV)
    want = _theirs(FLUX_DEV, 4, 16)  # what a 4-step FluxPipeline passes at 16 image tokens
    assert sorted(shifted) == pytest.approx(sorted(want.tolist()), rel=2e-6)
    plain, plain_files = _modulation_pass(tmp_path / "none", None)
    assert sorted(plain) == torch.linspace(0.25, 1.0, 4).tolist()  # unchanged without a config
    unit, unit_files = _modulation_pass(tmp_path / "shift1", {"shift": 1.0})
    assert unit == plain
    assert files and plain_files and files != plain_files  # a cached unshifted Gram is never reused
