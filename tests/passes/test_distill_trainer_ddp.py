"""The distill pass's DDP settings under several processes (compress/distill_utils.py
`accelerator_for`, which distill_trainer uses): DDP need not look for parameters a step's loss left out."""

from __future__ import annotations

import pytest
import torch

from compress.distill_utils import accelerator_for, select_trainable
from compress.passes.distill import DistillConfig
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.distill_helpers import factorize


def _first_tensor(out):
    return out if torch.is_tensor(out) else next(t for t in out if torch.is_tensor(t))


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
@pytest.mark.parametrize("train", ["all", "factors", "non_factors"])
def test_ddp_does_not_look_for_unused_parameters_as_every_loss_reaches_them_all(make, train):
    """Every multi-process distill printed torch's long 'find_unused_parameters=True ... did not find
    any unused parameters' warning on each rank (and DDP searched the graph each step). The trainer's
    loss is lambda_task * task + lambda_out * out + lambda_feat * feat with the task term always
    computed from the student's output: even with lambda_task = lambda_out = 0 (the feature loss
    alone, on a block's output) every trainable parameter gets a gradient, so DDP never must look."""
    student = factorize(make()).train()
    params = select_trainable(student, train)
    seen = []
    hook = student.transformer_blocks[0].register_forward_hook(lambda m, a, o: seen.append(_first_tensor(o)))
    out = student(**model_inputs(student), return_dict=False)[0]
    hook.remove()
    task, feat = out.float().pow(2).mean(), seen[0].float().pow(2).mean()
    feat.backward(retain_graph=True)  # the feature loss alone leaves some out (the output's projection, at least)
    assert params and any(p.grad is None for p in params)
    student.zero_grad(set_to_none=True)
    (0.0 * task + 0.1 * feat).backward()  # as _train_step builds it with lambda_task = lambda_out = 0
    assert all(p.grad is not None for p in params)
    cpu = torch.device("cpu")
    for cfg in (DistillConfig(), DistillConfig(lambda_task=0, lambda_out=0, lambda_feat=0.1)):
        assert accelerator_for(cfg, cpu).ddp_handler.find_unused_parameters is False
