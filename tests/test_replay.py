"""replay: forwards from a block on, with the blocks before it standing in as recorded stubs."""

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.base import predictions, relative_error
from compress.passes.svd_fisher import prediction_gradients
from compress.replay import Prefix, Replay
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

MAKERS = {"pixart": tiny_pixart, "flux": tiny_flux}
pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(model, adapter):
    return [blk for _, _, blk in adapter.iter_blocks(model)]


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_prefix_forward_equals_the_full_forward_from_every_start(family):
    model = MAKERS[family]()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    full = predictions(model, adapter, batches)
    n = len(_blocks(model, adapter))  # Flux: across the double -> single boundary too
    for start in range(n + 1):
        prefix = Prefix(model, adapter, batches, start)
        for b, batch in enumerate(batches):
            with prefix.replaying(b):
                stubs = sum(isinstance(blk, Replay) for blk in _blocks(model, adapter))
                got = adapter.predict(model, batch).double()
            assert stubs == start
            torch.testing.assert_close(got, full[b], rtol=1e-6, atol=1e-7)
        assert not any(isinstance(blk, Replay) for blk in _blocks(model, adapter))  # restored


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_prefix_runs_the_changed_blocks_and_records_once(family):
    model = MAKERS[family]()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    start = 1
    prefix = Prefix(model, adapter, batches, start)
    refs = predictions(model, adapter, batches)
    assert relative_error(model, refs, adapter, batches, prefix) < 1e-6  # records here
    calls = []
    first = _blocks(model, adapter)[0]
    first.register_forward_hook(lambda *a: calls.append(1))
    changed = _blocks(model, adapter)[start]  # a later block changes; the replay must see it
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(0.5)
    expected = relative_error(model, refs, adapter, batches)  # a plain forward: block 0 runs
    calls.clear()
    got = relative_error(model, refs, adapter, batches, prefix)
    assert expected > 1e-3
    assert got == pytest.approx(expected, rel=1e-6)
    assert calls == []  # block 0 ran neither for a second recording nor in the replayed forwards


def test_prefix_gradients_equal_the_full_backward():
    model, other = tiny_pixart(), tiny_pixart(seed=1)
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    refs = predictions(other, adapter, batches)
    names = ["transformer_blocks.1.attn1.to_q", "transformer_blocks.1.ff.net.2"]
    full = prediction_gradients(model, adapter, batches, refs, names)
    replayed = prediction_gradients(model, adapter, batches, refs, names, Prefix(model, adapter, batches, 1))
    for name in names:
        torch.testing.assert_close(replayed[name][0], full[name][0], rtol=1e-5, atol=1e-8)
        assert replayed[name][1] == full[name][1]
