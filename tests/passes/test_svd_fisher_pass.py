"""The svd pass with output Fishers: it leaves no Fisher files behind and writes the same weights with
every pair in memory or one held, Fishers kept as rows, one block's roots at a time, each F decomposed
once in a global allocation, no block Fisher read as a prediction's, factors sharing the Fisher's scale."""

import pytest
import torch

from compress.passes.svd_fisher import FisherSum, dense_fisher, is_rows
from compress.passes.svd_fisher_roots import Roots
from tests.conftest import tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_svd_pass_keeps_no_fisher_files_and_writes_the_same_weights(tmp_path, monkeypatch):
    """With every pair kept in memory (the pass before the store) and with at most one held, and
    with gradient checkpointing, the factors are bit for bit the same; the Fisher folder is gone
    after the pass."""
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    def run(keep_gb, where, **extra):
        model = tiny_flux()
        batches = [model_inputs(model, seed=i) for i in range(2)]
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path / where,
                         calibration_inputs=lambda: batches, fingerprint=where)
        cfg = SVDConfig(targets=["attention", "mlp", "modulation"], ratio=0.5, multiple=2, progress=False,
                        modulation_grid=4, fisher_memory_gb=keep_gb, **extra)
        SVDPass(cfg).run(model, ctx)
        assert not list((tmp_path / where).rglob("fisher*/*.pt")) and not model.gradient_checkpointing
        return model.state_dict()

    a, b = run(100.0, "all-kept"), run(1e-9, "one-kept")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    d = run("auto", "auto")  # half the memory free here: one sweep
    assert a.keys() == d.keys() and all(torch.equal(a[k], d[k]) for k in a)
    c = run(100.0, "checkpointed", gradient_checkpointing=True)  # Fisher and compensation recompute blocks
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_the_svd_pass_keeps_modulation_fishers_as_rows_with_the_same_factors(tmp_path, monkeypatch):
    """Tiny Flux: its modulation targets get 4 samples x 4 probes = 16 gradient rows per sweep, fewer
    than their outputs (6, 3 or 2 x 16), so their Fishers are kept as rows; the factors equal those from
    F within rounding, and the pass plans one sweep for all of them where F took one each."""
    from compress.arch import get_adapter
    from compress.lowrank import LowRankLinear
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    cfg = dict(targets=["modulation"], ranks={"modulation": 4}, multiple=1, progress=False,
               modulation_grid=4, fisher="modulation")
    stored = {}

    def run(where):
        model = tiny_flux()
        batches = [model_inputs(model, seed=i) for i in range(2)]
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path / where,
                         calibration_inputs=lambda: batches, fingerprint=where)
        SVDPass(SVDConfig(**cfg)).run(model, ctx)
        return {n: m.up.weight.double() @ m.down.weight.double() for n, m in model.named_modules()
                if isinstance(m, LowRankLinear)}

    add = Roots.add
    monkeypatch.setattr(Roots, "add", lambda self, n, f, *a: (stored.__setitem__(n, f.shape), add(self, n, f, *a)))
    thin = run("rows")
    assert len(stored) == 8 and all(shape[0] == 16 < shape[1] for shape in stored.values()), stored
    monkeypatch.setattr(FisherSum, "value", lambda self: dense_fisher(torch.cat(self.rows)))  # F itself
    stored.clear()
    dense = run("fisher")
    assert all(shape[0] == shape[1] for shape in stored.values())
    assert thin.keys() == dense.keys() and len(thin) == 8
    for name in thin:
        torch.testing.assert_close(thin[name], dense[name], rtol=1e-5, atol=1e-6)

    model = tiny_flux()
    adapter = get_adapter(model)
    memory = 8 * 96**2 + 8 * 48**2  # bytes: the biggest two Fishers as F
    plan = SVDPass(SVDConfig(**cfg, fisher_memory_gb=memory / 2**30)).plan(model, adapter, calibration_rows=4)
    assert plan["fisher"]["targets"] == 8 and plan["fisher"]["sweeps"] == 1
    assert SVDPass(SVDConfig(**cfg, fisher_memory_gb=memory / 2**30)).plan(model, adapter)["fisher"]["sweeps"] > 1


