"""svd_walk: the modulation Grams are taken at the σ the teacher's sampler steps through (Flux: FluxPipeline's
resolution-dependent shift, from the run's scheduler config), and cached under a name that says so;
within-block sequential calibration takes each stage's stats after what it reads is compressed, one
re-run per level of stages that do not depend on each other."""

from __future__ import annotations

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_walk import levels
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
    import compress.passes.svd_stages as svd
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


@pytest.mark.parametrize("family, missed", [("pixart", False), ("flux", False), ("flux", True)])
def test_sequential_grams_are_those_of_the_compressed_earlier_linears(tmp_path, monkeypatch, family, missed):
    """svd.sequential: every block target is factorized on the Gram of the inputs the finished student
    gives it (nothing before it changes after its stats are taken: by hand, full forwards of the
    student), paired with the teacher's inputs (cross term); block-level calibration takes the later
    linears' Grams with the block's earlier ones uncompressed, and so do levels built from a data
    flow that misses every dependency (`missed`: all of a block's stages in one level)."""
    from compress.calib import BlockCalibration
    from tests.test_calib import _direct_rows

    if missed:
        monkeypatch.setattr(BlockCalibration, "dependencies", lambda self, block, readers, linears:
                            [set() for _ in readers])
    teacher = tiny_pixart() if family == "pixart" else tiny_flux()
    for sequential in (True, False):
        model = tiny_pixart() if family == "pixart" else tiny_flux()
        used, reruns, report, batches = _sequential_pass(tmp_path / str(sequential), model, monkeypatch,
                                                         sequential=sequential)
        assert report["passes"][-1]["sequential"] is sequential and bool(reruns) is (sequential and not missed)
        off = []
        for name, stats in used.items():
            student = _direct_rows(model, name, batches)
            if not torch.allclose(stats.gram, student.T @ student, rtol=1e-5, atol=1e-6):
                off.append(name)
            elif sequential:
                ref = _direct_rows(teacher, name, batches)
                torch.testing.assert_close(stats.cross, ref.T @ student, rtol=1e-5, atol=1e-6)
        assert off == [] if sequential and not missed else any("to_out" in n for n in off), off


DOUBLE_LEVELS = [["attn.ctx.in", "x"], ["attn.ctx_out.in", "attn.out.in"], ["ff.in", "ff_context.in"],
                 ["ff.out.in", "ff_context.out.in"]]


def test_sequential_reruns_each_later_level_once_and_caches_them(tmp_path, monkeypatch):
    """One re-run per level after a block's first: a Flux double block's image and text streams share
    each (q/k/v, attention outputs, FFN inputs, FFN outputs: 3 re-runs instead of one per stats key
    after the first, 7); the single block's q/k/v and proj_mlp share their input, so two stages, a
    chain. A second run reads them all from the cache, same factors."""
    model = tiny_flux()
    used, reruns, report, _ = _sequential_pass(tmp_path, model, monkeypatch, sequential=True)
    want = [[f"double.{i}.{k}" for k in keys] for i in range(2) for keys in DOUBLE_LEVELS[1:]] + \
        [[f"single.{i}.proj_out.in"] for i in range(3)]
    assert [sorted(keys) for keys in reruns] == want
    again = tiny_flux()
    _, reruns, report, _ = _sequential_pass(tmp_path, again, monkeypatch, sequential=True)
    assert reruns == [] and sum(h.startswith("stage-") for h in report["cache_hits"]) == len(want)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fisher", ["none", "block"])
def test_levels_give_the_weights_of_one_rerun_per_stage(tmp_path, monkeypatch, fisher):
    """Levels change what runs, not what is computed: bit for bit the factors of one re-run per stats
    key in forward order (svd_walk.leveled off), with 7 re-runs per double block there against 3."""
    from compress.passes import svd_walk

    model = tiny_flux()
    _, reruns, _, _ = _sequential_pass(tmp_path / "levels", model, monkeypatch, fisher=fisher, sequential=True)
    leveled = len(reruns)  # (the next pass's rerun wraps this one's, which would count on)
    monkeypatch.setattr(svd_walk, "leveled", lambda cal, block, staged: staged)
    chain = tiny_flux()
    _, per_stage, _, _ = _sequential_pass(tmp_path / "chain", chain, monkeypatch, fisher=fisher, sequential=True)
    assert (len(per_stage), leveled) == (2 * 7 + 3, 2 * 3 + 3)
    a, b = model.state_dict(), chain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _levels_of(model, roles) -> dict[str, list[list[str]]]:
    """group -> the stats keys (block-relative; model-wide targets by module name) of each level of
    the group's first block."""
    from compress.calib import BlockCalibration
    from compress.passes.svd_targets import is_model_wide, resolve_targets, stats_key
    from compress.passes.svd_walk import _block_pairs, leveled, readers, stages

    adapter = get_adapter(model)
    targets = resolve_targets(adapter.linears(model), roles, [])
    cal = BlockCalibration(model, adapter, [model_inputs(model)], progress=False)
    cal.capture()
    out = {}
    for bs in cal.blocks(lambda g, i: readers([t for t in targets if (t.group, t.block) == (g, i)])):
        if bs.index == 0:
            pairs = _block_pairs(targets, bs, {})
            out[bs.group] = [sorted({info.name.split(".", 2)[2] if is_model_wide(info) else
                                     stats_key(info).split(".", 2)[2] for info, _ in level})
                             for level in leveled(cal, bs.block, stages(pairs, list(bs.stats)))]
    return out


