"""svd_fisher.Roots: every weighted target's output Fisher on disk, its (L, L⁻¹) computed when
asked, only a few pairs held; the svd pass leaves no Fisher files behind and writes the weights it
wrote with every pair in memory."""

import pytest
import torch

from compress.passes.svd_fisher import Roots, sqrt_pair
from tests.conftest import tiny_flux


def _fishers(n=5, d=8):
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n):
        a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
        out[f"l{i}"] = a @ a.T  # (d, d) symmetric PSD
    return out


def test_roots_on_disk_equal_roots_in_memory_and_hold_few_pairs(tmp_path):
    fishers = _fishers()
    pair_bytes = 2 * 8 * 8 * 8  # (L, L⁻¹), 8 x 8 float64
    disk, memory = Roots(tmp_path / "f", 1e-3, keep_bytes=2 * pair_bytes), Roots(None, 1e-3, 1e12)
    for name, f in fishers.items():
        disk.add(name, f)
        memory.add(name, f)
    assert len(list((tmp_path / "f").iterdir())) == 5 and len(disk) == 5
    for name, f in fishers.items():
        want = sqrt_pair(f, 1e-3)
        for got in (disk[name], memory[name]):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert len(disk.recent) <= 2
    view = disk.only(["l1", "l3", "not a target"])
    assert set(view) == {"l1", "l3"} and len(view) == 2 and "l0" not in view and "l0" in disk
    assert view.get("l0") is None and torch.equal(view["l3"][1], sqrt_pair(fishers["l3"], 1e-3)[1])
    assert not Roots(None, 1e-3, 1.0).only([])  # an empty view is falsy (no compensation)
    disk.close()
    assert not (tmp_path / "f").exists()


def test_the_svd_pass_keeps_no_fisher_files_and_writes_the_same_weights(tmp_path, monkeypatch):
    """With every pair kept in memory (the pass before the store) and with at most one held, the
    factors are bit for bit the same; the Fisher folder is gone after the pass."""
    from compress.arch import get_adapter
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import model_inputs

    def run(keep_gb, where):
        model = tiny_flux()
        batches = [model_inputs(model, seed=i) for i in range(2)]
        ctx = RunContext(adapter=get_adapter(model), family="flux", teacher=tiny_flux(), run_dir=tmp_path / where,
                         calibration_inputs=lambda: batches, fingerprint=where)
        cfg = SVDConfig(targets=["attention", "mlp", "modulation"], ratio=0.5, multiple=2, progress=False,
                        modulation_grid=4, fisher_memory_gb=keep_gb)
        SVDPass(cfg).run(model, ctx)
        assert not (tmp_path / where / "fisher").exists()
        return model.state_dict()

    a, b = run(100.0, "all-kept"), run(1e-9, "one-kept")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pytestmark = pytest.mark.usefixtures("one_thread")
