"""calib_flow: which of a block's stages read what its other stages' linears make, read off autograd on one
row (a hand-made block with a linear called twice; the real Flux double block, float32 and bfloat16)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from compress.calib_flow import dependencies, first_row
from tests.conftest import model_inputs, tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


class _Twice(nn.Module):
    """p, a, c: a reads p's output, then a again on c's output (c reads the block's second input);
    `d` never runs."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.p, self.a, self.c, self.d = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, u):  # (B, N, dim) each
        return self.a(self.p(x)) + self.a(self.c(u))


class _Plain:
    """What `dependencies` asks of an adapter: run a block, name its residual stream."""

    def run_block(self, block, args, kwargs):
        return block(*args, **kwargs)

    def hidden_of(self, args, kwargs):
        return [args[0]]


def _twice(readers, linears, dtype=torch.float32):
    block = _Twice().requires_grad_(False).to(dtype)  # the runner's models hold no grads
    x, u = torch.randn(1, 3, 4, dtype=dtype), torch.randn(1, 3, 4, dtype=dtype)
    return dependencies(block, _Plain(), block, (x, u), {}, readers, linears)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dependencies_follow_every_call_of_a_reader(dtype):
    """Stages p, a, c (firing order): a's second call reads c's output, so a depends on p and on the
    later c; p and c read the block's inputs only. Frozen weights, and in bfloat16 too."""
    deps = _twice(["p", "a", "c"], [["p"], ["a"], ["c"]], dtype)
    assert deps == [set(), {0, 2}, set()]


def test_dependencies_are_none_where_a_stage_did_not_run():
    assert _twice(["p", "a", "d"], [["p"], ["a"], ["d"]]) is None  # d's reader never runs
    assert _twice(["p", "a"], [["p"], ["a", "d"]]) is None  # nor does one of a's linears
    assert _twice([None, "a"], [["p"], ["a"]]) == [set(), {0}]  # a stage of model-wide inputs only


def _double_block_inputs(dtype):
    model = tiny_flux().to(dtype)
    cal = BlockCalibration(model, get_adapter(model), [model_inputs(model)], progress=False)
    batch = cal.batches[0]
    cal.batches = [{k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in batch.items()}]
    cal.capture()
    return model, cal


FLUX_STAGES = [  # reader, linears of each stage of a double block, in firing order
    ("attn.to_q", ["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("attn.add_q_proj", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("attn.to_out.0", ["attn.to_out.0"]),
    ("attn.to_add_out", ["attn.to_add_out"]),
    ("ff.net.0.proj", ["ff.net.0.proj"]),
    ("ff.net.2", ["ff.net.2"]),
    ("ff_context.net.0.proj", ["ff_context.net.0.proj"]),
    ("ff_context.net.2", ["ff_context.net.2"]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flux_double_block_streams_meet_in_the_joint_attention(dtype):
    """Image q/k/v and text q/k/v read the block's inputs; both attention outputs read both (joint
    attention); each stream's FFN reads only its own stream's attention output."""
    model, cal = _double_block_inputs(dtype)
    bs = next(cal.blocks(lambda g, i: []))
    prefix = "transformer_blocks.0."
    deps = cal.dependencies(bs.block, [prefix + r for r, _ in FLUX_STAGES],
                            [[prefix + n for n in names] for _, names in FLUX_STAGES])
    assert deps == [set(), set(), {0, 1}, {0, 1}, {0, 1, 2}, {0, 1, 2, 4}, {0, 1, 3}, {0, 1, 3, 6}]


def test_first_row_takes_the_first_sample_of_batched_inputs_only():
    model = tiny_flux()
    cal = BlockCalibration(model, get_adapter(model), [model_inputs(model)], progress=False)
    cal.capture()
    args, kwargs = cal.inputs[0]  # (B=2, ...) hidden states, temb; the rotary tuple is per token
    _, row = first_row(2, args, kwargs)
    assert row["hidden_states"].shape[0] == row["encoder_hidden_states"].shape[0] == row["temb"].shape[0] == 1
    torch.testing.assert_close(row["hidden_states"], kwargs["hidden_states"][:1])
    assert row["image_rotary_emb"] is kwargs["image_rotary_emb"]
    assert first_row(1, args, kwargs) == (args, kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_probe_memory_estimate_is_what_autograd_keeps(dtype):
    """calib_footprint.probe_bytes (the streamed run's memory check under within-block sequential
    calibration) against the bytes autograd saves in the probe of a double block wide enough that
    per-token activations dominate (width 256, 64 + 8 tokens), parameters not counted: within 2×
    (measured 1.19× float32, 1.42× bfloat16 above the estimate: float32 norms and rotary terms)."""
    from compress.calib_footprint import block_copies, probe_bytes
    from compress.recipe import parse_recipe

    model = tiny_flux(num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=4,
                      axes_dims_rope=(16, 24, 24)).to(dtype)
    cal = BlockCalibration(model, get_adapter(model), [model_inputs(model, side=8, text=8, batch=1)],
                           progress=False)
    cal.batches = [{k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in cal.batches[0].items()}]
    cal.capture()
    bs = next(cal.blocks(lambda g, i: []))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}  # storage -> bytes

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    prefix = "transformer_blocks.0."
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cal.dependencies(bs.block, [prefix + r for r, _ in FLUX_STAGES],
                         [[prefix + n for n in names] for _, names in FLUX_STAGES])
    recipe = parse_recipe("model: flux\nteacher: toy:flux\npasses:\n  - svd: {fisher: none}\n", "r.yaml")
    estimate = probe_bytes(block_copies(recipe), 64 + 8, 0, 256, dtype.itemsize)
    assert estimate / 2 < sum(saved.values()) < estimate * 2
    block_level = parse_recipe("model: flux\nteacher: toy:flux\npasses:\n  - svd: {}\n", "r.yaml")
    assert probe_bytes(block_copies(block_level), 64 + 8, 0, 256, dtype.itemsize) == 0  # no probe
