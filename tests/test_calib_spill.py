"""The calibration's stores on disk (compress/calib_spill.py): spilled activations (`Spilled`, `SpilledMap`)
and named files kept for a rerun (`NamedFiles`, and svd_fisher_roots.Roots built on them)."""

import pytest
import torch

from compress.calib_spill import Spilled
from tests.test_calib_store import overwrite


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
    from compress.calib_spill import NamedFiles

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
    again.clear()  # another object's clear: this one still knows what it wrote, now gone
    assert not (tmp_path / "f").exists() and list(again) == [] and len(store) == 2


def test_roots_keep_fishers_for_a_rerun_only_when_asked(tmp_path):
    from compress.passes.svd_fisher_roots import Roots, sqrt_pair

    f = torch.eye(4, dtype=torch.float64) * 2
    first = Roots(tmp_path / "f", 1e-3, 1e9, reuse=True)
    first.add("l0", f)
    first.close(keep=True)  # interrupted
    kept = Roots(tmp_path / "f", 1e-3, 1e9, reuse=True)
    assert list(kept) == ["l0"] and torch.equal(kept["l0"][0], sqrt_pair(f, 1e-3)[0])
    assert list(Roots(tmp_path / "f", 1e-3, 1e9)) == []  # not reusable: cleared on open
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("holder", ["Spilled", "SpilledMap"])
def test_a_ctrl_c_leaves_no_spill_files_while_its_traceback_lives(tmp_path, holder):
    """The files went only with the object, which a Ctrl-C's traceback (kept by the CLI's note and
    exit) keeps alive: an interrupted svd pass left sensitivity/<pid>-*.pt behind. In a `with` they
    go at once; a live process's files in the folder are not touched."""
    import os

    from compress import calib_spill

    live = tmp_path / f"{os.getppid()}-0-0.pt"  # the parent of pytest runs
    live.write_bytes(b"live")
    with pytest.raises(KeyboardInterrupt) as caught:
        with getattr(calib_spill, holder)(tmp_path) as store:
            for i in range(3):
                if holder == "Spilled":
                    store.append(torch.full((2,), float(i)))
                else:
                    store[f"layer{i}"] = torch.full((2,), float(i))
            assert len(list(tmp_path.glob(f"{os.getpid()}-*.pt"))) == 3
            raise KeyboardInterrupt
    assert caught.value.__traceback__ is not None and len(store) == 0  # still referenced, yet empty
    assert sorted(tmp_path.iterdir()) == [live] and live.read_bytes() == b"live"


def test_named_files_know_what_they_wrote_and_a_file_gone_is_named_not_left_out(tmp_path):
    """The store listed the disk: a run folder deleted during a run (rm -rf) left it empty, so the
    output Fishers measured were silently not used (compensation skipped, another model, rc 0), or
    a KeyError traceback. It knows its names in memory; reading one whose file is gone, or writing
    after its folder went, is one line naming the file or folder."""
    import re
    import shutil

    from compress.calib_spill import NamedFiles
    from compress.calib_store import Vanished

    store = NamedFiles(tmp_path / "run" / "f")
    store["a.b"] = torch.ones(2)
    store["c.d"] = torch.zeros(2)
    (tmp_path / "run" / "f" / "c.d.pt").unlink()
    assert list(store) == ["a.b", "c.d"] and "c.d" in store and len(store) == 2
    words = "the run folder's file {} vanished during the run (removed by another program?)"
    with pytest.raises(Vanished, match="^" + re.escape(words.format(tmp_path / "run" / "f" / "c.d.pt")) + "$"):
        store["c.d"]
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(Vanished, match=re.escape(words.replace("file", "folder").format(tmp_path / "run" / "f"))):
        store["e.f"] = torch.ones(2)  # not a new folder quietly missing a.b
    assert not (tmp_path / "run").exists()


def test_roots_whose_fisher_files_went_say_so_instead_of_dropping_the_targets(tmp_path):
    """Roots iterated and tested names on the disk: with the folder gone, `only` kept no target and
    a pair asked for was a KeyError. Now every target measured stays; its pair is a Vanished error."""
    import shutil

    from compress.calib_store import Vanished
    from compress.passes.svd_fisher_roots import Roots

    roots = Roots(tmp_path / "f", 1e-3, 1e9)
    for name in ("l0", "l1"):
        roots.add(name, torch.eye(3, dtype=torch.float64))
    shutil.rmtree(tmp_path / "f")
    view = roots.only(["l1", "l2"])
    assert list(roots) == ["l0", "l1"] and list(view) == ["l1"] and "l1" in view
    with pytest.raises(Vanished, match=r"l1\.pt vanished during the run"):
        view["l1"]


