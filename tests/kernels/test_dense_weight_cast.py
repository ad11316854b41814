"""Under autocast, lowrank_linear casts dense_weight (N, K), a copy the size of the dense layer, only
for the dense path: every call copied it whichever path ran."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from compress.kernels import lowrank_linear


class _Copies(TorchDispatchMode):
    """The shapes of the tensors cast (aten._to_copy) while active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["torch", None, "dense"])
def test_dense_weight_is_cast_only_for_the_dense_path(path):
    g = torch.Generator().manual_seed(0)
    x, down, up = torch.randn(4, 24, generator=g), torch.randn(3, 24, generator=g), torch.randn(40, 3, generator=g)
    dense = up @ down  # (40, 24): no other tensor has its shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lowrank_linear(x, down, up, path=path)
        with _Copies() as copies:
            y = lowrank_linear(x, down, up, path=path, dense_weight=dense)
    assert y.dtype == torch.bfloat16 and (y.float() - want.float()).abs().max() <= 0.05 * want.float().abs().max()
    assert copies.shapes.count((40, 24)) == (1 if path == "dense" else 0)


def test_a_dense_weight_autocast_casts_still_passes_the_check():
    """dense_weight in another floating dtype than up is fine where autocast casts both to one."""
    g = torch.Generator().manual_seed(0)
    x, down, up = torch.randn(4, 24, generator=g), torch.randn(3, 24, generator=g), torch.randn(40, 3, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lowrank_linear(x, down, up, path="dense", dense_weight=(up @ down).half())
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dense_weight must be up @ down"):
        lowrank_linear(x, down, up, path="dense", dense_weight=(up @ down).half())  # no autocast: a mismatch
