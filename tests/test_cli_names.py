"""Names and paths a file system refuses or a command must not write through (cli.main, errors.too_long,
io_atomic.check_name_fits, runner_lock._output_lock, report.output_dir): one line naming the path and
what to do, before anything is made, never a traceback."""

import os
import re

import pytest

from compress.cli import main


def _said(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("where", ["out", "run-dir", "recipe"])
def test_a_name_longer_than_a_file_system_allows_is_one_line(pixart, capsys, where):
    """A 260-character --out, --run-dir or recipe name gave a traceback 'OSError: [Errno 36] File name too
    long' (runner_lock.py:174, runner.py:57, recipe_folder.py:23)."""
    tmp_path, make, loads = pixart
    long = "a" * 260
    recipe = tmp_path / ("r.yaml" if where != "recipe" else long + ".yaml")
    argv = ["run" if where != "recipe" else "plan", str(recipe)]
    argv += {"out": ["--out", str(tmp_path / long), "--run-dir", str(tmp_path / "run")],
             "run-dir": ["--out", str(tmp_path / "o"), "--run-dir", str(tmp_path / long)], "recipe": []}[where]
    capsys.readouterr()
    assert main(argv) == 2
    shown = f"{'a' * 40}…{'a' * 16 if where != 'recipe' else 'a' * 11 + '.yaml'}"
    assert _said(capsys) == (f"dit-compress {argv[0]}: error: the name {shown} ({260 + 5 * (where == 'recipe')} bytes) is longer "
                             "than a file system allows (at most 255 bytes a name); name a shorter one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "teacher"] and not loads


def test_a_path_longer_than_the_system_allows_is_one_line(pixart, capsys):
    """An --out over 4096 bytes: a traceback at runner_lock.py:149 (Path.exists of its parents)."""
    tmp_path, make, loads = pixart
    deep = tmp_path.joinpath(*["d" * 100] * 42)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(deep), "--run-dir", str(tmp_path / "run")]) == 2
    said = _said(capsys)
    shown = re.fullmatch(rf"dit-compress run: error: the path {re.escape(str(deep)[:40])}…d{{16}} \((\d+) bytes\) is "
                         r"longer than the system allows \(at most 4096 bytes a path\); name a shorter one", said)
    assert shown and 4096 < int(shown[1]) <= len(str(deep)), said  # (the first of its folders too long)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "teacher"] and not loads


