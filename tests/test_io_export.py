import errno
import os
from pathlib import Path

import pytest
import torch

from compress import save_compressed
from compress.errors import NumericError, UserError
from compress.stream import CheckpointBlocks, empty_transformer, save_streamed
from tests.conftest import tiny_flux, tiny_pixart


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="exists"):
        save_compressed(tiny_pixart(), tmp_path / "out")


def test_an_output_is_readable_as_the_umask_allows(tmp_path):
    umask = os.umask(0o022)
    try:
        out = save_compressed(tiny_flux(), tmp_path / "out")
    finally:
        os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in (out, *out.iterdir())} == {"0o755", "0o644"}


@pytest.mark.parametrize("streamed", [False, True])
def test_an_export_beyond_float16s_range_names_the_tensor(tmp_path, streamed):
    """float16 stops at 65504: a finite weight beyond it would be written as inf."""
    model = tiny_flux()
    model.transformer_blocks[0].ff.net[2].weight.data[0, 0] = 1e5
    if streamed:
        model.save_pretrained(tmp_path / "teacher")
        model = empty_transformer(tmp_path / "teacher")
        loader = CheckpointBlocks(model, tmp_path / "teacher")
        loader.load_top()
        save = lambda dtype, out: save_streamed(model, loader, out, dtype=dtype)  # noqa: E731
    else:
        save = lambda dtype, out: save_compressed(model, out, dtype=dtype)  # noqa: E731
    with pytest.raises(NumericError, match=r"transformer_blocks\.0\.ff\.net\.2\.weight holds values up to 1e\+05"):
        save(torch.float16, tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()
    save(torch.bfloat16, tmp_path / "bf16")  # within bfloat16's range


def test_a_teacher_weight_beyond_float16s_range_is_warned_about_before_compute(capsys):
    """export.dtype float16: the export would fail at the end of the run on a weight no pass changes."""
    from compress.io_export import warn_if_beyond_export_range

    model = tiny_flux()
    warn_if_beyond_export_range(model, "float16")
    assert capsys.readouterr().err == ""
    model.transformer_blocks[0].ff.net[2].weight.data[0, 0] = 1e5
    warn_if_beyond_export_range(model, "bfloat16")
    assert capsys.readouterr().err == ""
    warn_if_beyond_export_range(model, "float16")
    err = " ".join(capsys.readouterr().err.split())
    assert "the teacher's transformer_blocks.0.ff.net.2.weight holds values up to 1e+05" in err
    assert "export.dtype: bfloat16 or float32 keeps it" in err


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
    from compress.io_export import check_replaceable, save_compressed
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
    from compress import io_export
    from compress.io_export import atomic_folder

    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    monkeypatch.setattr(io_export, "exchange", lambda a, b: False)
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
    from compress.io_export import atomic_folder

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

    from compress import io_export

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
                io_export.exchange = lambda a, b: False
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
    from compress.io_export import exchange

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
    from compress.io_export import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2 with RENAME_EXCHANGE here")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())


def test_a_compiled_model_saves_as_the_model_it_wraps(tmp_path):
    """save_compressed of a torch.compile'd model wrote the wrapper's class (OptimizedModule) and keys
    (`_orig_mod.`…), which load_transformer refused; it saves the wrapped model, which loads back
    bit-identical."""
    from compress.io_output import load_transformer
    from tests.conftest import factorize

    model = factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"], 4)
    save_compressed(torch.compile(model, backend="eager"), tmp_path / "out")
    back = load_transformer(tmp_path / "out")
    assert type(back) is type(model) and back.config.compression["ranks"] == {
        "transformer_blocks.0.attn1.to_q": 4, "transformer_blocks.0.ff.net.2": 4}
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_an_overwrite_whose_old_output_cannot_be_put_back_raises_its_own_error_and_names_it(tmp_path, monkeypatch,
                                                                                           capsys):
    """Where the new output's rename failed (or was interrupted) and putting the set-aside old one back
    failed too, that second OSError's traceback replaced the first error (a Ctrl-C became an OSError)
    and said nothing of where the old output was. The first error is raised, and a warning names the
    folder the old output is in, which the next run puts back."""
    from compress import io_export
    from compress.io_export import atomic_folder

    out = tmp_path / "out"
    save_compressed(tiny_pixart(), out)
    monkeypatch.setattr(io_export, "exchange", lambda a, b: False)
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


def test_an_export_dtype_wider_than_the_teachers_stored_one_is_warned_about(tmp_path, capsys):
    """A bfloat16 teacher exported in the default float32 wrote a file larger than the teacher's
    (73% of its parameters, 1.46x its bytes) without a word: plan and run warn at export.dtype (the
    recipe where the default stands), naming the dtype to set; not for a teacher as wide or a dtype
    its files do not give (a toy)."""
    from safetensors.torch import save_file

    from compress.io_export import warn_if_export_wider, wider_export_words
    from compress.io_source_recipe import checked_sources
    from compress.recipe import load_recipe
    from tests.test_commands import RECIPE

    assert wider_export_words(torch.float32, torch.bfloat16).startswith("export.dtype is float32, but the teacher "
                                                                       "stores its weights in bfloat16: the output's")
    assert "2x the bytes" in wider_export_words(torch.float32, torch.float16)
    for export, stored in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
                           (torch.float32, torch.float32), (torch.float32, torch.float64), (torch.float32, None)):
        assert wider_export_words(export, stored) is None, (export, stored)
    tiny_flux().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny_flux().save_pretrained(tmp_path / "f32")
    save_file(tiny_flux().to(torch.bfloat16).state_dict(), tmp_path / "t.safetensors")  # a transformer's names
    (tmp_path / "t.json").write_text((tmp_path / "bf16" / "config.json").read_text())
    cases = [("bf16", "", "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"),
             ("bf16", "export:\n  dtype: float32\n", "r.yaml:2: export.dtype is float32"),
             ("bf16", "export:\n  dtype: bfloat16\n", None), ("f32", "", None), ("t.safetensors", "", "bfloat16")]
    for teacher, export, warned in cases:
        (tmp_path / "r.yaml").write_text(export + RECIPE.format(teacher=tmp_path / teacher))
        recipe = load_recipe(tmp_path / "r.yaml")
        config = str(tmp_path / "t.json") if teacher.endswith(".safetensors") else None
        capsys.readouterr()
        warn_if_export_wider(recipe, checked_sources(recipe, None, config))
        err = " ".join(capsys.readouterr().err.split())
        assert (warned in err and err.count("warning:") == 1) if warned else not err, (teacher, export, err)
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher="toy:flux"))
    recipe = load_recipe(tmp_path / "r.yaml")
    warn_if_export_wider(recipe, checked_sources(recipe))
    assert not capsys.readouterr().err


