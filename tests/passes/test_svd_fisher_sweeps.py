"""svd_fisher's sweeps (output_fisher, tapped, checkpointed, sweeps): checkpointed backwards give the
same Fishers keeping less, on the model's device, every chunk under one progress bar, no inputs nor
earlier probes' gradients kept, no block tapped twice."""

import pytest
import torch

from compress.passes.svd_fisher_roots import Roots
from tests.conftest import tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


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