def test_block_fishers_left_by_an_interrupted_pass_are_not_read_as_prediction_fishers(tmp_path, monkeypatch):
    """Only the prediction's Fishers (fisher: all / modulation) are kept for a rerun: block Fishers
    depend on the stream each block is fed, so a fisher: block pass interrupted midway leaves none
    that a later fisher: all pass on the same model and inputs could take for its own."""
    from compress.arch import get_adapter
    from compress.passes import svd_fisher, svd_fisher_measure
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    batches = [model_inputs(tiny_flux(), seed=i) for i in range(2)]

    def run(fisher):
        model = tiny_flux()
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path,
                         calibration_inputs=lambda: batches, fingerprint="same")
        SVDPass(SVDConfig(targets=["mlp"], ratio=0.5, multiple=2, progress=False, fisher=fisher)).run(model, ctx)

    real_block, calls = svd_fisher_measure.block_fisher, []

    def block_then_stop(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_block(*a, **k)
    monkeypatch.setattr(svd_fisher_measure, "block_fisher", block_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run("block")
    assert not list(tmp_path.rglob("fisher*/*.pt"))
    monkeypatch.undo()
    measured, real = [], svd_fisher.output_fisher
    monkeypatch.setattr(svd_fisher, "output_fisher", lambda *a, **k: (measured.extend(a[3]), real(*a, **k))[1])
    run("all")
    assert len(measured) == len([i for i in get_adapter(tiny_flux()).linears(tiny_flux()) if i.role == "mlp"])


def test_output_fisher_factors_share_its_scale(tmp_path):
    """Factors found in the Fisher's weighted space (V = L W) come back as L⁻¹ up: the Fisher's
    scale must not land on up alone (fp16/bf16 storage), so both factors are re-balanced."""
    from compress.arch import get_adapter
    from compress.lowrank import LowRankLinear
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs, tiny_pixart

    model = tiny_pixart()
    model.proj_out.weight.data *= 1e-4  # a prediction on a small scale: a small Fisher
    teacher = tiny_pixart()
    teacher.load_state_dict(model.state_dict())
    batches = [model_inputs(model, seed=i) for i in range(2)]
    ctx = RunContext(adapter=get_adapter(model), family="pixart", teacher=teacher, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="balance")
    SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, progress=False,
                      compensate=False)).run(model, ctx)
    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert layers
    for m in layers:
        torch.testing.assert_close(m.up.weight.norm(dim=0), m.down.weight.norm(dim=1), rtol=1e-5, atol=0)


def test_the_svd_pass_holds_one_blocks_roots_computing_each_once_with_the_same_factors(tmp_path, monkeypatch):
    """Tiny Flux with compensation (its line search asks for each pair of a stage many times): with
    `groups` (svd.py passes each target's (group, block)) the pass holds the square roots of one
    visited block's targets at a time, computes each once as with every pair kept, and writes the
    same weights bit for bit."""
    from collections import Counter

    import compress.passes.svd as svd_module
    import compress.passes.svd_fisher_roots as svd_fisher_roots
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    calls, held, added = Counter(), [], Counter()
    real_sqrt, real_trim, real_add = svd_fisher_roots.sqrt_pair, Roots._trim, Roots.add
    monkeypatch.setattr(Roots, "add", lambda self, n, f, *a: (added.update([n]), real_add(self, n, f, *a)))
    monkeypatch.setattr(svd_fisher_roots, "sqrt_pair", lambda f, d: (calls.update([f.shape]), real_sqrt(f, d))[1])

    def trim(self, newest):
        real_trim(self, newest)
        held.append(({self.groups.get(n) for n in self.recent}, len(self.recent)))
    monkeypatch.setattr(Roots, "_trim", trim)

    def run(where, grouped):
        model = tiny_flux()
        adapter = get_adapter(model)
        groups = {i.name: (i.group, i.block) for i in adapter.linears(model)} if grouped else None

        class Grouped(Roots):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "groups": groups})  # the pass's own groups or none
        monkeypatch.setattr(svd_module, "Roots", Grouped)
        batches = [model_inputs(model, seed=i) for i in range(2)]
        ctx = RunContext(adapter=adapter, family="flux", teacher=tiny_flux(), run_dir=tmp_path / where,
                         calibration_inputs=lambda: batches, fingerprint=where)
        cfg = SVDConfig(targets=["attention", "mlp", "modulation"], ratio=0.5, multiple=2, progress=False,
                        modulation_grid=4, fisher="all", fisher_memory_gb=100.0)
        SVDPass(cfg).run(model, ctx)
        return model.state_dict()

    calls.clear(), held.clear()
    a = run("kept", grouped=False)
    kept_calls, kept_held = sum(calls.values()), max(n for _, n in held)
    assert kept_calls == len(added) > 8 and kept_held == kept_calls  # every pair computed once, all kept
    calls.clear(), held.clear()
    b = run("grouped", grouped=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(calls.values()) == kept_calls and len(held) == kept_calls
    assert all(len(g) == 1 for g, _ in held) and max(n for _, n in held) < kept_held / 2


def test_a_global_allocation_decomposes_each_targets_fisher_once_with_the_same_factors(tmp_path, monkeypatch):
    """allocation: global walks the targets twice (loss curves and sensitivities, then the factors), and
    with one block's pairs held (Roots' groups) each pair was computed from its Fisher in both walks:
    F's eigendecomposition, sqrt_pair's O(out³) part, twice per target. The first walk now keeps the
    eigendecomposition in F's place (as many bytes), the second only multiplies it out: each target's F
    is decomposed once, the Fishers and the weights are the same bit for bit as with F decomposed twice."""
    import sys

    import compress.passes.svd as svd_module
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    decomposed, pairs, added = [], [], {}
    real_eigh, real_getitem, real_add = torch.linalg.eigh, Roots.__getitem__, Roots.add

    def eigh(a, *args, **kwargs):  # F's eigendecomposition, in svd_fisher_roots (the Grams' are svd_layer's)
        if sys._getframe(1).f_globals["__name__"] == "compress.passes.svd_fisher_roots":
            decomposed.append(a.shape)
        return real_eigh(a, *args, **kwargs)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    monkeypatch.setattr(Roots, "__getitem__", lambda self, n: (pairs.append(n), real_getitem(self, n))[1])
    monkeypatch.setattr(Roots, "add",
                        lambda self, n, f, *a: (added.__setitem__(n, f.clone()), real_add(self, n, f, *a)))

    def run(where, revisit):
        class Once(Roots):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **(kwargs if revisit else {**kwargs, "revisit": False}))  # the pass's, or off
        monkeypatch.setattr(svd_module, "Roots", Once)
        model = tiny_flux()
        batches = [model_inputs(model, seed=i) for i in range(2)]
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path / where,
                         calibration_inputs=lambda: batches, fingerprint=where)
        cfg = SVDConfig(targets=["attention", "mlp"], allocation="global", ratio=0.5, multiple=2, progress=False,
                        fisher_memory_gb=100.0)
        SVDPass(cfg).run(model, ctx)
        assert not list((tmp_path / where).rglob("fisher*/*.pt"))
        return model.state_dict(), dict(added)

    weights, fishers = run("once", revisit=True)
    dense = [f.shape for f in fishers.values() if not is_rows(f)]
    grams = [(f.shape[0], f.shape[0]) for f in fishers.values() if is_rows(f)]  # kept as rows: their small Gram's
    assert len(dense) > 8 and set(pairs) == set(fishers) and len(pairs) >= 2 * len(fishers)  # asked in both walks
    assert sorted(decomposed) == sorted(dense + 2 * grams)  # each F once (rows: from the rows in each walk)
    decomposed.clear(), added.clear()
    twice_weights, twice_fishers = run("twice", revisit=False)  # F decomposed in both walks, as before
    assert sorted(decomposed) == sorted(2 * dense + 2 * grams)
    assert fishers.keys() == twice_fishers.keys() and all(torch.equal(fishers[n], twice_fishers[n]) for n in fishers)
    assert weights.keys() == twice_weights.keys() and all(torch.equal(weights[k], twice_weights[k]) for k in weights)


