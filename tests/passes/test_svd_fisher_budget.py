"""svd_fisher_budget: the bytes fisher_memory_gb gives a backward sweep (a number, or auto: half of what is
free), the targets chunked so that their Fishers as measured and their taps fit it, in the pass and in plan."""

import pytest
import torch

from compress.passes.svd_fisher_budget import fisher_chunks
from tests.conftest import tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fisher_chunks_respect_the_memory_budget():
    from compress.arch.base import LinearInfo

    infos = [LinearInfo(name=f"l{i}", role="mlp", part="in", in_features=4, out_features=o, group=None, block=None,
                        input_key="x") for i, o in enumerate([10, 10, 30, 5])]
    chunks = fisher_chunks(infos, budget_bytes=8 * 250)  # 250 float64 entries
    assert chunks == [["l0", "l1"], ["l2"], ["l3"]]  # 100+100; 900 alone (over budget); 25
    assert fisher_chunks(infos, 1e12) == [["l0", "l1", "l2", "l3"]]


def test_fisher_chunks_count_rows_where_they_are_fewer_than_outputs():
    from compress.arch.base import LinearInfo

    infos = [LinearInfo(name=f"l{i}", role="modulation", part="mod", in_features=4, out_features=100,
                        group=None, block=None, input_key="t") for i in range(4)]
    assert len(fisher_chunks(infos, budget_bytes=8 * 100 * 100)) == 4  # F: one per sweep
    rows = {n: 20 for n in ("l0", "l1", "l2", "l3")}  # 20 float32 rows of 100: 8000 bytes each
    assert fisher_chunks(infos, 4 * 8000 + 1, rows) == [["l0", "l1", "l2", "l3"]]
    assert len(fisher_chunks(infos, 4 * 8000 + 1, {n: 200 for n in rows})) == 4  # more rows than out: F


def test_fisher_memory_auto_takes_half_the_memory_free(monkeypatch):
    """fisher_memory_gb: a number of GiB, or auto: half of what the device has free when the sweeps
    start (at least 1 GiB; 2 GiB where that is unknown); plan shows the sweeps it gives here."""
    import compress.passes.svd_fisher_budget as sf
    import compress.runner_memory as rs
    from compress.arch import get_adapter
    from compress.passes.svd import SVDConfig, SVDPass

    assert sf.fisher_budget(1.5, "cpu") == 1.5 * 2**30
    for free, want in ((40 * 2**30, 20 * 2**30), (2**29, 2**30), (None, 2 * 2**30)):
        monkeypatch.setattr(rs, "free_memory", lambda device, free=free: free)
        assert sf.fisher_budget("auto", "cpu") == want
    model = tiny_flux()
    cfg = dict(targets=["attention", "mlp", "modulation"], ratio=0.5, multiple=2)
    many = SVDPass(SVDConfig(**cfg, fisher_memory_gb=1e-9)).plan(model, get_adapter(model), calibration_rows=4)
    monkeypatch.setattr(rs, "free_memory", lambda device: 2**33)
    auto = SVDPass(SVDConfig(**cfg, fisher_memory_gb="auto")).plan(model, get_adapter(model), calibration_rows=4)
    assert many["fisher"]["sweeps"] == many["fisher"]["targets"] > 1 and auto["fisher"]["sweeps"] == 1
    assert auto["fisher"]["memory_gb"] == "auto" and auto["fisher"]["sweep_gib"] == 4.0


def test_fisher_plan_gives_the_bytes_of_its_largest_sweep():
    """plan counted all of fisher_memory_gb as held by a sweep (plan_fisher.fisher_backward), not what it holds."""
    from types import SimpleNamespace

    from compress.passes.svd_fisher_budget import fisher_plan

    infos = [SimpleNamespace(name=f"l{i}", out_features=out) for i, out in enumerate((100, 50, 50, 300))]
    small = 8 * (100**2 + 2 * 50**2)  # l0-l2 fit one sweep; l3's F alone is more: its own sweep
    assert fisher_plan(infos, {}, small / 2**30, False)["sweep_bytes"] == 8 * 300**2
    assert fisher_plan(infos, {}, 1.0, False)["sweep_bytes"] == small + 8 * 300**2
    assert fisher_plan(infos, {"l3": 10}, 1.0, False)["sweep_bytes"] == small + 4 * 10 * 300  # as rows
    assert fisher_plan([], {}, 1.0, False)["sweep_bytes"] == 0