def test_plan_and_run_warn_once_of_an_export_wider_than_the_teacher(tmp_path, capsys):
    """A bfloat16 teacher exported in the default float32: plan and run each warn once, before compute."""
    from compress.cli import main
    from tests.test_commands import RECIPE

    tiny_flux().to(torch.bfloat16).save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    words = "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"
    for argv in (["plan", str(tmp_path / "r.yaml")],
                 ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]):
        capsys.readouterr()
        assert main(argv) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert err.count(words) == 1, (argv, err)
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "r.yaml"), "--set", "export.dtype=bfloat16"]) == 0
    assert "export.dtype is" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_plan_and_a_runs_checks_read_the_teachers_headers_once_for_the_export_warning(tmp_path, monkeypatch,
                                                                                    capsys, kind):
    """The export's dtype warning (warn_if_export_wider) read the teacher's weight headers again for
    their dtypes, after the checks had read them (io_headers.check_teacher_weights): twice more in a run
    (its quiet make_plan, then runner_prepare). Now it takes the dtypes those reads kept
    (TeacherSource.weights_read): each file's header is read once, the warning's words the same."""
    import compress.io as io
    import compress.io_headers as io_headers
    import compress.runner_prepare as runner_prepare
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    tiny_pixart().to(torch.bfloat16).save_pretrained(tmp_path / "t")
    weights = tmp_path / "t" / "diffusion_pytorch_model.safetensors"
    teacher = weights if kind == "file" else tmp_path / "t"
    read = []
    header_shapes, safetensors_dtypes = io_headers.header_shapes, io.safetensors_dtypes
    monkeypatch.setattr(io_headers, "header_shapes", lambda path: read.append(path) or header_shapes(path))
    monkeypatch.setattr(io, "safetensors_dtypes", lambda path: read.append(path) or safetensors_dtypes(path))
    recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\ndevice: cpu\ncalibration: {{source: synthetic}}\n"
                          "passes: [{remove_blocks: {blocks: {blocks: [0]}}}]\n", str(tmp_path / "r.yaml"))
    words = "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"
    capsys.readouterr()
    make_plan(recipe)
    assert (read, " ".join(capsys.readouterr().err.split()).count(words)) == ([weights], 1)

    class Loading(Exception):
        pass

    def load(*args, **kwargs):  # the run's checks are done: the teacher loads next
        raise Loading

    read.clear()
    monkeypatch.setattr(runner_prepare, "load_checked_teacher", load)
    with pytest.raises(Loading):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    assert (read, " ".join(capsys.readouterr().err.split()).count(words)) == ([weights], 1)


