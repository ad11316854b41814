"""The output and the run folder are clear of the teacher (runner_folders.check_clear_of_teacher):
never the teacher's folder, --teacher-config's, nor a folder holding them where a run writes."""

import re
from pathlib import Path

import pytest

from compress.cli import main
from compress.errors import UserError


# ---- the output is never the teacher's folder --------------------------------------------------
@pytest.mark.parametrize("out, words", [
    ("teacher", "--out teacher is the teacher's folder"),
    ("teacher/sub", "--out teacher/sub lies inside the teacher's folder"),
])
def test_an_output_in_the_teachers_folder_is_refused(pixart, monkeypatch, out, words):
    """--out naming a copy of an earlier output used as the teacher replaced the teacher: the
    output then named itself as its teacher, and eval said error 0."""
    import shutil

    from compress.io_export import save_compressed
    from tests.conftest import tiny_pixart

    tmp_path, make, loads = pixart
    shutil.rmtree(tmp_path / "teacher")
    save_compressed(tiny_pixart(), tmp_path / "teacher")  # an output: --overwrite could replace it
    before = sorted(p.name for p in (tmp_path / "teacher").iterdir())
    monkeypatch.chdir(tmp_path)
    for teacher in (str(tmp_path / "teacher"), "teacher", "./teacher/"):
        with pytest.raises(UserError, match=words):
            make(Path(out), tmp_path / "run", teacher=teacher, overwrite=True).prepare()
    with pytest.raises(UserError, match=words):  # the recipe's teacher
        make(Path(out), tmp_path / "run", overwrite=True).prepare()
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == before and not loads


def test_an_output_holding_the_teachers_folder_is_refused(tmp_path, monkeypatch):
    from compress.runner_folders import check_clear_of_teacher

    (tmp_path / "a" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--out a holds the teacher's folder a/teacher"):
        check_clear_of_teacher(Path("a"), "a/teacher")
    check_clear_of_teacher(Path("a/out"), "a/teacher")  # beside it: allowed


def test_an_output_holding_a_single_file_teacher_is_refused(pixart, monkeypatch):
    tmp_path, make, loads = pixart
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    from compress.runner_folders import check_clear_of_teacher

    for out in ("ckpt", str(tmp_path)):
        with pytest.raises(UserError, match="holds the teacher ckpt/model.safetensors"):
            check_clear_of_teacher(Path(out), "ckpt/model.safetensors")
    check_clear_of_teacher(Path("ckpt/out"), "ckpt/model.safetensors")  # beside the file: allowed
    for teacher in ("toy:pixart", "owner/name", None):  # not local
        check_clear_of_teacher(Path("teacher"), teacher)


def test_cli_output_over_the_recipes_teacher_is_one_line(pixart, capsys):
    tmp_path, make, loads = pixart
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "teacher" / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lies inside the teacher's folder" in err and "\n" not in err and not loads


# ---- nor --teacher-config's, and the run folder is not the teacher's ----------------------------
@pytest.mark.parametrize("config, out, words", [
    ("prev", "prev", "--out prev is the folder of the --teacher-config prev; name an output folder"),
    ("prev/config.json", "prev", "--out prev is the folder of the --teacher-config prev/config.json"),
    ("pipe", "pipe/transformer", "--out pipe/transformer is the folder of the --teacher-config pipe"),
])
def test_an_output_over_the_teacher_config_is_refused(pixart, monkeypatch, config, out, words):
    """--out naming the folder of --teacher-config (an earlier output's, which --overwrite may
    replace) replaced the config the run reads its teacher by."""
    from compress.io_export import save_compressed
    from compress.runner_folders import check_clear_of_teacher
    from tests.conftest import tiny_pixart

    tmp_path, make, loads = pixart
    save_compressed(tiny_pixart(), tmp_path / "prev")
    save_compressed(tiny_pixart(), tmp_path / "pipe" / "transformer")  # a pipeline folder's transformer
    before = (tmp_path / "prev" / "config.json").read_text()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=words):
        make(Path(out), tmp_path / "run", teacher_config=config, overwrite=True).prepare()
    assert (tmp_path / "prev" / "config.json").read_text() == before and not loads
    for beside in ("out", "prev/out", "pipe/out"):  # allowed: nothing of the config replaced
        check_clear_of_teacher(Path(beside), None, config)
    with pytest.raises(UserError, match="--out . holds the --teacher-config prev; name an output folder"):
        check_clear_of_teacher(Path("."), None, "prev")  # (check_replaceable refuses such an --out first)


@pytest.mark.parametrize("run_dir, words", [
    ("teacher", "--run-dir teacher is the teacher's folder teacher"),
    ("teacher/run", "--run-dir teacher/run lies inside the teacher's folder teacher"),
])
def test_a_run_folder_in_or_over_the_teachers_folder_is_refused(pixart, monkeypatch, run_dir, words):
    """The run's caches and stages mixed with the teacher's files (--restart removes stages/)."""
    tmp_path, make, loads = pixart
    before = sorted(p.name for p in (tmp_path / "teacher").iterdir())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=words):
        make(tmp_path / "out", Path(run_dir), teacher="teacher").prepare()
    assert main(["run", "r.yaml", "--out", "out", "--run-dir", run_dir]) == 2  # the recipe's teacher
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == before and not loads


