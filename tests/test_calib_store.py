"""Spilled activations and block loaders (compress/calib_store.py)."""

import pytest
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


def test_spill_files_of_a_process_killed_hard_go_at_the_next_spill(tmp_path):
    """A run killed by the OOM killer leaves its spill files (no __del__ runs): the next process to
    spill in the folder deletes them, and never those of a process still running."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / f"{dead}-0-0.pt").write_bytes(b"stale")  # (a pid not reused in the meantime)
    (tmp_path / f"{os.getppid()}-0-0.pt").write_bytes(b"live")  # the parent of pytest runs
    store = Spilled(tmp_path)
    store.append(torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{os.getppid()}-0-0.pt", store.paths[0].name])


def test_named_files_round_trip_and_outlive_the_object_until_cleared(tmp_path):
    from compress.calib_store import NamedFiles

    store = NamedFiles(tmp_path / "f")
    assert list(store) == [] and "a.b" not in store and len(store) == 0
    store["transformer_blocks.0.norm1.linear"] = torch.arange(6.0).reshape(2, 3)
    store["norm_out.linear"] = torch.ones(3, dtype=torch.float64)
    again = NamedFiles(tmp_path / "f")  # a later run
    assert list(again) == ["norm_out.linear", "transformer_blocks.0.norm1.linear"] and len(again) == 2
    assert torch.equal(again["transformer_blocks.0.norm1.linear"], torch.arange(6.0).reshape(2, 3))
    assert again["norm_out.linear"].dtype == torch.float64
    assert not list((tmp_path / "f").glob("*.tmp"))
    with pytest.raises(KeyError):
        again["missing"]
    again.clear()
    assert not (tmp_path / "f").exists() and list(store) == []


def test_roots_keep_fishers_for_a_rerun_only_when_asked(tmp_path):
    from compress.passes.svd_fisher import Roots, sqrt_pair

    f = torch.eye(4, dtype=torch.float64) * 2
    first = Roots(tmp_path / "f", 1e-3, 1e9, reuse=True)
    first.add("l0", f)
    first.close(keep=True)  # interrupted
    kept = Roots(tmp_path / "f", 1e-3, 1e9, reuse=True)
    assert list(kept) == ["l0"] and torch.equal(kept["l0"][0], sqrt_pair(f, 1e-3)[0])
    assert list(Roots(tmp_path / "f", 1e-3, 1e9)) == []  # not reusable: cleared on open
    assert not (tmp_path / "f").exists()


def _half_written(monkeypatch, free: int):
    """torch.save writes some bytes, then fails as torch's zip writer does on a full disk; the disk
    has `free` bytes left."""
    import collections
    import shutil

    from compress import calib_store

    def full(item, path):
        path.write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(calib_store.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(1 << 30, (1 << 30) - free, free))


def test_a_save_on_a_full_disk_is_an_enospc_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    """torch's zip writer says only 'unexpected pos' on a full disk: that was a traceback, and its
    .tmp file (partly written) stayed; now an OSError(ENOSPC) naming the file, the .tmp gone."""
    import errno

    from compress.calib_store import save

    _half_written(monkeypatch, free=4096)
    with pytest.raises(OSError) as e:
        save({"a": torch.ones(3)}, tmp_path / "blocks-x.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "blocks-x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_with_room_on_the_disk_keeps_its_own_error(tmp_path, monkeypatch):
    """Another failure of torch.save (the disk not full) is not said to be a full disk."""
    from compress.calib_store import Spilled, save

    _half_written(monkeypatch, free=1 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save({"a": torch.ones(3)}, tmp_path / "blocks-x.pt")
    with pytest.raises(RuntimeError, match="unexpected pos"):
        Spilled(tmp_path / "spill").append(torch.ones(3))  # not atomic: its half file goes too
    assert [p.name for p in tmp_path.rglob("*")] == ["spill"]


@pytest.mark.parametrize("holder", ["Spilled", "SpilledMap"])
def test_a_ctrl_c_leaves_no_spill_files_while_its_traceback_lives(tmp_path, holder):
    """The files went only with the object, which a Ctrl-C's traceback (kept by the CLI's note and
    exit) keeps alive: an interrupted svd pass left sensitivity/<pid>-*.pt behind. In a `with` they
    go at once; a live process's files in the folder are not touched."""
    import os

    from compress import calib_store

    live = tmp_path / f"{os.getppid()}-0-0.pt"  # the parent of pytest runs
    live.write_bytes(b"live")
    with pytest.raises(KeyboardInterrupt) as caught:
        with getattr(calib_store, holder)(tmp_path) as store:
            for i in range(3):
                if holder == "Spilled":
                    store.append(torch.full((2,), float(i)))
                else:
                    store[f"layer{i}"] = torch.full((2,), float(i))
            assert len(list(tmp_path.glob(f"{os.getpid()}-*.pt"))) == 3
            raise KeyboardInterrupt
    assert caught.value.__traceback__ is not None and len(store) == 0  # still referenced, yet empty
    assert sorted(tmp_path.iterdir()) == [live] and live.read_bytes() == b"live"