def test_weights_rounded_to_the_export_are_those_the_output_holds(tmp_path):
    """round_to_export (the run's measure of the exported weights' error): the weights rounded in place are
    exactly what save_compressed writes in that dtype and load_transformer reads back; one beyond float16's
    range is export_cast's error, not an inf."""
    import copy

    from compress.io_export import round_to_export
    from compress.io_output import load_transformer

    model = tiny_pixart()
    rounded = copy.deepcopy(model)
    round_to_export(rounded, torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in rounded.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), rounded.state_dict().values()))
    back = load_transformer(save_compressed(model, tmp_path / "o", dtype=torch.bfloat16), dtype=torch.float32)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in rounded.state_dict().items())
    with torch.no_grad():
        model.proj_out.weight[0, 0] = 1e6
    with pytest.raises(NumericError, match="export: proj_out.weight holds values up to 1e\\+06, beyond the range of float16"):
        round_to_export(model, torch.float16)


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
    Device or resource busy' (io_export.exchange), the temp output written on the parent's disk. Now
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
        assert capsys.readouterr().err == f"dit-compress: error: {said.format(out=mnt)}\n"
    assert loads == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".mnt.")]


def test_a_bind_mount_listed_in_mountinfo_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """An empty bind mount as --out (`mount --bind src dst`, on the same file system) is no mount point to
    os.path.ismount: it was refused 'exists; pass --overwrite', and with --overwrite every pass ran, then
    the rename onto it failed with a traceback (EBUSY, io_export.exchange). Now /proc/self/mountinfo's
    listing of it (its 5th field, a space written \\040) refuses it before the teacher loads."""
    import compress.io_export as io_export
    from compress.cli import main
    from tests.runner_helpers import pixart_runner

    _, _, loads = pixart_runner(tmp_path, monkeypatch)
    mnt = tmp_path / "my mnt"
    mnt.mkdir()
    listed = str(mnt.resolve()).replace(" ", "\\040").encode()
    info = tmp_path / "mountinfo"
    info.write_bytes(b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                     b"40 22 8:1 /src " + listed + b" rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(io_export, "MOUNTINFO", info)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(mnt), "--run-dir", str(tmp_path / "run")]
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(argv + extra) == 2
        assert capsys.readouterr().err == (f"dit-compress: error: output folder {mnt} is a mount point, which an output "
                                           "cannot replace (it is written beside its folder, then renamed onto it); "
                                           f"name a folder inside it, e.g. {mnt}/NAME\n")
    assert loads == []
    assert not io_export.is_mount_point(tmp_path) and not io_export.is_mount_point(tmp_path / "my")
    monkeypatch.setattr(io_export, "MOUNTINFO", tmp_path / "none")  # not Linux: ismount's answer alone
    assert not io_export.is_mount_point(mnt)


def test_unescape_mount_decodes_the_kernels_octal_escapes():
    from compress.io_export import unescape_mount

    assert unescape_mount(b"/mnt/a\\040b\\011c\\012d\\134e") == b"/mnt/a b\tc\nd\\e"
    assert unescape_mount(b"/mnt/\xc3\xa9") == b"/mnt/\xc3\xa9"


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EXDEV])
def test_a_rename_onto_the_output_refused_at_the_export_is_one_line_and_resume_writes_it_inside(
        tmp_path, monkeypatch, capsys, err):
    """A mount point is_mount_point does not know (EBUSY, or EXDEV, from the final rename) failed the
    export with a traceback after every pass. Now one line naming the folder and one inside it, and
    what the run folder keeps: `--resume --out DIR/NAME` writes the output, running no pass again."""
    import compress.io_export as io_export
    from compress.cli import main
    from compress.runner import Runner
    from tests.runner_helpers import pixart_runner

    _, _, loads = pixart_runner(tmp_path, monkeypatch)
    out, run = tmp_path / "mnt", tmp_path / "run"
    out.mkdir()

    def refused(a, b):
        raise OSError(err, os.strerror(err), str(a), None, str(b))
    monkeypatch.setattr(io_export, "exchange", refused)
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
    assert err_text.startswith(f"dit-compress: error: output folder {out} could not be replaced ({os.strerror(err)}): "
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
    from compress.io_export import _temp_name, check_name_fits

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
