"""Files of the run folder read onto the pass's device (calib_spill.NamedFiles, svd_fisher_roots.Roots): an
output Fisher measured on cuda and read back by a pass resumed on the cpu (or on another GPU) is read there.
A CPU-only torch cannot write a cuda tensor: the files are written tagged as cuda:0's (`saved_as_cuda`), as a
GPU run's torch.save tags them, which a load without a map_location restores onto cuda."""

import pytest
import torch
from torch import serialization

from compress.calib_spill import NamedFiles
from compress.calib_store import save
from compress.passes.svd_fisher_roots import Roots, sqrt_pair
from tests.passes.svd_helpers import run_svd

pytestmark = pytest.mark.usefixtures("one_thread")


def saved_as_cuda(monkeypatch, item, path):
    """torch.save of `item` to `path` with its storages' location written as 'cuda:0' (a GPU run's file)."""
    with monkeypatch.context() as m:
        as_cuda = (1, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda obj, location: None)
        m.setattr(serialization, "_package_registry", [as_cuda, *serialization._package_registry])
        save(item, path)


def test_a_fisher_file_written_on_cuda_is_torchs_cuda_error_without_a_device(tmp_path, monkeypatch):
    """What the tests below guard against: the file as written is restored onto cuda, here none."""
    if torch.cuda.is_available():
        pytest.skip("a GPU restores it")
    (tmp_path / "f").mkdir()
    saved_as_cuda(monkeypatch, torch.ones(4, 4), tmp_path / "f" / "blk.pt")
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(tmp_path / "f" / "blk.pt", weights_only=True)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_named_files_read_a_file_written_on_cuda_onto_their_device(tmp_path, monkeypatch, device):
    """R1 stop 52: NamedFiles loaded with no map_location: a Fisher measured on cuda, read by a pass resumed with
    --set device=cpu (or on a machine with no GPU), was torch's 'Attempting to deserialize object on a CUDA
    device' traceback; cuda:1 then cuda:0, another device's tensor."""
    (tmp_path / "f").mkdir()
    saved_as_cuda(monkeypatch, torch.arange(16.0).reshape(4, 4), tmp_path / "f" / "blk.pt")
    files = NamedFiles(tmp_path / "f", device)
    assert list(files) == ["blk"]
    read = files["blk"]
    assert read.device == torch.device("cpu") and torch.equal(read, torch.arange(16.0).reshape(4, 4))


def test_roots_read_the_fishers_an_interrupted_cuda_pass_left_onto_their_device(tmp_path, monkeypatch):
    f = torch.eye(4, dtype=torch.float64) * 2
    (tmp_path / "f").mkdir()
    saved_as_cuda(monkeypatch, f, tmp_path / "f" / "l0.pt")
    kept = Roots(tmp_path / "f", 1e-3, 1e9, reuse=True, device=torch.device("cpu"))
    assert list(kept) == ["l0"] and torch.equal(kept["l0"][0], sqrt_pair(f, 1e-3)[0])


def test_an_svd_pass_resumed_on_the_cpu_reads_the_fishers_measured_on_cuda(tmp_path, monkeypatch):
    """The pass gives Roots its device: a pass interrupted after measuring its prediction Fishers on cuda, resumed
    on the cpu, reads them (its run fingerprint does not hold the device) and writes what an uninterrupted
    run writes."""
    from compress.passes.svd import SVDPass

    whole = run_svd("pixart", tmp_path / "whole")[0].state_dict()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(SVDPass, "_compress", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_svd("pixart", tmp_path / "run")
    left = sorted((tmp_path / "run").rglob("fisher-*/*.pt"))
    assert left
    for path in left:  # as a GPU run leaves them
        saved_as_cuda(monkeypatch, torch.load(path, weights_only=True), path)
    measured = []
    with monkeypatch.context() as m:
        m.setattr(Roots, "add", lambda self, name, *a, **k: measured.append(name))
        resumed = run_svd("pixart", tmp_path / "run")[0].state_dict()
    assert measured == []  # each read back, none measured again
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not list((tmp_path / "run").rglob("fisher-*/*.pt"))