def test_a_run_folder_holding_the_teacher_where_a_run_writes_is_refused(tmp_path, monkeypatch):
    from compress.runner_folders import check_clear_of_teacher

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt" / "stages").mkdir()
    (tmp_path / "ckpt" / "stages" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="--run-dir ckpt holds the teacher ckpt/stages/model.safetensors; name a run"):
        check_clear_of_teacher(Path("out"), "ckpt/stages/model.safetensors", run_dir=Path("ckpt"))
    with pytest.raises(UserError, match="--run-dir ckpt holds the teacher's folder ckpt/stages; name a run"):
        check_clear_of_teacher(Path("out"), "ckpt/stages", run_dir=Path("ckpt"))
    for written in ("distill_old/checkpoints/step-1", "sensitivity/t", "calib/t"):  # --restart / a run's
        (tmp_path / "ckpt" / written).mkdir(parents=True)
        with pytest.raises(UserError, match=f"--run-dir ckpt holds the teacher's folder ckpt/{written}"):
            check_clear_of_teacher(Path("out"), f"ckpt/{written}", run_dir=Path("ckpt"))
    # where a run writes nothing (a run folder of scratch space holding models/): allowed
    check_clear_of_teacher(Path("out"), "ckpt/model.safetensors", run_dir=Path("ckpt"))
    check_clear_of_teacher(Path("out"), "ckpt", run_dir=Path("."))
    check_clear_of_teacher(Path("out"), "ckpt/model.safetensors", run_dir=Path("ckpt/run"))  # beside: allowed
    check_clear_of_teacher(Path("out"), "teacher", run_dir=Path("teacher"))  # a Hub id: not local


def test_a_run_folder_whose_removed_caches_log_is_the_teacher_is_refused(tmp_path, monkeypatch):
    """RUN/removed-caches.log is a file a run writes (runner_caches.log_removed appends to it): a single-file
    teacher by that name in the run folder would have lines of text appended to its weights; refused like
    one in stages/."""
    from compress.runner_caches import REMOVED_LOG
    from compress.runner_folders import check_clear_of_teacher

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / REMOVED_LOG).write_bytes(b"")
    with pytest.raises(UserError, match=f"--run-dir ckpt holds the teacher ckpt/{REMOVED_LOG}; name a run"):
        check_clear_of_teacher(Path("out"), f"ckpt/{REMOVED_LOG}", run_dir=Path("ckpt"))
    check_clear_of_teacher(Path("out"), f"ckpt/{REMOVED_LOG}.d/model.safetensors", run_dir=Path("ckpt"))  # not it


@pytest.mark.parametrize("name", [".dit-compress.lock", ".dit-compress.handoff", ".dit-compress.rank-1",
                                  ".dit-compress.rank-1.tmp-42", ".clock-42"])
def test_a_run_folder_whose_lock_hand_off_answer_or_clock_file_is_the_teacher_is_refused(tmp_path, monkeypatch,
                                                                                         name):
    """RUN_WRITTEN lacked the files a run writes at the top of its run folder besides removed-caches.log:
    its lock (runner_lock.LOCK), rank 0's hand-off (runner_ranks.HANDOFF), each follower's answer
    (runner_answers.ANSWER-N, written as .tmp-PID first) and runner_caches.clock_ns's .clock-PID: a
    single-file teacher by such a name passed check_clear_of_teacher and would be written over or
    removed; refused."""
    from compress.runner_folders import check_clear_of_teacher

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / name).write_bytes(b"")
    with pytest.raises(UserError, match=f"--run-dir ckpt holds the teacher ckpt/{re.escape(name)}; name a run"):
        check_clear_of_teacher(Path("out"), f"ckpt/{name}", run_dir=Path("ckpt"))
    (tmp_path / "ckpt" / f"{name}x.safetensors").write_bytes(b"")  # another name: clear of what a run writes
    check_clear_of_teacher(Path("out"), f"ckpt/{name}x.safetensors", run_dir=Path("ckpt"))


def test_runner_run_refuses_a_folder_in_the_teachers_before_its_locks(pixart, monkeypatch):
    """Runner.run() (the Python API) took its locks before prepare's check_folders refused an --out or
    --run-dir in the teacher's folder (the CLI checks first): a lock file made in the teacher's folder, and
    what looked like a killed export's leftovers beside the output handled there (teacher/.o.old-* put back
    as teacher/o), before the refusal. Now it refuses first: no lock taken, the teacher's folder unchanged."""
    from compress import runner_lock

    tmp_path, make, loads = pixart
    teacher = tmp_path / "teacher"
    (teacher / ".o.old-abcdefgh").mkdir()
    (teacher / ".o.old-abcdefgh" / "notes.txt").write_text("the user's")
    before = sorted((p.relative_to(teacher), p.is_dir()) for p in teacher.rglob("*"))
    taken = []
    real = runner_lock._locked
    monkeypatch.setattr(runner_lock, "_locked", lambda path, *a: (taken.append(path), real(path, *a))[1])
    for out, run_dir, words in [(teacher / "o", tmp_path / "run", "--out .* lies inside the teacher's folder"),
                                (tmp_path / "out", teacher, "--run-dir .* is the teacher's folder")]:
        with pytest.raises(UserError, match=words):
            make(out, run_dir, overwrite=True).run()
    assert sorted((p.relative_to(teacher), p.is_dir()) for p in teacher.rglob("*")) == before
    assert not taken and not loads and not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
