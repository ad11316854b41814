"""A file a command writes where the user named it (importance's --png and --json, eval's --grid, lora's
NEW) that cannot be written for want of space, quota, a writable file system or a file-size limit:
one line naming the file and the option that puts it elsewhere (cli._cannot_write), never a traceback;
a run's stage or export that meets a file-size limit (EFBIG) says so as it says a full disk."""

import errno
import os
from argparse import Namespace
from pathlib import Path

import pytest

from compress.cli import main
from tests.test_commands_importance import TOY_IMPORTANCE


def _failing_rename(monkeypatch, name: str, err: int):
    """Path.replace raising OSError(err) (no file named, as PIL's close says it) for the temp file of
    `name` (write_atomically's .STEM.tmp-PID.SUFFIX)."""
    real = Path.replace
    stem, suffix = name.split(".")

    def replace(self, target):
        if self.name.startswith(f".{stem}.tmp-") and self.suffix == f".{suffix}":
            raise OSError(err, os.strerror(err))
        return real(self, target)
    monkeypatch.setattr(Path, "replace", replace)


@pytest.mark.parametrize("which, err, why, fix", [
    ("imp.json", errno.ENOSPC, "no space left on the device", "free space there, or give --json on another disk"),
    ("imp.png", errno.ENOSPC, "no space left on the device", "free space there, or give --png on another disk"),
    ("imp.png", errno.EFBIG, "the file is larger than this file system or the file-size limit allows (FAT32: 4 GiB; "
                             "ulimit -f)",
     "give --png on a file system that takes larger files (not FAT32), or raise ulimit -f"),
])
def test_importance_that_cannot_write_its_png_or_json_says_so_in_one_line(tmp_path, monkeypatch, capsys,
                                                                          which, err, why, fix):
    """`importance --png mnt/imp.png --json mnt/imp.json` on a full disk printed 'wrote mnt/imp.png' then
    a traceback (OSError 28 at commands_importance.py:180; --png alone: report.py:295)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TOY_IMPORTANCE)
    png, js = tmp_path / "imp.png", tmp_path / "imp.json"
    _failing_rename(monkeypatch, which, err)
    capsys.readouterr()
    assert main(["importance", str(recipe), "--png", str(png), "--json", str(js)]) == 1
    said = capsys.readouterr().err
    assert "Traceback" not in said
    assert said.strip().splitlines()[-1] == (f"dit-compress: cannot write: {tmp_path / which}: {why}, during "
                                             f"dit-compress importance; {fix}")
    assert not any(p.name.startswith(".imp.tmp") for p in tmp_path.iterdir())


def test_lora_whose_new_output_cannot_be_written_says_so_in_one_line():
    """`lora OUT LORA mnt/lo` on a full disk: a traceback (SafetensorError at commands_lora.py:83, which
    names no file); one line naming the new output folder."""
    from compress.cli import _cannot_write

    e = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    said = _cannot_write(Namespace(command="lora", new="mnt/lo"), e)
    assert str(said) == ("mnt/lo: no space left on the device, during dit-compress lora; free space there, or "
                         "give an output folder on another disk")
    assert _cannot_write(Namespace(command="lora", new="mnt/lo"), Exception("another")) is None
    grid = _cannot_write(Namespace(command="eval", grid="g.png"), OSError(errno.EDQUOT, "Disk quota exceeded", "g.png"))
    assert str(grid) == ("g.png: the disk quota is used up, during dit-compress eval; free space there, or give "
                         "--grid on another disk")


@pytest.mark.parametrize("raised", [
    Exception("Error while serializing: I/O error: File too large (os error 27)"),
    OSError(errno.EFBIG, "File too large"),
])
def test_a_file_size_limit_in_a_run_is_one_line_as_a_full_disk_is(tmp_path, monkeypatch, capsys, raised):
    """ulimit -f (or FAT32's 4 GiB) in a stage's save: a traceback 'SafetensorError: ... File too large
    (os error 27)' via runner_stages.py:313; now as a full disk is said, with words true for it."""
    from compress.passes import svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)

    def full(*args, **kwargs):
        raise raised

    monkeypatch.setattr(svd.SVDPass, "run", full)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    said = capsys.readouterr().err
    assert "Traceback" not in said
    assert said.strip().splitlines()[-1].startswith(
        f"dit-compress: cannot write: {tmp_path / 'run'}: the file is larger than this file system or the file-size "
        f"limit allows (FAT32: 4 GiB; ulimit -f), during {tmp_path / 'r.yaml'}:6: pass 2/2 (svd); give --run-dir on a "
        "file system that takes larger files (not FAT32), or raise ulimit -f; ")


