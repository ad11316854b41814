"""compress/passes/importance_forward.py: the resident scan's forwards are the model's own prediction,
hand each block's input and output on, and leave no hook behind. (The skip errors they make:
test_importance.py; the streamed forwards against them: test_importance_stream.py.)"""

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.importance_forward import block_cosine, clean_pass, proxy_pass, sq_norm, to_model
from tests.conftest import model_inputs, tiny_flux, tiny_pixart


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_clean_and_proxy_forwards_are_the_models_prediction_and_agree(make):
    """Both forwards give the sampler's prediction; block i + 1's input is block i's output; the
    proxy-only forward (two blocks' activations alive) scores each block as the clean one's pairs do."""
    model = make().eval()
    adapter = get_adapter(model)
    kwargs = to_model(model_inputs(model, batch=3, seed=2), model)
    blocks = [blk for _, _, blk in adapter.iter_blocks(model)]
    with torch.no_grad():
        want = adapter.sampled_prediction(model, adapter.predict(model, kwargs))
        pred, inputs, outputs = clean_pass(model, adapter, kwargs)
        light, cosines = proxy_pass(model, adapter, kwargs)
    assert torch.equal(pred, want) and torch.equal(light, want)
    assert len(inputs) == len(outputs) == len(blocks) and all(a is o for a, o in zip(inputs[1:], outputs))
    assert len(cosines) == len(blocks) and cosines[0].shape == (3,)
    assert all(torch.equal(c, block_cosine(adapter, a, o)) for c, a, o in zip(cosines, inputs, outputs))
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in blocks)


def test_sq_norm_is_each_rows_squared_norm_in_float64():
    x = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]], dtype=torch.float16)  # (2, 1, 2)
    got = sq_norm(x)
    assert got.dtype == torch.float64 and got.tolist() == [25.0, 1.0]
