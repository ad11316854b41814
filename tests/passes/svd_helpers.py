"""Shared by the svd pass tests: a run context over a tiny model's calibration batches and one svd
pass run on a tiny model."""

from __future__ import annotations

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

MAKERS = {"pixart": tiny_pixart, "flux": tiny_flux}


def context(model, tmp_path, fingerprint="fp", n=2):
    """A RunContext whose calibration inputs are `n` seeded batches of `model_inputs`."""
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(n)]
    return RunContext(adapter=adapter, family=adapter.family, teacher=model, run_dir=tmp_path,
                      calibration_inputs=lambda: batches, fingerprint=fingerprint)


def run_svd(family, tmp_path, **cfg):
    """One svd pass on a fresh tiny `family` model -> (model, the pass's report, LinearInfo by name)."""
    model = MAKERS[family]()
    ctx = context(model, tmp_path)
    cfg = {"multiple": 2, "modulation_grid": 4, "progress": False, **cfg}
    infos = {i.name: i for i in get_adapter(model).linears(model)}
    SVDPass(SVDConfig(**cfg)).run(model, ctx)
    return model, ctx.report["svd"], infos