def test_a_command_that_cannot_write_a_file_it_was_not_told_where_says_so_without_an_option():
    """A file the command writes elsewhere (a cache): its path and what to do, no option that would not move it."""
    from compress.cli import _cannot_write

    said = _cannot_write(Namespace(command="eval", grid="g.png"), OSError(errno.ENOSPC, "No space", "/r/inputs/x.pt"))
    assert str(said) == "/r/inputs/x.pt: no space left on the device, during dit-compress eval; free space there"
    said = _cannot_write(Namespace(command="lora", new="mnt/lo"), OSError(errno.EFBIG, "File too large",
                                                                                   "mnt/.lo.tmp-0a1b2c3d/w"))
    assert str(said).endswith("during dit-compress lora; give an output folder on a file system that takes larger "
                              "files (not FAT32), or raise ulimit -f")


def test_eval_whose_grid_cannot_be_written_prints_its_scores_first(tmp_path, capsys, monkeypatch):
    """`eval OUT --grid mnt/g.png` on a full disk: after ~90 s of sampling, a traceback at toy/grid.py:30
    and no scores; the scores are printed first, then one line for the grid."""
    import compress.toy.evaluate

    monkeypatch.setattr(compress.toy.evaluate, "evaluate", lambda *a, **k: {"adherence": 1.0})
    sample = compress.toy.evaluate.sample  # the grid's samples, in 2 denoising steps of the default 20
    monkeypatch.setattr(compress.toy.evaluate, "sample", lambda *a, **k: sample(*a, **{**k, "num_inference_steps": 2}))
    _failing_rename(monkeypatch, "g.png", errno.ENOSPC)
    grid = tmp_path / "g.png"
    assert main(["eval", "toy:flux", "--grid", str(grid)]) == 1
    printed = capsys.readouterr()
    assert "adherence: 1" in printed.out and "Traceback" not in printed.err
    assert printed.err.strip().splitlines()[-1] == (f"dit-compress: cannot write: {grid}: no space left on the device, "
                                                    "during dit-compress eval; free space there, or give --grid on "
                                                    "another disk")


@pytest.fixture
def read_only_here(tmp_path, monkeypatch):
    """The working folder `rom`, which cannot be written in (chmod 0o555; where that does not hold, root
    writing anywhere, its mkdir, mkdtemp and os.access made to refuse as they would), and beside it a tiny
    PixArt teacher and output: (rom, teacher, output)."""
    import tempfile

    from tests.test_bench import _output

    out = _output(tmp_path)
    rom = tmp_path / "rom"
    rom.mkdir()
    rom.chmod(0o555)
    monkeypatch.chdir(rom)
    if os.geteuid() == 0:
        def refuse(where):
            if where is not None and Path(where).absolute() == rom:
                raise PermissionError(errno.EACCES, "Permission denied")
        mkdir, mkdtemp, access = Path.mkdir, tempfile.mkdtemp, os.access

        def refused_mkdir(self, *args, **kwargs):
            if not self.exists():
                refuse(self.parent)
            return mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", refused_mkdir)
        monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, dir=None, **k: refuse(dir) or mkdtemp(*a, dir=dir, **k))
        monkeypatch.setattr(os, "access", lambda p, mode, **k: not (mode & os.W_OK and Path(p).absolute() == rom)
                            and access(p, mode, **k))
    yield rom, tmp_path / "teacher", out
    rom.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "plan", "convert", "eval", "importance", "inspect"])
def test_a_folder_that_cannot_be_written_is_named_by_its_path_not_as_dot(read_only_here, capsys, command):
    """In a working folder that cannot be written (or an output whose folder cannot), the error named it
    '.': 'output folder o: cannot write in .: Permission denied', '--grid: the folder . is not writable'.
    Now by its absolute path (errors.folder_named); a folder named otherwise is named as given."""
    rom, teacher, out = read_only_here
    argv, status, said = {
        "run": (["run", "toy-pixart", "--out", "o", "--run-dir", str(rom.parent / "r")], 2,
                f"dit-compress run: error: output folder o: cannot write in {rom}: Permission denied"),
        "plan": (["plan", "toy-pixart", "--run-dir", "r"], 0,
                 f"warning: run folder r: cannot write in {rom}: Permission denied; `dit-compress run` would refuse "
                 "this before it loads the teacher"),
        "convert": (["convert", str(teacher / "diffusion_pytorch_model.safetensors"), "new", "--teacher-config",
                     str(teacher)], 2, f"dit-compress convert: error: output folder new: cannot write in {rom} "
                                       "(Permission denied)"),
        "eval": (["eval", str(out), "--grid", "g.png"], 2,
                 f"dit-compress eval: error: --grid: the folder {rom} is not writable"),
        "importance": (["importance", "toy:pixart", "--json", "j.json"], 2,
                       f"dit-compress importance: error: --json: the folder {rom} is not writable"),
        "inspect": (["inspect", str(out), "--plot", "."], 2,
                    f"dit-compress inspect: error: --plot: the folder {rom} is not writable"),
    }[command]
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err
    assert said in err.splitlines(), err
    assert list(rom.iterdir()) == []
