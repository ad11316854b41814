"""LowRankLinear as a user meets it in Python: its docstring, and `.weight`, the dense product for reading."""

import pytest
import torch
from torch import nn

from compress.lowrank import LowRankLinear


def _layer() -> LowRankLinear:
    torch.manual_seed(0)
    return LowRankLinear.from_factors(torch.randn(5, 2), torch.randn(2, 4), torch.randn(5))


def test_its_docstring_is_its_own_and_says_how_to_edit_it():
    """help(LowRankLinear) showed nn.Module's docstring ('Base class for all neural network modules')."""
    doc = " ".join(LowRankLinear.__doc__.split())
    assert "Base class" not in doc and ".down" in doc and ".up" in doc and "for reading only" in doc


def test_weight_is_the_dense_product_for_reading_and_forward_is_unchanged():
    """.weight had requires_grad=True (a product in the autograd graph), so an in-place edit looked like
    editing the layer and silently changed nothing."""
    layer, x = _layer(), torch.randn(3, 4)
    assert torch.equal(layer.weight, layer.up.weight @ layer.down.weight)
    assert not layer.weight.requires_grad and layer.weight.grad_fn is None
    assert torch.equal(layer(x), layer.up(layer.down(x)))
    layer(x).sum().backward()  # the factors still train
    assert layer.up.weight.grad is not None and layer.down.weight.grad is not None


@pytest.mark.parametrize("value", [nn.Parameter(torch.zeros(5, 4)), torch.zeros(5, 4)])
def test_assigning_weight_is_refused_in_words(value):
    """`l.weight = nn.Parameter(...)` raised nn.Module's KeyError "attribute 'weight' already exists"."""
    layer = _layer()
    with pytest.raises(AttributeError, match=r"^LowRankLinear\.weight is the dense product up\.weight @ down\.weight, "
                                             r"for reading; set \.up\.weight \[out, rank\] and \.down\.weight"):
        layer.weight = value
    layer.up.weight = nn.Parameter(torch.ones(5, 2))  # its factors are set as any linear's
    assert torch.equal(layer.weight, torch.ones(5, 2) @ layer.down.weight)