# what each svd.fisher's zero-Fisher line says was measured: the prediction's, or each block's own output
ZERO_FISHER_WORDS = {
    "all": ("svd: 39 of 39 weighted targets have a zero output Fisher (",
            "more): the prediction does not change with their outputs on the calibration inputs (as in blocks "
            "whose modulation gates are zero)"),
    "block": ("svd: 39 of 39 weighted targets have a zero output Fisher (",
              "more): their blocks' outputs (fisher: block measures each block's own, not the prediction's) do "
              "not change with their outputs on the calibration inputs (as in blocks whose modulation gates are "
              "zero)"),
    "modulation": ("svd: 7 of 8 weighted modulation targets have a zero output Fisher "
                   "(transformer_blocks.0.norm1.linear, ",
                   "more): the prediction does not change with their outputs on the calibration inputs, or the "
                   "gradients underflowed"),
}


@pytest.mark.parametrize("fisher, allocation", [("all", "uniform"), ("block", "uniform"), ("modulation", "uniform"),
                                                 ("block", "global")])
def test_a_teacher_whose_modulation_is_zero_gets_one_zero_fisher_line(tmp_path, capsys, fisher, allocation):
    """T1's Flux teacher with every block's norm*.linear zero (its gates zero: no block output reaches
    the prediction) printed a warning per target whose output Fisher is zero (41 lines); now one line
    for the pass, counting them, whether the Fishers are the prediction's or each block's own, in words
    that say which (fisher: block's said 'the prediction' too). fisher: modulation weighs the modulation
    linears alone, whose gate rows see the block's output: their Fishers are zero where the blocks'
    output layers are (the top level's norm_out.linear is not), and no zero-gates example is given.
    allocation: global walks the blocks twice (fisher: block adds each Fisher again): each target counted once
    ('78 of 39' before R1 stop 51 #1)."""
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    model = tiny_flux()
    zeroed = ("norm1.linear", "norm1_context.linear", "norm.linear") if fisher != "modulation" else (
        "attn.to_out.0", "attn.to_add_out", "ff.net.2", "ff_context.net.2", "proj_out")
    for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
        for name, module in block.named_modules():
            if name in zeroed:
                module.weight.data.zero_(), module.bias.data.zero_()
    batches = [model_inputs(model, seed=i) for i in range(2)]
    ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="fp")
    targets = ["attention", "mlp"] if fisher != "modulation" else ["modulation"]
    cfg = SVDConfig(targets=targets, ratio=0.5, multiple=2, progress=False, fisher=fisher, allocation=allocation,
                    sensitivity=False if allocation == "global" else None)
    SVDPass(cfg).run(model, ctx)
    said = [" ".join(line.split()) for line in capsys.readouterr().err.split("warning: ") if "output Fisher" in line]
    assert len(said) == 1, said
    head, words = ZERO_FISHER_WORDS[fisher]
    assert head in said[0] and words in said[0], said
    assert fisher == "modulation" or "modulation gates" in said[0]
    assert (fisher == "block") == ("the prediction does not" not in said[0]), said