def test_named_files_leave_a_damaged_file_out_to_be_measured_again(tmp_path, capsys):
    """An output Fisher an interrupted run left (RUN/calib/.../fisher-Nprobes/<name>.pt) cut short or
    overwritten was a traceback in --resume (torch.load of it: 'PytorchStreamReader failed reading zip archive',
    'Invalid argument'); now it is left out of the names (no zip archive as torch.save writes), measured again
    and written over it, said in one note as the names are first asked for (not where clear() comes first)."""
    from compress.calib_spill import NamedFiles

    folder = tmp_path / "fisher-4probes"
    files = NamedFiles(folder)
    for name in ("a", "b", "c"):
        files[name] = torch.full((2, 2), float(ord(name)))
    whole = (folder / "a.pt").read_bytes()
    (folder / "a.pt").write_bytes(whole[:len(whole) // 2])
    (folder / "b.pt").write_bytes(b"not a torch file")
    capsys.readouterr()
    again = NamedFiles(folder)
    assert capsys.readouterr().err == ""
    assert "a" not in again and list(again) == ["c"] and len(again) == 1 and again["c"][0, 0] == ord("c")
    said = " ".join(capsys.readouterr().err.split())
    assert said == (f"note: the run folder's file {folder / 'a.pt'} is damaged (not as torch.save wrote it: cut short "
                    "or overwritten since?): measured again, as is any other damaged file in its folder"), said
    again["a"], again["b"] = torch.zeros(2, 2), torch.ones(2, 2)  # measured again: written over them
    assert sorted(NamedFiles(folder)) == ["a", "b", "c"] and capsys.readouterr().err == ""
    (folder / "a.pt").write_bytes(b"")
    NamedFiles(folder).clear()  # a pass that does not reuse them: nothing said
    assert capsys.readouterr().err == "" and not folder.exists()


@pytest.mark.parametrize("offset, hexed", [(1896, "bf88465f03aded29"), (485, "96ebe645a4364f6e"),
                                           (19, "e20cfeb822737b36"), (442, "2e00b69a702c2f04")])
def test_named_files_leave_an_overwritten_file_out_though_its_zip_end_is_whole(tmp_path, capsys, offset, hexed):
    """An output Fisher overwritten in place kept its zip end record, so zipfile.is_zipfile passed it, and
    NamedFiles[name] then raised (UnicodeDecodeError, ValueError, IndexError: 117 of 300 random 8-byte
    overwrites): now it is left out as it is read back (its tensors mapped, not read), with the note: measured
    again."""
    from compress.calib_spill import NamedFiles

    folder = tmp_path / "fisher"
    folder.mkdir()
    torch.save(torch.zeros(16, 16), folder / "a.pt")
    torch.save(torch.ones(2), folder / "b.pt")
    overwrite(folder / "a.pt", offset, hexed)
    files = NamedFiles(folder)
    assert list(files) == ["b"] and torch.equal(files["b"], torch.ones(2))
    assert f"{folder / 'a.pt'} is damaged (not as torch.save wrote it" in capsys.readouterr().err


def test_named_files_say_a_file_whose_tensor_bytes_are_damaged_in_one_line_and_remove_it(tmp_path):
    """An overwrite where only a full read meets it (data/0's zip header: the names' check maps the tensors,
    reads none) raised torch's RuntimeError 'PytorchStreamReader failed reading file data/0' as a traceback;
    now a one-line error naming the file, removed so the next run measures it again."""
    from compress.calib_spill import NamedFiles
    from compress.errors import UserError

    folder = tmp_path / "fisher"
    folder.mkdir()
    torch.save(torch.zeros(16, 16), folder / "a.pt")
    overwrite(folder / "a.pt", 534, "2bc58dc16429996d")
    files = NamedFiles(folder)
    assert "a" in files
    with pytest.raises(UserError, match=f"file {folder / 'a.pt'} is damaged .*: removed, to be measured again"):
        files["a"]
    assert "a" not in files and not (folder / "a.pt").exists()


@pytest.mark.parametrize("error", [RuntimeError("an error of torch's, not of the file"), ValueError("a bug's"),
                                   KeyError("a mocked loader's")], ids=lambda e: type(e).__name__)
def test_a_whole_file_whose_read_raises_another_error_is_kept_and_the_error_raised(tmp_path, monkeypatch, error):
    """An error reading a cache file whose bytes are as torch.save wrote them (its zip's CRC-32s check) is no
    damage: NamedFiles[name] deleted a good output Fisher on any error but an OSError, MemoryError or out of
    memory, and load_cached took the file for damaged (computed again, the error hidden); now the error is
    raised as it is and the file kept."""
    from compress.calib_spill import NamedFiles
    from compress.calib_store import load_cached

    folder = tmp_path / "fisher"
    files = NamedFiles(folder)
    files["a"] = torch.ones(2)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(error))
    with pytest.raises(type(error)):
        files["a"]
    with pytest.raises(type(error)):
        load_cached(folder / "a.pt", "computed again")
    monkeypatch.undo()
    assert "a" in files and torch.equal(files["a"], torch.ones(2))


@pytest.mark.parametrize("error", [RuntimeError("unable to mmap 1472 bytes from file <F>: No such device (19)"),
                                   OSError(19, "No such device"), ValueError("mmap length is greater than file size")],
                         ids=lambda e: type(e).__name__)
def test_named_files_read_their_files_where_the_file_system_cannot_map_them(tmp_path, monkeypatch, error):
    """NamedFiles checks the files an earlier run left with a mapped load (torch.load(mmap=True): a Fisher's
    tensors are not read); on a file system that cannot map (some FUSE and network mounts) the map's error
    judged every file damaged ('is damaged (not as torch.save wrote it', measured again) or, an OSError, was a
    traceback; now such a file is read instead, and one damaged is still left out."""
    from compress.calib_spill import NamedFiles

    folder = tmp_path / "fisher"
    folder.mkdir()
    for name in ("a", "b"):
        torch.save(torch.full((4, 4), float(ord(name))), folder / f"{name}.pt")
    (folder / "c.pt").write_bytes((folder / "a.pt").read_bytes()[:100])
    monkeypatch.setattr(torch.UntypedStorage, "from_file", lambda *a, **k: (_ for _ in ()).throw(error))
    with pytest.raises(type(error)):
        torch.load(folder / "a.pt", weights_only=True, mmap=True)  # (the map is what failed)
    files = NamedFiles(folder)
    assert list(files) == ["a", "b"] and files["b"][0, 0] == ord("b")
