"""compress.passes.svd_fisher's probe estimates: the output Fisher of several linears at once, and the
block Fisher against the block's exact Jacobian."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.svd_helpers import two_branches

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


def _guided_jacobian_fisher(model, adapter, batch, guide, name, merged: bool) -> torch.Tensor:
    """Σ over rows of JᵀJ, J = ∂(guided prediction)/∂(row of y), y the linear's output; merged: a pair's two
    rows take one perturbation (its row of the pair's Fisher)."""
    shapes = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, y: shapes.append(y.shape))
    with torch.no_grad():
        adapter.predict(model, batch)
    handle.remove()
    y_rows, *rest = shapes[0]  # (rows, ..., out)
    pairs = torch.arange(y_rows) // 2  # interleaved: rows 2p, 2p + 1 are pair p

    def guided_of(z):  # z (rows or pairs, out) added to the linear's output
        add = z[pairs] if merged else z
        handle = model.get_submodule(name).register_forward_hook(lambda m, a, y: y + add)
        try:
            return guide.of(adapter.predict(model, batch), 0)
        finally:
            handle.remove()

    z = torch.zeros(y_rows // 2 if merged else y_rows, *rest)
    jac = torch.autograd.functional.jacobian(guided_of, z).double().reshape(-1, z.numel() // rest[-1], rest[-1])
    return torch.einsum("krd,kre->de", jac, jac)


def test_the_guided_output_fisher_is_unbiased_for_the_guided_predictions_jacobian():
    """svd.objective guided: the probes go back from each pair's guided prediction u + s (c − u). The
    modulation linear reads the timestep alone, the same in a pair's two rows, so its error d is one for the
    pair and the pair is one row, J = (1 − s) J_u + s J_c (the two rows' gradients summed); the cross-attention
    key reads the prompt, so its rows stay two."""
    from compress.guided import CalibrationGuidance, calibration_pairs
    from compress.passes.svd_fisher import dense_fisher, output_fisher

    model = tiny_pixart()
    adapter = get_adapter(model)
    batch = two_branches(model)
    guide = CalibrationGuidance(3.0, [calibration_pairs(batch)])
    probes = 2000
    names = ["adaln_single.linear", "transformer_blocks.0.attn2.to_k"]
    estimate = output_fisher(model, adapter, [batch], names, probes=probes, seed=0, guide=guide)
    for name, merged in zip(names, (True, False)):
        exact = _guided_jacobian_fisher(model, adapter, batch, guide, name, merged)
        got = dense_fisher(estimate[name]) / probes
        assert float((got - exact).norm() / exact.norm()) < 0.1, name
    rows = _guided_jacobian_fisher(model, adapter, batch, guide, names[0], merged=False)  # each row its own
    assert float((dense_fisher(estimate[names[0]]) / probes - rows).norm() / rows.norm()) > 0.2
