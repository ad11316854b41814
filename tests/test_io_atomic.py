"""The output folder replaced atomically (compress.io_atomic): what an existing folder may be replaced
(an earlier output, re-saved or streamed; never one holding other files, a link, a mount point), the
earlier output whole after an interrupt or a kill at the rename, and the temp folder's name."""

import errno
import os
from pathlib import Path

import pytest
import torch

from compress import save_compressed
from compress.errors import UserError
from compress.stream import CheckpointBlocks, empty_transformer, save_streamed
from tests.conftest import tiny_flux, tiny_pixart



@pytest.mark.parametrize("added", ["notes.txt", "samples/a.png", "sub/config.json", "config.json.bak"])
def test_overwrite_refuses_an_output_holding_files_it_is_not_made_of(tmp_path, added):
    """--overwrite deleted notes.txt, samples/ and a nested output (dit-compress lora OUT LORA OUT/sub)
    the user had put in an earlier output folder: it replaces the folder as a whole."""
    out = save_compressed(tiny_pixart(), tmp_path / "out", files={"README.md": "card\n", "recipe.yaml": "x\n"})
    (out / added).parent.mkdir(exist_ok=True)
    (out / added).write_text("keep")
    name = added.split("/")[0]
    with pytest.raises(UserError, match=f"output folder .*out holds {name}, which is not part of a dit-compress "
                                        "output.*move it out, or name a new folder"):
        save_compressed(tiny_pixart(), out, overwrite=True)
    assert (out / added).read_text() == "keep"


