"""svd_fisher.Roots: every weighted target's output Fisher on disk, its (L, L⁻¹) computed when
asked, only a few pairs held; the svd pass leaves no Fisher files behind and writes the weights it
wrote with every pair in memory. A Fisher with fewer gradient rows than outputs is kept as those
rows (FisherSum), and gives the same (L, L⁻¹) and the same factors as F itself."""

import pytest
import torch

from compress.passes.svd_fisher import FisherSum, Roots, dense_fisher, is_rows, sqrt_pair
from tests.conftest import tiny_flux


def _fishers(n=5, d=8):
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n):
        a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
        out[f"l{i}"] = a @ a.T  # (d, d) symmetric PSD
    return out


def test_roots_on_disk_equal_roots_in_memory_and_hold_few_pairs(tmp_path):
    fishers = _fishers()
    pair_bytes = 2 * 8 * 8 * 8  # (L, L⁻¹), 8 x 8 float64
    disk, memory = Roots(tmp_path / "f", 1e-3, keep_bytes=2 * pair_bytes), Roots(None, 1e-3, 1e12)
    for name, f in fishers.items():
        disk.add(name, f)
        memory.add(name, f)
    assert len(list((tmp_path / "f").iterdir())) == 5 and len(disk) == 5
    for name, f in fishers.items():
        want = sqrt_pair(f, 1e-3)
        for got in (disk[name], memory[name]):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert len(disk.recent) <= 2
    view = disk.only(["l1", "l3", "not a target"])
    assert set(view) == {"l1", "l3"} and len(view) == 2 and "l0" not in view and "l0" in disk
    assert view.get("l0") is None and torch.equal(view["l3"][1], sqrt_pair(fishers["l3"], 1e-3)[1])
    assert not Roots(None, 1e-3, 1.0).only([])  # an empty view is falsy (no compensation)
    disk.close()
    assert not (tmp_path / "f").exists()


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


def test_a_fisher_with_few_rows_is_kept_as_rows_until_it_has_as_many_as_outputs():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(4, 12, generator=g) for _ in range(4)]  # 4 rows at a time, out = 12
    acc = FisherSum()
    for k, b in enumerate(blocks[:2]):
        acc.add(b)
        assert is_rows(acc.value()) and acc.value().shape == (4 * (k + 1), 12)
    acc.add(blocks[2])  # 12 rows: as many as outputs, F from now on
    acc.add(blocks[3])
    want = sum(b.double().T @ b.double() for b in blocks)
    assert not is_rows(acc.value()) and acc.value().dtype == torch.float64
    torch.testing.assert_close(acc.value(), want, rtol=1e-12, atol=1e-12)
    assert acc.value() is dense_fisher(acc.value())


@pytest.mark.parametrize("n", [1, 5, 11])
def test_roots_from_rows_equal_roots_from_their_fisher(n):
    """L = (F + λI)^{1/2} and L⁻¹ from the n x n Gram of the rows equal those from eigh of F."""
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(n, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -3, 12, dtype=torch.float64)
    fisher = rows.T @ rows
    for damping in (1e-3, 1e-1):
        root, inv = sqrt_pair(rows, damping)
        want_root, want_inv = sqrt_pair(fisher, damping)
        torch.testing.assert_close(root, want_root, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(inv, want_inv, rtol=1e-9, atol=1e-9)
        lam = damping * float(torch.trace(fisher)) / 12
        torch.testing.assert_close(root @ root, fisher + lam * torch.eye(12, dtype=torch.float64))
        torch.testing.assert_close(root @ inv, torch.eye(12, dtype=torch.float64))
    zero_root, zero_inv = sqrt_pair(torch.zeros(3, 12), 1e-3)  # no signal: λ = 1, L = I
    assert torch.equal(zero_root, torch.eye(12, dtype=torch.float64)) and torch.equal(zero_inv, zero_root)


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
    monkeypatch.setattr(Roots, "add", lambda self, n, f: (stored.__setitem__(n, f.shape), add(self, n, f)))
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


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_checkpointed_backwards_give_the_same_fishers_and_gradients_and_keep_less(family):
    """svd.gradient_checkpointing: diffusers' block checkpointing during the prediction's Fisher and
    compensation's gradient, with every linear tapped (the hooks run again when a block is rebuilt):
    the same numbers bit for bit, and less kept for the backward."""
    from compress.arch import get_adapter
    from compress.passes.svd_fisher import checkpointed, output_fisher, prediction_gradients, tapped
    from tests.conftest import model_inputs, tiny_pixart

    model = tiny_pixart() if family == "pixart" else tiny_flux()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=s) for s in range(2)]
    names = [i.name for i in adapter.linears(model)]
    refs = [torch.randn_like(adapter.predict(model, b)) for b in batches]

    def measured():
        return (output_fisher(model, adapter, batches, names, probes=2),
                prediction_gradients(model, adapter, batches, refs, names))

    def kept():  # bytes saved for the backward of one batch, each storage once, weights left out
        seen, total = {p.untyped_storage().data_ptr() for p in model.parameters()}, [0]

        def pack(t):
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total[0] += t.untyped_storage().nbytes()
            return t
        with tapped(model, names), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            adapter.predict(model, batches[0])
        return total[0]

    (fisher, grads), plain = measured(), kept()
    with checkpointed(model):
        assert model.gradient_checkpointing
        (fisher_c, grads_c), less = measured(), kept()
    assert not model.gradient_checkpointing
    for n in names:
        assert torch.equal(fisher[n], fisher_c[n]) and torch.equal(grads[n][0], grads_c[n][0])
    assert less < 0.3 * plain, (less, plain)  # measured 0.12 (PixArt), 0.085 (Flux)