def test_levels_of_flux_and_pixart_blocks_follow_their_data_flow():
    """Flux double: the image and text streams side by side until each stream's FFN; single: q/k/v +
    proj_mlp, then proj_out; with modulation targets those (on temb) come first and everything reads
    them. PixArt: a chain, cross-attention included (its k/v read the caption, a model-wide input)."""
    flux = _levels_of(tiny_flux(), ["attention", "mlp"])
    assert flux == {"double": DOUBLE_LEVELS, "single": [["x"], ["proj_out.in"]]}
    flux = _levels_of(tiny_flux(), ["attention", "mlp", "modulation"])
    assert flux == {"double": [["norm1.linear", "norm1_context.linear"], *DOUBLE_LEVELS],
                    "single": [["norm.linear"], ["x"], ["proj_out.in"]]}
    pixart = _levels_of(tiny_pixart(), ["attention", "cross_attention", "mlp"])
    assert pixart == {"blocks": [["attn1.in", "attn2.to_k", "attn2.to_v"], ["attn1.out.in"], ["attn2.q.in"],
                                 ["attn2.out.in"], ["ff.in"], ["ff.out.in"]]}


def test_levels_put_a_stage_after_what_it_reads_and_beside_what_reads_it_later():
    """Pure: chain; two streams; a stage that an earlier stage's reader reads on a later call (a linear
    called twice) never goes below that reader's level; a stage depending on nothing is level 0."""
    assert levels([set(), {0}, {0, 1}]) == [0, 1, 2]
    assert levels([set(), set(), {0, 1}, {0, 1}, {0, 1, 2}, {0, 1, 3}]) == [0, 0, 1, 1, 2, 2]
    assert levels([set(), {0, 2}, set()]) == [0, 1, 1]  # without the rule: c at 0, compressed before a
    assert levels([set(), set()]) == [0, 0] and levels([]) == []


def test_sequential_with_compensation_searches_each_level(tmp_path, monkeypatch):
    """With the prediction's Fisher and compensation (sequential: true) every level of a block is its
    own compensated stage (split by role as block-level splits a block): PixArt's chain q/k/v, to_out,
    ff.net.0, ff.net.2 (block-level: attention, then MLP); Flux's double block four levels, each of
    one role, its single block q/k/v then proj_mlp (their shared input), then proj_out. The very
    first stage has no upstream error to compensate."""
    counts = {}
    for family, sequential in (("pixart", False), ("pixart", True), ("flux", True)):
        model = tiny_pixart() if family == "pixart" else tiny_flux()
        _, reruns, report, _ = _sequential_pass(tmp_path / f"{family}{sequential}", model, monkeypatch,
                                                fisher="all", asymmetric="auto", sequential=sequential)
        assert report["asymmetric"] == [] and len(reruns) == {(False, "pixart"): 0, (True, "pixart"): 9,
                                                               (True, "flux"): 2 * 3 + 3}[sequential, family]
        assert report["max_loss_ratio"] <= 1.001
        counts[family, sequential] = len(report["compensation"])
    assert counts == {("pixart", False): 3 * 2 - 1, ("pixart", True): 3 * 4 - 1, ("flux", True): 2 * 4 + 3 * 3 - 1}


def test_the_capture_after_compressing_top_level_layers_says_why_it_runs(tmp_path, monkeypatch):
    """Student mode captures the block inputs again once top-level layers are compressed: its bar
    was a second 'calibrate: capture 1/1' line in a log, as if the first had repeated."""
    from compress.calib import BlockCalibration

    labels = []
    real = BlockCalibration.capture

    def capture(self, readers=(), label="calibrate: capture"):
        labels.append(label)
        return real(self, readers, label)

    monkeypatch.setattr(BlockCalibration, "capture", capture)
    model = tiny_flux()
    batches = [model_inputs(model)]
    ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="fp")
    config = SVDConfig(targets=["embedding", "attention"], ratio=0.5, fisher="none", multiple=2, progress=False)
    SVDPass(config).run(model, ctx)
    assert labels == ["calibrate: capture", "calibrate: capture again, top-level compressed"]