def test_an_output_name_whose_temp_folder_would_not_fit_is_refused_before_any_work(pixart, capsys):
    """A 245-character --out is a legal name, but its lock .NAME.dit-compress.lock was not
    (traceback, runner_lock.py:174), nor is the temp folder .NAME.tmp-XXXXXXXX it is written as."""
    tmp_path, make, loads = pixart
    out = tmp_path / ("b" * 245)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 2
    assert _said(capsys) == (f"dit-compress run: error: output folder {str(out)[:40]}…{'b' * 16}: its name has 245 bytes, "
                             "and the output is written beside it first as .NAME.tmp-XXXXXXXX, which a file system "
                             "allows for names of at most 241 bytes; name a shorter folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "teacher"] and not loads


@pytest.mark.parametrize("size", [236, 237, 241])
def test_the_lock_of_an_output_with_a_long_name_fits_and_is_its_own(tmp_path, size):
    """.NAME.dit-compress.lock beside an output of up to 241 bytes (what its temp folder allows): its
    name fits (NAME cut, with a hash of the whole name), and two names alike up to the cut lock apart."""
    from compress.runner_lock import LOCK, _output_lock, hold_output

    a, b = tmp_path / ("é" * (size // 2) + "x" * (size % 2)), tmp_path / ("é" * (size // 2) + "y" * (size % 2))
    if size % 2 == 0:
        b = tmp_path / ("é" * (size // 2 - 1) + "zz")
    locks = _output_lock(a), _output_lock(b)
    assert all(len(os.fsencode(lock.name)) <= 255 and lock.name.endswith(LOCK) for lock in locks)
    assert locks[0] != locks[1]
    if size <= 236:
        assert locks[0].name == f".{a.name}{LOCK}"  # as before, where it fits
    with hold_output(a):
        assert locks[0].is_file()
        with hold_output(b):
            assert locks[1].is_file()
    assert sorted(tmp_path.iterdir()) == []


def test_an_output_that_is_a_link_names_where_it_links(pixart, capsys):
    """'--out LINK' was refused 'exists and is a link, not a folder; name a new folder': which folder
    the link leads to, which the user may have meant, was not said."""
    tmp_path, make, loads = pixart
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "outl").symlink_to(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "outl"), "--run-dir",
                 str(tmp_path / "run"), "--overwrite"]) == 2
    assert _said(capsys) == (f"dit-compress run: error: output folder {tmp_path / 'outl'} exists and is a link (to "
                             f"{tmp_path / 'elsewhere'}), not a folder; name a new folder")


def test_inspect_plot_into_a_file_says_it_is_a_file(tmp_path, capsys):
    """`inspect OUT --plot afile.txt` said 'cannot make the folder afile.txt (File exists)'."""
    from compress.errors import UserError
    from compress.report import output_dir

    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(UserError) as e:
        output_dir(tmp_path / "afile.txt", "--plot")
    assert str(e.value) == f"--plot: cannot make the folder {tmp_path / 'afile.txt'}: a file of that name is there"


def test_an_output_inside_the_teacher_through_a_link_is_refused_before_any_lock_is_made(pixart, capsys, monkeypatch):
    """`--out tlink/sub` (tlink: a link to the teacher's folder) was refused, but only after its lock
    file (and folders for it) had been made in the teacher's folder, then removed."""
    import compress.runner_lock as runner_lock

    tmp_path, make, loads = pixart
    (tmp_path / "tlink").symlink_to(tmp_path / "teacher")
    held = []
    real = runner_lock._hold
    monkeypatch.setattr(runner_lock, "_hold", lambda path, *a: (held.append(path), real(path, *a))[1])
    before = sorted(p.name for p in (tmp_path / "teacher").iterdir())
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "tlink" / "sub"), "--run-dir",
                 str(tmp_path / "run")]) == 2
    assert _said(capsys) == (f"dit-compress run: error: --out {tmp_path / 'tlink' / 'sub'} lies inside the teacher's "
                             f"folder {tmp_path / 'teacher'}; name an output folder outside it")
    assert held == [] and sorted(p.name for p in (tmp_path / "teacher").iterdir()) == before and not loads


@pytest.mark.parametrize("read_only", [True, False])
def test_plan_warns_of_a_run_folder_run_would_refuse_as_unwritable(pixart, capsys, monkeypatch, read_only):
    """`plan --run-dir romnt/x` (a read-only mount) warned nothing, while run refuses it at once
    ('run folder romnt/x: cannot write in romnt: Read-only file system'): plan says it as run does,
    as it says run's other refusals; writing nothing."""
    from compress.runner_folders import unwritable

    tmp_path, make, loads = pixart
    ro = tmp_path / "romnt"
    ro.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def statvfs(p):  # the mount's flags: read-only or not
        st = real_statvfs(p)
        if str(p) != str(ro):
            return st
        return os.statvfs_result([*st[:8], os.ST_RDONLY if read_only else 0, st[9]])

    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real_access(p, mode, **kw))
    monkeypatch.setattr(os, "statvfs", statvfs)
    why = "Read-only file system" if read_only else "Permission denied"
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "r.yaml"), "--run-dir", str(ro / "x")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: run folder {ro / 'x'}: cannot write in {ro}: {why}; `dit-compress run` would refuse this "
            "before it loads the teacher\n") in err
    assert list(ro.iterdir()) == [] and unwritable(tmp_path / "w" / "x", "run folder") is None
