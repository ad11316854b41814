"""compress.passes.svd_fisher's probe estimates: the output Fisher of several linears at once, and the
block Fisher against the block's exact Jacobian."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from tests.conftest import model_inputs, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_fisher_of_chained_linears_matches_one_at_a_time():
    """Probing several linears at once must not cut the graph between them."""
    from compress.passes.svd_fisher import output_fisher

    model = tiny_pixart()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=0)]
    names = ["transformer_blocks.0.attn1.to_v", "transformer_blocks.0.attn1.to_out.0",
             "transformer_blocks.1.ff.net.2"]
    together = output_fisher(model, adapter, batches, names, probes=2, seed=0)
    for name in names:
        alone = output_fisher(model, adapter, batches, [name], probes=2, seed=0)[name]
        assert alone.abs().sum() > 0
        assert torch.allclose(together[name], alone, rtol=1e-6, atol=1e-9)


def test_block_fisher_is_unbiased_for_the_blocks_own_jacobian():
    """E over probes of Σ_rows gᵀg = Σ_rows J_rᵀ J_r, J_r = ∂(block output)/∂(row r of y)."""
    from compress.passes.svd_fisher import block_fisher

    model = tiny_pixart()
    adapter = get_adapter(model)
    cal = BlockCalibration(model, adapter, [model_inputs(model, seed=0)], "teacher", progress=False)
    cal.capture()
    block, name = model.transformer_blocks[0], "transformer_blocks.0.attn1.to_v"
    (args, kwargs), = cal.inputs
    probes = 3000
    estimate = block_fisher(model, adapter, block, cal.inputs, [name], probes=probes)[name] / probes

    def out_of(z):  # the block's output with z added to the linear's output
        handle = model.get_submodule(name).register_forward_hook(lambda m, a, y: y + z)
        try:
            return adapter.run_block(block, args, kwargs)
        finally:
            handle.remove()

    with torch.no_grad():
        y_shape = torch.Size([*args[0].shape[:-1], model.get_submodule(name).out_features])
    jac = torch.autograd.functional.jacobian(out_of, torch.zeros(y_shape)).double()
    jac = jac.reshape(-1, y_shape.numel() // y_shape[-1], y_shape[-1])  # (outputs, rows, out)
    exact = torch.einsum("krd,kre->de", jac, jac)  # Σ_r J_rᵀ J_r
    assert float((estimate - exact).norm() / exact.norm()) < 0.1