def test_overwrite_replaces_an_output_made_of_what_dit_compress_writes(tmp_path):
    """A whole output (report, block map, recipe, card), a streamed (sharded) one and a stage folder
    (state.json) are replaced."""
    files = {n: "x\n" for n in ("recipe.yaml", "report.json", "block_map.json", "README.md")}
    out = save_compressed(tiny_pixart(), tmp_path / "out", files=files)
    (out / "state.json").write_text("{}")
    save_compressed(tiny_pixart(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    model = tiny_flux()
    model.save_pretrained(tmp_path / "teacher", max_shard_size="40KB")
    model = empty_transformer(tmp_path / "teacher")
    loader = CheckpointBlocks(model, tmp_path / "teacher")
    loader.load_top()
    save_streamed(model, loader, tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("*-of-*.safetensors"))) > 1
    save_streamed(model, loader, tmp_path / "sharded", overwrite=True)


def test_a_link_in_an_earlier_output_is_named_as_a_link(tmp_path):
    """A linked README.md (a Hub cache snapshot, an ln -s) was 'not part of a dit-compress output'."""
    from compress.io_atomic import check_replaceable
    from tests.conftest import tiny_pixart

    out = save_compressed(tiny_pixart(), tmp_path / "out")
    (tmp_path / "card.md").write_text("x")
    (out / "README.md").symlink_to(tmp_path / "card.md")
    with pytest.raises(UserError, match="holds README.md, which is a link"):
        check_replaceable(out, overwrite=True)


@pytest.mark.parametrize("how", [{"variant": "fp16"}, {"safe_serialization": False},
                                 {"variant": "fp16", "max_shard_size": "40KB"}])
def test_overwrite_replaces_an_output_re_saved_by_save_pretrained(tmp_path, how):
    """A loaded output re-saved with a variant, as .bin or in shards is still an output
    (io_output.weight_files reads it): --overwrite said its weight files were not part of one."""
    from compress import load_transformer

    out = save_compressed(tiny_pixart(), tmp_path / "out")
    resaved = tmp_path / "resaved"
    load_transformer(out).save_pretrained(resaved, **how)
    assert not (resaved / "diffusion_pytorch_model.safetensors").exists()
    save_compressed(tiny_pixart(), resaved, overwrite=True)
    assert sorted(p.name for p in resaved.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_a_backup_of_the_weights_beside_an_output_is_not_taken_for_a_variant(tmp_path):
    """diffusion_pytorch_model.old.safetensors (a user's backup) matched the re-saved weights'
    pattern: --overwrite would have deleted it with the folder."""
    out = save_compressed(tiny_pixart(), tmp_path / "out")
    (out / "diffusion_pytorch_model.old.safetensors").write_bytes(b"a backup")
    with pytest.raises(UserError, match="holds diffusion_pytorch_model.old.safetensors, which is not part of"):
        save_compressed(tiny_pixart(), out, overwrite=True)


def test_an_interrupted_overwrite_leaves_the_earlier_output_whole(tmp_path, monkeypatch):
    """atomic_folder deleted the earlier output before renaming the new one in: an interrupt between
    the two (SIGTERM comes as KeyboardInterrupt) left no output at all. The earlier one is put back.
    (Where the system has no atomic exchange: the two renames.)"""
    from compress import io_atomic
    from compress.io_atomic import atomic_folder

    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    monkeypatch.setattr(io_atomic, "exchange", lambda a, b: False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = os.replace, []

    def interrupted(src, dst):  # the rename of the new output onto `out`, the first time only
        calls.append((src, dst))
        if os.path.exists(os.path.join(src, "new.txt")) and len(calls) <= 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or aside folder left


def test_an_overwrite_replaces_the_output_and_leaves_nothing_beside_it(tmp_path):
    from compress.io_atomic import atomic_folder

    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _killed_at_second_rename(out, exchange: bool) -> bool:
    """In a child process: save_compressed(overwrite=True) of another model (its first weight + 1) onto
    `out`, SIGKILLed at its second os.replace (between moving the old output aside and the new one in);
    `exchange`: whether the system's atomic exchange is used. Whether the child was killed (else it
    must have saved without an error: exit status 0, 3 on any exception)."""
    import signal

    from compress import io_atomic

    model = tiny_pixart()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    pid = os.fork()
    if pid == 0:
        try:
            calls, real = [], os.replace

            def kill_at_second(src, dst):
                calls.append(src)
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(src, dst)

            os.replace = kill_at_second
            if not exchange:
                io_atomic.exchange = lambda a, b: False
            save_compressed(model, out, overwrite=True)
        except BaseException:
            os._exit(3)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, "the child's save raised"
    return os.WIFSIGNALED(status)


def test_a_kill_during_an_overwrite_leaves_an_output(tmp_path):
    """A SIGKILL between the old output's rename aside and the new one's rename in left no `out` at
    all (and both, whole, in hidden temp folders): the two are swapped in one step (renameat2)."""
    from compress.io_atomic import exchange

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2 with RENAME_EXCHANGE here")
    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    before = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    killed = _killed_at_second_rename(out, exchange=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]
    assert not killed  # the exchange makes no second rename
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != before  # the new output is in


def test_where_there_is_no_exchange_a_killed_overwrite_leaves_the_old_output_aside_by_its_name(tmp_path):
    """Without renameat2, the kill leaves the old output in .out.old-* (runner_leftovers.clear_leftovers
    puts it back), the new one in .out.tmp-*."""
    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    before = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    assert _killed_at_second_rename(out, exchange=False)
    assert not out.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(aside) == 1 and (aside[0] / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_exchange_swaps_two_folders(tmp_path):
    from compress.io_atomic import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2 with RENAME_EXCHANGE here")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())


def test_an_overwrite_whose_old_output_cannot_be_put_back_raises_its_own_error_and_names_it(tmp_path, monkeypatch,
                                                                                           capsys):
    """Where the new output's rename failed (or was interrupted) and putting the set-aside old one back
    failed too, that second OSError's traceback replaced the first error (a Ctrl-C became an OSError)
    and said nothing of where the old output was. The first error is raised, and a warning names the
    folder the old output is in, which the next run puts back."""
    from compress import io_atomic
    from compress.io_atomic import atomic_folder

    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    monkeypatch.setattr(io_atomic, "exchange", lambda a, b: False)
    real = os.replace

    def refused(src, dst):  # the old output moves aside; the new one's rename and the way back fail
        if os.path.exists(os.path.join(src, "new.txt")):
            raise KeyboardInterrupt
        if ".out.old-" in str(src):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src), None, str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    (aside,) = tmp_path.glob(".out.old-*")
    assert not out.exists() and (aside / "config.json").is_file()
    said = " ".join(capsys.readouterr().err.split())
    assert (f"{out}: the earlier output is set aside in {aside} and could not be put back (Permission denied): "
            f"the next run on {out} puts it back") in said, said


@pytest.mark.parametrize("writable, said", [
    (True, "output folder {out} is a mount point, which an output cannot replace (it is written beside its folder, "
           "then renamed onto it); name a folder inside it, e.g. {out}/NAME"),
    (False, "output folder {out} is a mount point that cannot be written (read-only, or not yours); name a folder "
            "on a writable disk"),
])
@pytest.mark.parametrize("held", ["empty", "output"])
def test_a_mount_point_as_the_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys, writable, said, held):
    """An empty mount point as --out (a Docker volume) was refused 'exists; pass --overwrite'; with
    --overwrite the run ran every pass, then the rename onto it failed: a traceback 'OSError: [Errno 16]
    Device or resource busy' (io_atomic.exchange), the temp output written on the parent's disk. Now
    refused before the teacher loads, leading where it works: a folder inside it, where writable."""
    from compress.cli import main
    from tests.runner_helpers import pixart_runner

    _, _, loads = pixart_runner(tmp_path, monkeypatch)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if held == "output":
        save_compressed(tiny_pixart(), mnt / "o")
        for f in (mnt / "o").iterdir():
            f.rename(mnt / f.name)
        (mnt / "o").rmdir()
    real_mount, real_access = os.path.ismount, os.access
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(mnt) or real_mount(p))
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (writable if str(p) == str(mnt) and mode == os.W_OK
                                                             else real_access(p, mode, **kw)))
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(mnt), "--run-dir", str(tmp_path / "run")]
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(argv + extra) == 2
        assert capsys.readouterr().err == f"dit-compress run: error: {said.format(out=mnt)}\n"
    assert loads == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".mnt.")]


