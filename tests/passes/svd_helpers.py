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


def two_branches(model, inputs: int = 2, seed: int = 0) -> dict:
    """`inputs` of a tiny model's inputs, each as its two CFG rows interleaved (the toy source's calibration
    layout, inputs.interleave_branches): the empty prompt's (one text embedding for all), then the prompt's."""
    import torch

    one = model_inputs(model, batch=inputs, seed=seed)
    empty = model_inputs(model, batch=1, seed=10_000)["encoder_hidden_states"][0]
    rows = torch.arange(inputs).repeat_interleave(2)  # (2n,)
    batched = lambda v: torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == inputs  # noqa: E731
    batch = {k: (v[rows] if batched(v) and k not in ("img_ids", "txt_ids") else v) for k, v in one.items()}
    text = one["encoder_hidden_states"]
    batch["encoder_hidden_states"] = torch.stack([t for i in range(inputs) for t in (empty, text[i])])
    return batch
