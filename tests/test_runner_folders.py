"""Output and run folders: checked before anything loads, never replacing a folder that is not an
earlier dit-compress output, nor losing a file of the user's in a run folder."""

import json
from pathlib import Path

import pytest

from compress.cli import main
from compress.errors import UserError


def test_overwrite_never_replaces_the_current_folder_or_a_users_folder(pixart, monkeypatch):
    tmp_path, make, loads = pixart
    work = tmp_path / "work"
    (work / "thesis").mkdir(parents=True)
    (work / "thesis" / "ch1.tex").write_text("years of work")
    monkeypatch.chdir(work)
    for out in (".", "", "..", str(tmp_path), "/"):
        with pytest.raises(UserError, match="is the current folder or one above it"):
            make(Path(out), tmp_path / "r", overwrite=True).prepare()
    with pytest.raises(UserError, match="thesis exists and is not a dit-compress output"):
        make(Path("thesis"), tmp_path / "r", overwrite=True).prepare()
    assert (work / "thesis" / "ch1.tex").read_text() == "years of work" and not loads


def test_overwrite_replaces_an_earlier_output_or_an_empty_folder(pixart):
    tmp_path, make, loads = pixart
    out = tmp_path / "out"
    out.mkdir()
    runner = make(out, overwrite=True)
    runner.prepare()
    runner.export(runner.teacher, 1)  # into the empty folder
    runner = make(out, overwrite=True)
    runner.prepare()
    runner.export(runner.teacher, 1)  # over the earlier output
    assert json.loads((out / "config.json").read_text())["compression"]


def test_atomic_folder_refuses_to_replace_a_users_folder(tmp_path):
    from compress.io_atomic import atomic_folder

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a dit-compress output"):
        with atomic_folder(tmp_path / "mine", overwrite=True):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("out, run_dir, words", [
    ("a_file", None, "output folder .*a_file exists and is a file, not a folder"),
    ("a_file/out", None, "output folder .*a_file/out: .*a_file is a file, not a folder"),
    ("o", "a_file/run", "run folder .*a_file/run: .*a_file is a file, not a folder"),
    ("o", "a_file", "run folder .*a_file: .*a_file is a file, not a folder"),
    ("o", "o", "must be separate folders"),
    ("o", "o/run", "must be separate folders"),
    ("/proc/dit-compress-out", None, "output folder /proc/dit-compress-out: cannot write in /proc"),
])
def test_bad_out_or_run_dir_refused_before_loading(pixart, out, run_dir, words):
    tmp_path, make, loads = pixart
    if out.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    (tmp_path / "a_file").write_text("x")
    where = Path(out) if out.startswith("/") else tmp_path / out
    with pytest.raises(UserError, match=words):
        make(where, tmp_path / run_dir if run_dir else None, overwrite=True).prepare()
    assert not loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "r.yaml", "teacher"]  # nothing made


def test_cli_bad_out_is_one_line_before_compute(pixart, capsys):
    tmp_path, make, loads = pixart
    (tmp_path / "a_file").write_text("x")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "a_file" / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dit-compress run: error: output folder") and "\n" not in err and not loads


def test_teacher_options_and_resume_with_restart_are_refused_before_loading(pixart):
    tmp_path, make, loads = pixart
    with pytest.raises(UserError, match="--teacher is empty"):
        make(tmp_path / "out", teacher="").prepare()
    with pytest.raises(UserError, match="--teacher-config '/nonexistent': no such file or folder"):
        make(tmp_path / "out", teacher_config="/nonexistent").prepare()
    with pytest.raises(UserError, match="--resume continues an interrupted run and --restart discards it"):
        make(tmp_path / "out", resume=True, restart=True)
    with pytest.raises(SystemExit) as e:  # the CLI refuses both as it parses them (test_cli)
        main(["run", str(tmp_path / "r.yaml"), "--resume", "--restart"])
    assert e.value.code == 2
    assert not loads


def test_the_run_folder_is_read_without_importing_torch():
    """The CLI reads the run folder after a Ctrl-C that may come before torch is imported: importing
    torch then would keep the user waiting seconds, in the import a Ctrl-C can abort."""
    import subprocess
    import sys

    code = "import sys, compress.runner_folders; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# ---- a run folder the user owns ----------------------------------------------------------------
@pytest.mark.parametrize("where", ["stages/plan.txt", "stages/notes", "distill/checkpoints/keep.txt",
                                   "distill-2/checkpoints/step-x"])
@pytest.mark.parametrize("flag", [{}, {"restart": True}])
def test_a_run_folder_never_loses_files_dit_compress_did_not_write(pixart, where, flag):
    """`--run-dir .` in a folder holding stages/plan.txt deleted it silently."""
    tmp_path, make, loads = pixart
    mine = tmp_path / "mine" / where
    mine.parent.mkdir(parents=True)
    if where.endswith(("notes", "step-x")):
        mine.mkdir()
    else:
        mine.write_text("keep")
    with pytest.raises(UserError, match=f"run folder .*mine: .*mine/{where} was not written by dit-compress"):
        make(tmp_path / "out", tmp_path / "mine", **flag).prepare()
    assert mine.exists() and not loads