def test_a_bind_mount_listed_in_mountinfo_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """An empty bind mount as --out (`mount --bind src dst`, on the same file system) is no mount point to
    os.path.ismount: it was refused 'exists; pass --overwrite', and with --overwrite every pass ran, then
    the rename onto it failed with a traceback (EBUSY, io_atomic.exchange). Now /proc/self/mountinfo's
    listing of it (its 5th field, a space written \\040) refuses it before the teacher loads."""
    import compress.io_atomic as io_atomic
    from compress.cli import main
    from tests.runner_helpers import pixart_runner

    _, _, loads = pixart_runner(tmp_path, monkeypatch)
    mnt = tmp_path / "my mnt"
    mnt.mkdir()
    listed = str(mnt.resolve()).replace(" ", "\\040").encode()
    info = tmp_path / "mountinfo"
    info.write_bytes(b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                     b"40 22 8:1 /src " + listed + b" rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(io_atomic, "MOUNTINFO", info)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(mnt), "--run-dir", str(tmp_path / "run")]
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(argv + extra) == 2
        assert capsys.readouterr().err == (f"dit-compress run: error: output folder {mnt} is a mount point, which an output "
                                           "cannot replace (it is written beside its folder, then renamed onto it); "
                                           f"name a folder inside it, e.g. {mnt}/NAME\n")
    assert loads == []
    assert not io_atomic.is_mount_point(tmp_path) and not io_atomic.is_mount_point(tmp_path / "my")
    monkeypatch.setattr(io_atomic, "MOUNTINFO", tmp_path / "none")  # not Linux: ismount's answer alone
    assert not io_atomic.is_mount_point(mnt)


def test_unescape_mount_decodes_the_kernels_octal_escapes():
    from compress.io_atomic import unescape_mount

    assert unescape_mount(b"/mnt/a\\040b\\011c\\012d\\134e") == b"/mnt/a b\tc\nd\\e"
    assert unescape_mount(b"/mnt/\xc3\xa9") == b"/mnt/\xc3\xa9"


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EXDEV])
def test_a_rename_onto_the_output_refused_at_the_export_is_one_line_and_resume_writes_it_inside(
        tmp_path, monkeypatch, capsys, err):
    """A mount point is_mount_point does not know (EBUSY, or EXDEV, from the final rename) failed the
    export with a traceback after every pass. Now one line naming the folder and one inside it, and
    what the run folder keeps: `--resume --out DIR/NAME` writes the output, running no pass again."""
    import compress.io_atomic as io_atomic
    from compress.cli import main
    from compress.runner import Runner
    from tests.runner_helpers import pixart_runner

    _, _, loads = pixart_runner(tmp_path, monkeypatch)
    out, run = tmp_path / "mnt", tmp_path / "run"
    out.mkdir()

    def refused(a, b):
        raise OSError(err, os.strerror(err), str(a), None, str(b))
    monkeypatch.setattr(io_atomic, "exchange", refused)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: refused(a, b) if Path(a) == out or Path(b) == out
                        else real_replace(a, b))
    ran = []
    real_pass = Runner._run_pass
    monkeypatch.setattr(Runner, "_run_pass", lambda self, i, s: (ran.append(i), real_pass(self, i, s))[1])
    argv = ["run", str(tmp_path / "r.yaml"), "--run-dir", str(run)]
    assert main(argv + ["--out", str(out), "--overwrite"]) == 2
    err_text = capsys.readouterr().err
    assert "Traceback" not in err_text
    err_text = err_text.splitlines(keepends=True)[-1]  # (the passes' progress before it)
    assert err_text.startswith(f"dit-compress run: error: output folder {out} could not be replaced ({os.strerror(err)}): "
                               "it is a mount point, which an output cannot replace (it is written beside its "
                               f"folder, then renamed onto it); name a folder inside it, e.g. {out}/NAME; {run} "
                               "keeps its work (")
    assert err_text.endswith("passes done): --resume only writes the output (with --out "
                             f"{out}/NAME)\n"), err_text
    assert list(out.iterdir()) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".mnt.")]
    done = list(ran)
    assert done
    assert main(argv + ["--resume", "--out", str(out / "NAME")]) == 0
    assert ran == done and (out / "NAME" / "config.json").is_file()


@pytest.mark.parametrize("size", [241, 242])
def test_the_longest_name_accepted_is_the_longest_whose_temp_folder_can_be_made(tmp_path, size):
    """check_name_fits's bound is the temp folder's: at 241 bytes `.NAME.tmp-XXXXXXXX` can be made and the
    name passes, at 242 it cannot and the name is refused up front (R1 stop 50: a bound one byte off
    passed the 241 / 245 tests)."""
    from compress.io_atomic import _temp_name, check_name_fits

    out = tmp_path / ("n" * size)
    try:
        _temp_name(out).mkdir()
        made = True
    except OSError as e:
        assert e.errno == errno.ENAMETOOLONG
        made = False
    if made:
        check_name_fits(out)
    else:
        with pytest.raises(UserError, match=f"its name has {size} bytes"):
            check_name_fits(out)
    assert made == (size == 241)
