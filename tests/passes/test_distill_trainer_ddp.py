"""The distill pass's DDP settings under several processes (compress/distill_utils.py
`accelerator_for`, which distill_trainer uses): it looks for trainable parameters a step's loss left out only where some can be."""

from __future__ import annotations

import pytest
import torch

from compress.distill_utils import select_trainable
from compress.passes.distill import DistillConfig
from compress.distill_utils import accelerator_for
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.distill_helpers import factorize


def _first_tensor(out):
    return out if torch.is_tensor(out) else next(t for t in out if torch.is_tensor(t))


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
@pytest.mark.parametrize("train", ["all", "factors", "non_factors"])
def test_ddp_looks_for_unused_parameters_only_where_the_feature_loss_alone_trains(make, train):
    """Every multi-process distill printed torch's long 'find_unused_parameters=True ... did not find
    any unused parameters' warning on each rank (and DDP searched the graph each step): the task
    and output losses reach each trainable parameter through the student's output. The feature loss
    alone does not reach the layers after the last mapped block: there DDP must look."""
    student = factorize(make()).train()
    params = select_trainable(student, train)
    out = student(**model_inputs(student), return_dict=False)[0]
    out.float().pow(2).mean().backward()  # a loss on the output, as the task and output losses
    assert params and all(p.grad is not None for p in params)
    cpu = torch.device("cpu")
    assert accelerator_for(DistillConfig(), cpu).ddp_handler.find_unused_parameters is False
    assert accelerator_for(DistillConfig(lambda_task=0, lambda_feat=0), cpu).ddp_handler.find_unused_parameters is False

    student.zero_grad(set_to_none=True)
    seen = []
    hook = student.transformer_blocks[0].register_forward_hook(lambda m, a, o: seen.append(_first_tensor(o)))
    student(**model_inputs(student), return_dict=False)
    hook.remove()
    seen[0].float().pow(2).mean().backward()  # a loss on a block's output alone, as the feature loss
    assert any(p.grad is None for p in params)  # (the output's projection, at least)
    features_only = DistillConfig(lambda_task=0, lambda_out=0, lambda_feat=0.1)
    assert accelerator_for(features_only, cpu).ddp_handler.find_unused_parameters is True
