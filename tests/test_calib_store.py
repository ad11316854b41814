"""The run folder's torch.save files written whole and read back (compress/calib_store.py): a full disk,
the file-size limit, a folder gone, a damaged cache file computed again. The stores built on them
(compress/calib_spill.py) are tested in tests/test_calib_spill.py."""

import pytest
import torch


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


@pytest.mark.parametrize("limit", [100, 101])
def test_a_save_that_reaches_the_file_size_limit_is_an_efbig_naming_the_file(tmp_path, monkeypatch, limit):
    """ulimit -f (RLIMIT_FSIZE): torch's zip writer says 'unexpected pos' as on a full disk, but with room
    on the disk that stayed a traceback; now an OSError(EFBIG) naming the file (the run's one-line
    'the file is larger than ... the file-size limit allows'), where the half file reached the limit."""
    import errno

    from compress import calib_store

    _half_written(monkeypatch, free=1 << 30)  # 100 bytes written
    monkeypatch.setattr(calib_store, "file_size_limit", lambda: limit)
    with pytest.raises(OSError if limit == 100 else RuntimeError) as e:
        calib_store.save({"a": torch.ones(3)}, tmp_path / "blocks-x.pt")
    if limit == 100:
        assert e.value.errno == errno.EFBIG and e.value.filename == str(tmp_path / "blocks-x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_with_room_on_the_disk_keeps_its_own_error(tmp_path, monkeypatch):
    """Another failure of torch.save (the disk not full) is not said to be a full disk."""
    from compress.calib_spill import Spilled
    from compress.calib_store import save

    _half_written(monkeypatch, free=1 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save({"a": torch.ones(3)}, tmp_path / "blocks-x.pt")
    with pytest.raises(RuntimeError, match="unexpected pos"):
        Spilled(tmp_path / "spill").append(torch.ones(3))  # not atomic: its half file goes too
    assert [p.name for p in tmp_path.rglob("*")] == ["spill"]


def test_a_save_whose_folder_goes_before_the_rename_names_it(tmp_path, monkeypatch):
    """The folder removed between the write and the rename was a FileNotFoundError traceback ('... .tmp
    -> ... .pt'); a spill into a folder gone, torch's 'Parent directory ... does not exist'."""
    import shutil

    from compress import calib_store
    from compress.calib_spill import Spilled
    from compress.calib_store import Vanished, save

    real = calib_store.torch.save

    def then_gone(item, path):
        real(item, path)
        shutil.rmtree(path.parent)

    monkeypatch.setattr(calib_store.torch, "save", then_gone)
    with pytest.raises(Vanished, match=f"folder {tmp_path / 'f'} vanished"):
        (tmp_path / "f").mkdir()
        save(torch.ones(2), tmp_path / "f" / "x.pt")
    monkeypatch.setattr(calib_store.torch, "save", real)
    spill = Spilled(tmp_path / "spill")
    spill.append(torch.ones(2))
    spill.paths[0].unlink()
    with pytest.raises(Vanished, match=f"file {spill.paths[0]} vanished"):
        spill[0]
    shutil.rmtree(tmp_path / "spill")
    with pytest.raises(Vanished, match=f"folder {tmp_path / 'spill'} vanished"):
        spill.append(torch.ones(2))


@pytest.mark.parametrize("damage", ["empty", "garbage", "cut short"])
def test_a_damaged_cache_file_reads_as_none_with_a_note(tmp_path, capsys, damage):
    """A cache file of the run folder cut short or overwritten (a torch.save file: the sampled inputs'
    calls, the block statistics) was a traceback in a rerun (UnpicklingError 'Weights only load failed ...',
    OSError '[Errno 22] Invalid argument', EOFError): now None, for its caller to compute it again, and a
    note naming it (the first its caller finds)."""
    from compress.calib_store import load_cached

    for name in ("a", "b"):
        torch.save([{"x": torch.randn(64, 64)}], tmp_path / f"{name}.pt")
    whole = (tmp_path / "a.pt").read_bytes()
    bad = {"empty": b"", "garbage": b"not a torch file", "cut short": whole[:len(whole) // 2]}[damage]
    (tmp_path / "c.pt").write_bytes(whole)
    for name in ("a", "b"):
        (tmp_path / f"{name}.pt").write_bytes(bad)
    capsys.readouterr()
    assert load_cached(tmp_path / "a.pt", "sampled again") is None
    assert load_cached(tmp_path / "b.pt", "sampled again", damaged_before=True) is None  # said once
    assert torch.equal(load_cached(tmp_path / "c.pt", "sampled again")[0]["x"], torch.load(tmp_path / "c.pt")[0]["x"])
    said = " ".join(capsys.readouterr().err.split())
    why = "empty" if damage == "empty" else "not as torch.save wrote it"
    assert said == (f"note: the run folder's file {tmp_path / 'a.pt'} is damaged ({why}: cut short or overwritten "
                    "since?): sampled again, as is any other damaged file in its folder"), said


def test_a_cache_file_that_cannot_be_read_for_another_reason_is_not_taken_for_damaged(tmp_path, monkeypatch):
    """No permission, an I/O error, an allocation that fails: raised as they are (a file computed again and
    written over would hide them); a file gone meanwhile: Vanished, naming it."""
    import errno

    from compress.calib_store import Vanished, load_cached

    with pytest.raises(Vanished, match="the run folder's file .*gone.pt vanished during the run"):
        load_cached(tmp_path / "gone.pt", "computed again")
    torch.save([1], tmp_path / "a.pt")
    for e in (PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error"),
              RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes")):
        monkeypatch.setattr(torch, "load", lambda *a, e=e, **k: (_ for _ in ()).throw(e))
        with pytest.raises(type(e)):
            load_cached(tmp_path / "a.pt", "computed again")


# (offset, bytes written there) into torch.save([{"x": torch.zeros(8, 8), "t": torch.tensor(3), "p": "a prompt"}],
# "a.pt") and the error torch.load of it raises (found with random overwrites, random.Random(seed))
OVERWRITES = [(1729, "d71484f8", RuntimeError), (275, "20823cfde6f1c26b30f90ec7dd01e488", "UnpicklingError"),
              (218, "7e8a829525e69beecbc93c8672a1b785", UnicodeDecodeError), (491, "54", ValueError),
              (221, "00", KeyError), (311, "70910a60", EOFError), (322, "cc4a0c4e", "error"),
              (116, "8771b343", IndexError)]


def overwrite(path, offset: int, hexed: str) -> None:
    b = bytearray(path.read_bytes())
    b[offset:offset + len(hexed) // 2] = bytes.fromhex(hexed)
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("offset, hexed, raised", OVERWRITES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_cache_file_overwritten_reads_as_none_whatever_the_unpickler_raises(tmp_path, capsys, offset, hexed, raised):
    """A cache file overwritten in place (not cut short) made torch.load raise UnicodeDecodeError, ValueError,
    IndexError, KeyError or struct.error, which load_cached did not take for damaged: a traceback in --resume
    (176 of 1,500 random 1-16-byte overwrites); now None and the note, as for any damaged file."""
    from compress.calib_store import load_cached

    path = tmp_path / "a.pt"
    torch.save([{"x": torch.zeros(8, 8), "t": torch.tensor(3), "p": "a prompt"}], path)
    overwrite(path, offset, hexed)
    with pytest.raises(Exception) as e:
        torch.load(path, weights_only=True)
    assert type(e.value).__name__ == getattr(raised, "__name__", raised)  # the damage this case stands for
    capsys.readouterr()
    assert load_cached(path, "sampled again") is None
    assert "is damaged (not as torch.save wrote it" in capsys.readouterr().err


def test_a_whole_cache_file_a_weights_only_load_refuses_is_computed_again(tmp_path, capsys):
    """A whole torch archive holding a type torch.load(weights_only=True) refuses (an older writer's, a torch
    that allows less) never reads back: computed again with the note, as before ef8bf90, which raised torch's
    multi-line 'Weights only load failed' since the file's CRC-32s check (R2 stop 51 #2)."""
    import pathlib

    from compress.calib_store import load_cached

    path = tmp_path / "calls.pt"
    torch.save({"x": torch.ones(2), "where": pathlib.PurePosixPath("a")}, path)
    assert load_cached(path, "computed again") is None
    assert "computed again" in capsys.readouterr().err
