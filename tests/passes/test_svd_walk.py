"""svd_walk: the modulation Grams are taken at the σ the teacher's sampler steps through (Flux: FluxPipeline's
resolution-dependent shift, from the run's scheduler config), and cached under a name that says so."""

from __future__ import annotations

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from tests.arch.test_flux import FLUX_DEV, _theirs
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

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


def _sequential_pass(tmp_path, model, monkeypatch, **cfg):
    """An attention + MLP svd pass on `model` (no Fisher, fitted asymmetrically): the stats each target
    was factorized with, the stats keys re-run (in order) and the report."""
    import compress.passes.svd as svd
    from compress.calib import BlockCalibration

    batches = [model_inputs(model, seed=i) for i in range(2)]
    ctx = RunContext(adapter=get_adapter(model), family="x", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="fp")
    used, reruns = {}, []
    real_layer, real_rerun = svd.compress_layer, BlockCalibration.rerun

    def layer(model, info, stats, **kw):
        used[info.name] = stats
        return real_layer(model, info, stats, **kw)

    def rerun(self, block, found, original):
        reruns.append([r.key for r in found])
        return real_rerun(self, block, found, original)

    monkeypatch.setattr(svd, "compress_layer", layer)
    monkeypatch.setattr(BlockCalibration, "rerun", rerun)
    config = dict(targets=["attention", "mlp"], fisher="none", asymmetric=True, ratio=0.5, multiple=2,
                  progress=False)
    SVDPass(SVDConfig(**{**config, **cfg})).run(model, ctx)
    return used, reruns, ctx.report["svd"], batches


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_sequential_grams_are_those_of_the_compressed_earlier_linears(tmp_path, monkeypatch, family):
    """svd.sequential: every block target is factorized on the Gram of the inputs the finished student
    gives it (nothing before it changes after its stats are taken: by hand, full forwards of the
    student), paired with the teacher's inputs (cross term); block-level calibration takes the later
    linears' Grams with the block's earlier ones uncompressed."""
    from tests.test_calib import _direct_rows

    teacher = tiny_pixart() if family == "pixart" else tiny_flux()
    for sequential in (True, False):
        model = tiny_pixart() if family == "pixart" else tiny_flux()
        used, reruns, report, batches = _sequential_pass(tmp_path / str(sequential), model, monkeypatch,
                                                         sequential=sequential)
        assert report["passes"][-1]["sequential"] is sequential and bool(reruns) is sequential
        off = []
        for name, stats in used.items():
            student = _direct_rows(model, name, batches)
            if not torch.allclose(stats.gram, student.T @ student, rtol=1e-5, atol=1e-6):
                off.append(name)
            elif sequential:
                ref = _direct_rows(teacher, name, batches)
                torch.testing.assert_close(stats.cross, ref.T @ student, rtol=1e-5, atol=1e-6)
        assert off == [] if sequential else any("to_out" in n for n in off), off


def test_sequential_reruns_each_later_key_in_forward_order_and_caches_them(tmp_path, monkeypatch):
    """One re-run per stats key after a block's first, in the order the keys fire (Flux: the
    double block's context stream after the image stream; the single block's q/k/v and proj_mlp
    share their input, so one stage); a second run reads them all from the cache, same factors."""
    model = tiny_flux()
    used, reruns, report, _ = _sequential_pass(tmp_path, model, monkeypatch, sequential=True)
    double = ["attn.ctx.in", "attn.out.in", "attn.ctx_out.in", "ff.in", "ff.out.in", "ff_context.in",
              "ff_context.out.in"]
    want = [[f"double.{i}.{k}"] for i in range(2) for k in double] + [[f"single.{i}.proj_out.in"] for i in range(3)]
    assert reruns == want
    again = tiny_flux()
    _, reruns, report, _ = _sequential_pass(tmp_path, again, monkeypatch, sequential=True)
    assert reruns == [] and sum(h.startswith("stage-") for h in report["cache_hits"]) == len(want)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sequential_with_compensation_searches_each_stage(tmp_path, monkeypatch):
    """With the prediction's Fisher and compensation (sequential: true) every stats key of a block is
    its own compensated stage: PixArt's q/k/v, to_out, ff.net.0, ff.net.2 (block-level: attention,
    then MLP); the very first stage has no upstream error to compensate."""
    counts = {}
    for sequential in (False, True):
        model = tiny_pixart()
        _, reruns, report, _ = _sequential_pass(tmp_path / str(sequential), model, monkeypatch, fisher="all",
                                                asymmetric="auto", sequential=sequential)
        assert report["asymmetric"] == [] and len(reruns) == (9 if sequential else 0)
        assert report["max_loss_ratio"] <= 1.001
        counts[sequential] = len(report["compensation"])
    assert counts == {False: 3 * 2 - 1, True: 3 * 4 - 1}