def test_block_fishers_left_by_an_interrupted_pass_are_not_read_as_prediction_fishers(tmp_path, monkeypatch):
    """Only the prediction's Fishers (fisher: all / modulation) are kept for a rerun: block Fishers
    depend on the stream each block is fed, so a fisher: block pass interrupted midway leaves none
    that a later fisher: all pass on the same model and inputs could take for its own."""
    from compress.arch import get_adapter
    from compress.passes import svd, svd_fisher
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    batches = [model_inputs(tiny_flux(), seed=i) for i in range(2)]

    def run(fisher):
        model = tiny_flux()
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path,
                         calibration_inputs=lambda: batches, fingerprint="same")
        SVDPass(SVDConfig(targets=["mlp"], ratio=0.5, multiple=2, progress=False, fisher=fisher)).run(model, ctx)

    real_block, calls = svd.block_fisher, []

    def block_then_stop(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_block(*a, **k)
    monkeypatch.setattr(svd, "block_fisher", block_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run("block")
    assert not list(tmp_path.rglob("fisher*/*.pt"))
    monkeypatch.undo()
    measured, real = [], svd_fisher.output_fisher
    monkeypatch.setattr(svd_fisher, "output_fisher", lambda *a, **k: (measured.extend(a[3]), real(*a, **k))[1])
    run("all")
    assert len(measured) == len([i for i in get_adapter(tiny_flux()).linears(tiny_flux()) if i.role == "mlp"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["pixart", "flux"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fisher_sweeps_stay_on_the_models_device(family, checkpointing):
    """The prediction's Fisher sweep (probes, backward, accumulation) with the model and inputs on
    the meta device, standing in for a GPU: a tensor made on the CPU on the way would be an error."""
    from compress.arch import get_adapter
    from compress.inputs import moved
    from compress.io import cast, load_teacher
    from compress.passes.svd_fisher import checkpointed, output_fisher
    from tests.conftest import model_inputs

    meta = torch.device("meta")
    model = cast(load_teacher(f"toy:{family}"), meta)
    adapter = get_adapter(model)
    batches = [moved(model_inputs(model, batch=2, seed=s), meta, torch.float32) for s in range(2)]
    names = [i.name for i in adapter.linears(model)]
    with checkpointed(model, checkpointing):
        fishers = output_fisher(model, adapter, batches, names, 2, seed=0)
    assert fishers.keys() == set(names) and all(f.is_meta for f in fishers.values())


def test_sweeps_measure_every_chunk_under_one_progress_bar(tmp_path):
    """svd_fisher.sweeps: one output_fisher sweep per chunk into the roots, the same Fishers as
    measuring each chunk alone; output_fisher ticks once per batch (the bar's steps)."""
    from compress.arch import get_adapter
    from compress.passes.svd_fisher import output_fisher, sweeps
    from tests.conftest import model_inputs

    model = tiny_flux()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(3)]
    names = [i.name for i in adapter.linears(model) if i.role == "mlp"][:4]
    ticks = []
    alone = output_fisher(model, adapter, batches, names[:2], 2, seed=0, tick=lambda: ticks.append(1))
    assert len(ticks) == len(batches)
    roots = Roots(tmp_path / "f", damping=1e-3, keep_bytes=2**30)
    sweeps(model, adapter, batches, [names[:2], names[2:]], 2, roots, progress=True)
    assert sorted(roots) == sorted(names)
    assert all(torch.equal(roots.store[n], alone[n]) for n in names[:2])


def test_the_sweeps_log_says_which_sweep_apart_from_the_count(tmp_path, capsys):
    """Off a terminal the sweeps' lines read 'output Fishers: sweep 1/2 2/6': two fractions in a row,
    the second of batches over all sweeps. Now the sweep is in words before the count."""
    from compress.arch import get_adapter
    from compress.passes.svd_fisher import sweeps
    from tests.conftest import model_inputs

    model = tiny_flux()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    names = [i.name for i in adapter.linears(model) if i.role == "mlp"][:2]
    sweeps(model, adapter, batches, [names[:1], names[1:]], 1, Roots(tmp_path / "f", damping=1e-3,
                                                                     keep_bytes=2**30), progress=True)
    lines = [line.rsplit(" ", 1)[0] for line in capsys.readouterr().err.splitlines() if "Fishers" in line]
    assert lines == ["output Fishers (sweep 1 of 2): 1/4", "output Fishers (sweep 1 of 2): 2/4",
                     "output Fishers (sweep 2 of 2): 3/4", "output Fishers (sweep 2 of 2): 4/4"]


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


def test_a_fisher_that_overflowed_names_its_layer():
    from compress.errors import NumericError

    f = _fishers()["l0"].clone()
    f[0, 0] = float("inf")  # a float16 backward that overflowed
    with pytest.raises(NumericError, match="layer 'transformer_blocks.1.attn1.to_q': its output Fisher"):
        Roots(None, 1e-3, 1e12).add("transformer_blocks.1.attn1.to_q", f)


def test_a_zero_fisher_is_said_naming_its_layer(capsys):
    """F = 0 (the prediction does not see the layer, or its gradients underflowed) leaves the fit
    unweighted (L = I): said, not silent."""
    roots = Roots(None, 1e-3, 1e12)
    roots.add("blocks.0.ff", torch.zeros(4, 4, dtype=torch.float64))
    assert "layer 'blocks.0.ff': its output Fisher is zero" in " ".join("".join(capsys.readouterr()).split())
    torch.testing.assert_close(roots["blocks.0.ff"][0], torch.eye(4, dtype=torch.float64))
    roots.add("blocks.1.ff", _fishers()["l0"])
    assert "Fisher is zero" not in "".join(capsys.readouterr())


def _tiny_fisher_setup():
    from compress.arch import get_adapter
    from tests.conftest import model_inputs

    model = tiny_flux()
    adapter = get_adapter(model)
    names = [i.name for i in adapter.linears(model) if i.group is not None][:6]
    return model, adapter, [model_inputs(model, seed=s) for s in range(2)], names


def test_a_sweep_keeps_no_inputs_and_no_earlier_probes_gradients(monkeypatch):
    """An output Fisher's sweep kept every target's input (nothing reads it) and held the previous
    probe's gradients while the next probe's backward ran: one copy of every target's output more."""
    import weakref

    from compress.passes import svd_fisher
    from compress.passes.svd_fisher import output_fisher, tapped

    model, adapter, batches, names = _tiny_fisher_setup()
    with tapped(model, names) as (inputs, outputs), torch.enable_grad():
        adapter.predict(model, batches[0])
    assert inputs == {} and set(outputs) == set(names)
    alive, returned = [], []
    grad = torch.autograd.grad

    def counting(*args, **kwargs):
        alive.append(sum(r() is not None for r in returned))
        grads = grad(*args, **kwargs)
        returned.extend(weakref.ref(g) for g in grads)
        return grads

    monkeypatch.setattr(svd_fisher.torch.autograd, "grad", counting)
    output_fisher(model, adapter, batches, names, probes=3)
    assert len(alive) == 6 and alive == [0] * 6  # 3 probes a batch: none of the earlier gradients held


def test_a_checkpointed_backward_does_not_tap_the_rebuilt_blocks_again():
    """diffusers' gradient checkpointing reruns each block's forward during the backward; its hooks
    tapped every target again (a zero tensor of its output no gradient reaches, held until the next
    batch). The tap the backward differentiates stays; the Fisher is the same bit for bit
    (test_checkpointed_backwards_give_the_same_fishers_and_gradients_and_keep_less)."""
    from compress.passes.svd_fisher import checkpointed, tapped

    model, adapter, batches, names = _tiny_fisher_setup()
    with checkpointed(model), tapped(model, names) as (_, outputs), torch.enable_grad():
        assert model.gradient_checkpointing
        pred = adapter.predict(model, batches[0])
        taps = dict(outputs)
        torch.autograd.grad(pred.square().sum(), [taps[n] for n in names])
        assert all(outputs[n] is taps[n] for n in names)


def test_roots_with_groups_hold_the_pairs_of_the_group_asked_for_last_only():
    fishers = _fishers(4)
    groups = {"l0": ("a", 0), "l1": ("a", 0), "l2": ("b", 1), "l3": ("b", 1)}
    roots, plain = Roots(None, 1e-3, 1e12, groups=groups), Roots(None, 1e-3, 1e12)
    for name, f in fishers.items():
        roots.add(name, f)
        plain.add(name, f)
    for name in ["l0", "l1", "l0"]:
        assert all(torch.equal(a, b) for a, b in zip(roots[name], plain[name]))
    assert set(roots.recent) == {"l0", "l1"}
    view = roots.only(["l2", "l3"])
    view["l2"]  # another group: the first one's pairs go
    assert set(roots.recent) == {"l2"} and set(plain.recent) == {"l0", "l1"}


def test_the_svd_pass_holds_one_blocks_roots_computing_each_once_with_the_same_factors(tmp_path, monkeypatch):
    """Tiny Flux with compensation (its line search asks for each pair of a stage many times): with
    `groups` (svd.py passes each target's (group, block)) the pass holds the square roots of one
    visited block's targets at a time, computes each once as with every pair kept, and writes the
    same weights bit for bit."""
    from collections import Counter

    import compress.passes.svd as svd_module
    import compress.passes.svd_fisher as svd_fisher
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    calls, held, added = Counter(), [], Counter()
    real_sqrt, real_trim, real_add = svd_fisher.sqrt_pair, Roots._trim, Roots.add
    monkeypatch.setattr(Roots, "add", lambda self, n, f: (added.update([n]), real_add(self, n, f)))
    monkeypatch.setattr(svd_fisher, "sqrt_pair", lambda f, d: (calls.update([f.shape]), real_sqrt(f, d))[1])

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

    def eigh(a, *args, **kwargs):  # F's eigendecomposition, in svd_fisher (the Grams' are svd_layer's)
        if sys._getframe(1).f_globals["__name__"] == "compress.passes.svd_fisher":
            decomposed.append(a.shape)
        return real_eigh(a, *args, **kwargs)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    monkeypatch.setattr(Roots, "__getitem__", lambda self, n: (pairs.append(n), real_getitem(self, n))[1])
    monkeypatch.setattr(Roots, "add", lambda self, n, f: (added.__setitem__(n, f.clone()), real_add(self, n, f)))

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


def test_roots_that_are_revisited_keep_each_fs_eigendecomposition_in_its_place(tmp_path):
    """Roots(revisit=True) (allocation: global) replaces a Fisher kept as F, on disk, by its
    eigendecomposition when its pair is first asked for (rows stay rows): the pairs are sqrt_pair's bit
    for bit, asked for again or read back by a rerun (an interrupted pass's folder), at any damping."""
    fishers = {**_fishers(3), "rows": torch.randn(3, 8, generator=torch.Generator().manual_seed(1))}
    roots = Roots(tmp_path / "f", 1e-3, keep_bytes=0, revisit=True)  # only the newest pair held
    for name, f in fishers.items():
        roots.add(name, f)
    for _ in range(2):
        for name, f in fishers.items():
            assert all(torch.equal(a, b) for a, b in zip(roots[name], sqrt_pair(f, 1e-3)))
    kept = {name: roots.store[name] for name in fishers}
    assert torch.equal(kept.pop("rows"), fishers["rows"]) and all(isinstance(k, tuple) for k in kept.values())
    assert len(list((tmp_path / "f").iterdir())) == len(fishers)
    rerun = Roots(tmp_path / "f", 1e-1, keep_bytes=0, reuse=True)  # another damping: the same decomposition
    assert all(torch.equal(a, b) for name, f in fishers.items() for a, b in zip(rerun[name], sqrt_pair(f, 1e-1)))
