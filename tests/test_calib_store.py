"""Spilled activations and block loaders (compress/calib_store.py)."""

import torch

from compress.calib_store import Spilled


def test_spilled_holds_batches_on_disk_until_dropped(tmp_path):
    store = Spilled(tmp_path)
    items = [((torch.randn(2, 3),), {"temb": torch.randn(2, 4), "rope": (torch.ones(1), torch.zeros(1)),
                                     "mask": None}) for _ in range(3)]
    for item in items:
        store.append(item)
    assert len(store) == 3 and len(list(tmp_path.iterdir())) == 3
    for (args, kw), (want_args, want_kw) in zip(store, items):
        assert torch.equal(args[0], want_args[0]) and torch.equal(kw["temb"], want_kw["temb"])
        assert kw["mask"] is None and torch.equal(kw["rope"][1], want_kw["rope"][1])
    assert torch.equal(store[1][0][0], items[1][0][0])
    del store
    assert not any(tmp_path.iterdir())