def test_fisher_memory_gb_auto_is_planned_at_what_is_free_once_the_run_holds_its_weights(monkeypatch):
    """plan sized fisher_memory_gb: auto at half the memory free now (11 GiB a sweep for a run that
    holds 59 GiB on a 24 GiB machine); the run sizes it once teacher, student and inputs are there."""
    from types import SimpleNamespace

    import compress.passes.svd_fisher_budget as sf
    import compress.runner_memory as rs

    infos = [SimpleNamespace(name=f"l{i}", out_features=2**14) for i in range(8)]  # 2 GiB each as F
    monkeypatch.setattr(rs, "free_memory", lambda device: 40 * 2**30)
    now = sf.fisher_plan(infos, {}, "auto", True)
    assert now["sweep_gib"] == 20.0 and now["sweeps"] == 1  # what is free now: before the fix
    settled = sf.settle_auto(now, 30 * 2**30)
    assert settled["sweep_gib"] == 5.0 and settled["sweeps"] == 4 and settled["sweep_bytes"] == 4 * 2**30
    assert settled["resident_bytes"] == 30 * 2**30 and "target_bytes" not in settled
    assert sf.settle_auto(now, 50 * 2**30)["sweep_gib"] == 1.0  # more than is free: at least 1 GiB
    fixed = sf.fisher_plan(infos, {}, 4.0, True)
    assert sf.settle_auto(fixed, 30 * 2**30) == {k: v for k, v in fixed.items() if k != "target_bytes"}
    monkeypatch.setattr(rs, "free_memory", lambda device: None)  # unknown: FALLBACK_GB, as the run
    assert sf.settle_auto(sf.fisher_plan(infos, {}, "auto", True), 30 * 2**30)["sweep_gib"] == 2.0


def test_fisher_chunks_count_each_targets_taps_against_the_budget():
    """A sweep holds each target's Fisher and TAP_COPIES of its output on one batch (its zero tap, a
    probe's gradient): the budget holds both (PixArt-Σ at 1024² put 260 targets' ~197 GiB of taps in one
    sweep of a 69 GiB budget)."""
    from compress.arch.base import LinearInfo
    from compress.passes.svd_fisher_budget import TAP_COPIES, sweep_share

    infos = [LinearInfo(name=f"l{i}", role="mlp", part="in", in_features=4, out_features=10, group=None, block=None,
                        input_key="x") for i in range(4)]
    assert fisher_chunks(infos, 8 * 400) == [["l0", "l1", "l2", "l3"]]  # Fishers alone: 4 x 800 bytes
    outputs = {f"l{i}": 200 for i in range(4)}  # each output 200 bytes on a batch: 400 of taps
    assert sweep_share(10, None, 200) == 8 * 100 + TAP_COPIES * 200 == 1200
    assert fisher_chunks(infos, 8 * 400, outputs=outputs) == [["l0", "l1"], ["l2", "l3"]]


def test_block_fisher_chunks_count_each_targets_taps_as_the_plan_does(monkeypatch):
    """fisher: block chunked a block's targets counting their Fishers only (svd.py's fisher_chunks
    call): a chunk's taps and a probe's gradients came on top of fisher_memory_gb. block_chunks counts
    them at their outputs on the block's first input, as sweep_chunks does; plan_fisher.block_fishers
    counts them alike (out x rows x itemsize)."""
    from pathlib import Path

    import compress.passes.svd_fisher_budget as svd_fisher_budget
    from compress.arch import get_adapter
    from compress.passes.svd_fisher import fisher_bytes
    from compress.passes.svd_fisher_budget import block_chunks
    from compress.plan import make_plan
    from compress.recipe import load_recipe
    from tests.conftest import model_inputs

    model = tiny_flux()
    adapter = get_adapter(model)
    group, index, block = next(adapter.iter_blocks(model))
    captured, sizes = {}, {}
    h = block.register_forward_pre_hook(lambda m, a, k: captured.setdefault("in", (a, k)) and None, with_kwargs=True)
    infos = [i for i in adapter.linears(model) if (i.group, i.block) == (group, index)]
    hooks = [model.get_submodule(i.name).register_forward_hook(
        lambda m, a, o, n=i.name: sizes.setdefault(n, o.numel() * o.element_size()) and None) for i in infos]
    with torch.no_grad():
        model(**model_inputs(model))
    for handle in [h, *hooks]:
        handle.remove()
    budget = sum(fisher_bytes(i.out_features, None) for i in infos)  # every Fisher fits, without the taps
    assert len(fisher_chunks(infos, budget)) == 1
    chunks = block_chunks(model, adapter, block, [captured["in"]], infos, budget)
    assert len(chunks) > 1 and chunks == fisher_chunks(infos, budget, None, sizes)
    assert block_chunks(model, adapter, block, [], infos, budget) == []

    seen, real = [], svd_fisher_budget.fisher_chunks
    monkeypatch.setattr(svd_fisher_budget, "fisher_chunks", lambda *a: seen.append(a) or real(*a))
    make_plan(load_recipe(Path(__file__).parents[2] / "recipes" / "toy-pixart-stream.yaml"))  # fisher: block
    assert seen and all(len(a) == 4 and set(a[3]) == {i.name for i in a[0]} and all(a[3].values()) for a in seen)