def test_a_run_folder_a_run_wrote_is_recognised(pixart, capsys):
    """What runs leave (stages, their temp folders, the finished marker, distill checkpoints) is
    theirs: a finished run's folder is started over."""
    tmp_path, make, loads = pixart
    run = tmp_path / "run"
    for d in ("stages/0-remove_blocks", "stages/1-svd", "stages/.1-svd.tmp-ab_12", "distill/checkpoints/step-00000004",
              "distill-2/checkpoints/tmp-step-00000008"):
        (run / d).mkdir(parents=True)
    (run / "stages" / "finished.json").write_text("{}\n")
    (run / "distill" / "loss.csv").write_text("")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("stages, newer, foreign", [
    (["0-svd/state.json"], "env.json", False),  # beside a stage a run saved
    (["run.json"], "lock_v2.json", False),
    (["finished.json", "1-distill/state.json"], "env.json", False),
    ([], "notes.json", True),  # a stages/ of the user's own: no run's marks
    (["0-svd/"], "notes.json", True),  # a folder named as a stage, holding no state.json
    (["0-svd/state.json"], "plan.txt", True),  # not a JSON file
    (["0-svd/state.json"], "Notes.JSON", True)])
def test_a_json_file_a_newer_dit_compress_adds_in_stages_is_not_foreign(pixart, stages, newer, foreign):
    """dit-compress before stages/run.json refused a run folder holding it ('was not written by
    dit-compress'), even with --resume. A JSON file in stages/ that says dit-compress wrote it, beside
    what only a run writes there (a stage with its state.json, run.json, finished.json), is taken as a
    newer version's; in a stages/ without them, or of another kind, it is still the user's, refused."""
    from compress.runner_written import WRITTEN_BY
    from compress.runner_written import foreign_in_run_folder

    tmp_path, make, loads = pixart
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    for name in stages:
        path = run / "stages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_text("{}\n")
    (run / "stages" / newer).write_text(json.dumps(WRITTEN_BY) + "\n")
    assert foreign_in_run_folder(run) == (run / "stages" / newer if foreign else None)
    if foreign:
        with pytest.raises(UserError, match=f"{newer} was not written by dit-compress"):
            make(tmp_path / "out", run, restart=True).prepare()
    else:
        make(tmp_path / "out", run, restart=True).prepare()


def test_a_symlinked_json_file_in_stages_is_foreign(tmp_path):
    from compress.runner_written import foreign_in_run_folder

    (tmp_path / "stages" / "0-svd").mkdir(parents=True)
    (tmp_path / "stages" / "0-svd" / "state.json").write_text("{}\n")
    (tmp_path / "mine.json").write_text("{}\n")
    (tmp_path / "stages" / "env.json").symlink_to(tmp_path / "mine.json")
    assert foreign_in_run_folder(tmp_path) == tmp_path / "stages" / "env.json"


def _read_only(tmp_path, monkeypatch) -> Path:
    """A folder `rom` that cannot be written in: chmod 0o555, and where that does not hold (root
    writes anywhere) a mkdir or mkdtemp in it refused as a read-only mount refuses it."""
    import errno
    import os
    import tempfile

    rom = tmp_path / "rom"
    rom.mkdir()
    rom.chmod(0o555)
    if os.geteuid() == 0:
        def refuse(where):
            if Path(where) == rom or rom in Path(where).parents:
                raise OSError(errno.EROFS, "Read-only file system")
        mkdir, mkdtemp = Path.mkdir, tempfile.mkdtemp
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse(self.parent) or mkdir(self, *a, **k))
        monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, dir=None, **k: refuse(dir) or mkdtemp(*a, dir=dir, **k))
    return rom


@pytest.mark.parametrize("run_dir", ["rom/r", "rom/r/deeper", "rom"])
def test_a_run_folder_that_cannot_be_made_names_the_folder_that_cannot_be_written(tmp_path, monkeypatch, run_dir):
    """`--run-dir rom/r` on a read-only mount said 'cannot write in rom/r' (a folder not there), where
    --out names the folder above it that cannot be written; both name rom now."""
    from compress.runner_folders import check_folders

    rom = _read_only(tmp_path, monkeypatch)
    try:
        with pytest.raises(UserError) as e:
            check_folders(tmp_path / "out", tmp_path / run_dir, overwrite=False)
        assert str(e.value).startswith(f"run folder {tmp_path / run_dir}: cannot write in {rom}: ")
        with pytest.raises(UserError) as e:
            check_folders(rom / "out", tmp_path / "r", overwrite=False)
        assert str(e.value).startswith(f"output folder {rom / 'out'}: cannot write in {rom}: ")
    finally:
        rom.chmod(0o755)
