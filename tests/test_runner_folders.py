"""Output and run folders: checked before anything loads, never replacing a folder that is not an
earlier dit-compress output."""

import json
import re
from pathlib import Path

import pytest

from compress.cli import main
from compress.errors import UserError
from tests.runner_helpers import pixart_runner


@pytest.fixture
def pixart(tmp_path, monkeypatch):
    return pixart_runner(tmp_path, monkeypatch)


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
    from compress.io_export import atomic_folder

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
    assert err.startswith("dit-compress: error: output folder") and "\n" not in err and not loads


def test_teacher_options_and_resume_with_restart_are_refused_before_loading(pixart):
    tmp_path, make, loads = pixart
    with pytest.raises(UserError, match="--teacher is empty"):
        make(tmp_path / "out", teacher="").prepare()
    with pytest.raises(UserError, match="--teacher-config '/nonexistent': no such file or folder"):
        make(tmp_path / "out", teacher_config="/nonexistent").prepare()
    with pytest.raises(UserError, match="--resume continues an interrupted run and --restart discards it"):
        make(tmp_path / "out", resume=True, restart=True)
    assert main(["run", str(tmp_path / "r.yaml"), "--resume", "--restart"]) == 2
    assert not loads


def test_the_run_folder_is_read_without_importing_torch():
    """The CLI reads the run folder after a Ctrl-C that may come before torch is imported: importing
    torch then would keep the user waiting seconds, in the import a Ctrl-C can abort."""
    import subprocess
    import sys

    code = "import sys, compress.runner_folders; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


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


# ---- what a rerun reuses after Ctrl-C ------------------------------------------------------------
def test_ctrl_c_after_the_output_fishers_are_saved_says_a_rerun_reuses_them(pixart, monkeypatch, capsys):
    """It said 'nothing was saved yet: a rerun starts over', and the rerun read 24 Fishers back."""
    tmp_path, args = _stopped_in_svd(pixart, monkeypatch)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path / 'run'} keeps output Fishers (" in last
    assert ") measured so far: a rerun of this recipe and teacher reads back those it measured" in last
    assert "starts over" not in last
    monkeypatch.undo()
    assert main(args) == 0
    assert "finds output Fishers (" in capsys.readouterr().err  # ... that an earlier run measured: it reads back


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


def test_ctrl_c_counts_only_the_output_fishers_this_run_reads_back(pixart, monkeypatch, capsys):
    """It counted the Fishers of every teacher and calibration the run folder had seen, though a
    rerun reads back only those of its own fingerprint (calib/<fingerprint>/...)."""
    from compress.passes.svd import SVDPass
    from compress.runner import Runner
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"))
    other = tmp_path / "run" / "calib" / "0123456789abcdef" / "blocks" / "fisher-4probes"  # an earlier teacher's
    other.mkdir(parents=True)
    for i in range(50):
        (other / f"{i}.pt").write_bytes(b"")
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Runner, "prepare", interrupt)  # before the fingerprint is known: none measured
    assert main(args) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("nothing was saved yet: a rerun starts over")
    monkeypatch.undo()
    monkeypatch.setattr(SVDPass, "_compress", interrupt)
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    (fingerprint,) = [d.name for d in (tmp_path / "run" / "calib").iterdir() if d.name != "0123456789abcdef"]
    ours = len(list((tmp_path / "run" / "calib" / fingerprint).glob("*/fisher-*/*.pt")))
    assert ours and f"output Fishers ({ours} file" in last


def test_the_ctrl_c_note_counts_the_fishers_of_its_fingerprint(tmp_path):
    from compress.runner_folders import interrupt_note

    for fingerprint, n in (("aaaa", 2), ("bbbb", 3)):
        fishers = tmp_path / "calib" / fingerprint / "blocks" / "fisher-4probes"
        fishers.mkdir(parents=True)
        for i in range(n):
            (fishers / f"{i}.pt").write_bytes(b"")
    assert "(3 files)" in interrupt_note(tmp_path, fingerprint="bbbb")
    assert interrupt_note(tmp_path).endswith("nothing was saved yet: a rerun starts over")
    assert interrupt_note(tmp_path, fingerprint="cccc").endswith("nothing was saved yet: a rerun starts over")


def _calib_files(run_dir: Path, fingerprint: str) -> Path:
    """Block statistics as an interrupted svd pass leaves them (StatsCache names of svd_walk.digest)
    under calib/<fingerprint>/<model>/, beside its output Fishers; an unfinished save's .tmp too."""
    from compress.calib_stats import StatsCache
    from compress.passes.svd_walk import digest

    start = run_dir / "calib" / fingerprint / "0123456789abcdef"
    cache = StatsCache(start)
    for name in [digest("blocks", 0, [], [], False), digest("blocks", 1, [], [], False),
                 digest("stage", "blocks", 1, [], [], False), digest("conditioning", 16, [])]:
        cache.save(name, {})
    (start / "blocks-0000000000000000.tmp").write_bytes(b"")
    (start / "fisher-4probes").mkdir()
    (start / "fisher-4probes" / "0.pt").write_bytes(b"")
    return start


def test_the_ctrl_c_note_counts_sampled_inputs_and_block_statistics_a_rerun_reads_back(tmp_path):
    """It said 'nothing was saved yet: a rerun starts over' after the pipeline's finished sampling
    calls (RUN_DIR/inputs/<teacher>/<call>.pt) and an svd pass's block statistics were saved, which a
    rerun reads back; only this run's sampling calls (of its inputs folder, whose files of other
    prompts it would not read) and fingerprint are counted, no unfinished file."""
    from compress.calib_pipeline import inputs_cache_name
    from compress.runner_folders import interrupt_note

    folder = tmp_path / "inputs" / inputs_cache_name("toy:pixart", "0" * 16)
    folder.mkdir(parents=True)
    for i in range(5):  # calls 3 and 4: of prompts an earlier run read
        (folder / f"{i:020x}.pt").write_bytes(b"")
    (folder / f"{5:020x}.tmp-1234").write_bytes(b"")  # a call being written
    inputs = [folder / f"{i:020x}.pt" for i in (0, 1, 2, 5, 6)]  # this run's calls: 5 and 6 not finished
    (tmp_path / "inputs" / "another-teacher").mkdir()
    (tmp_path / "inputs" / "another-teacher" / f"{0:020x}.pt").write_bytes(b"")
    _calib_files(tmp_path, "aaaa"), _calib_files(tmp_path, "bbbb")
    end = ("measured so far: a rerun of this recipe and teacher reads back those it measured instead of "
           "measuring them again (keep the run folder)")
    assert interrupt_note(tmp_path, inputs=inputs) == f"; {tmp_path} keeps sampled inputs (3 sampling calls) {end}"
    assert interrupt_note(tmp_path, fingerprint="aaaa", inputs=inputs) == (
        f"; {tmp_path} keeps sampled inputs (3 sampling calls), block statistics (4 files), output Fishers "
        f"(1 file) {end}")
    assert interrupt_note(tmp_path, fingerprint="cccc") == "; nothing was saved yet: a rerun starts over"


PIPELINE_RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {source: pipeline, prompts: [a 1, a 2, a 3, a 4, a 5], sample_steps: 2, timesteps: 1,
              batch_size: 4, heldout: 1}
passes:
  - svd: {targets: [mlp], ratio: 0.5, multiple: 8}
"""


def test_ctrl_c_during_pipeline_sampling_says_a_rerun_reuses_the_calls_it_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the third sampling call said 'nothing was saved yet: a rerun starts over'; the two
    finished calls were on disk and the rerun sampled only the rest."""
    import compress.calib_pipeline as cp

    calls, real = [], cp.capture

    def counted(*args, **kwargs):
        calls.append(args[2])  # the prompts of this call
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cp, "capture", counted)
    interrupt = True
    (tmp_path / "r.yaml").write_text(PIPELINE_RECIPE)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dit-compress: interrupted; {tmp_path / 'run'} keeps sampled inputs (2 sampling "
                           "calls) measured so far: a rerun of this recipe and teacher reads back"), last
    interrupt = False
    assert main(args) == 0
    assert len(calls) == 3 + 3  # 5 prompts, one per call: the 3 not on disk


def _ctrl_c_at_save(monkeypatch, saved: int) -> list[str]:
    """A Ctrl-C when an svd pass saves block statistics after `saved` saves; -> the names saved."""
    from compress.calib_stats import StatsCache

    saves, real = [], StatsCache.save

    def save(self, name, stats):
        if len(saves) == saved:
            raise KeyboardInterrupt
        saves.append(name)
        return real(self, name, stats)

    monkeypatch.setattr(StatsCache, "save", save)
    return saves


def test_ctrl_c_after_block_statistics_are_saved_says_a_rerun_reuses_them(pixart, monkeypatch, capsys):
    """Ctrl-C in an svd pass after it saved the statistics of two blocks (calib/<fingerprint>/...)
    said nothing of them, though a rerun reads them back instead of calibrating those blocks again."""
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [mlp], fisher: none, ratio: 0.5}\n"))
    saves = _ctrl_c_at_save(monkeypatch, 2)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path / 'run'} keeps block statistics (2 files) measured so far: a rerun" in last, last
    monkeypatch.undo()
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saves) <= set(report["svd"]["cache_hits"]), report["svd"]["cache_hits"]


def test_ctrl_c_in_an_svd_pass_after_a_saved_pass_names_its_block_statistics(pixart, monkeypatch, capsys):
    """Ctrl-C in the svd pass after remove_blocks was saved said only '1 of 2 passes done', though the
    run folder kept the block statistics and output Fishers the svd pass had saved, which --resume reads back."""
    tmp_path, make, loads = pixart  # r.yaml: remove_blocks, then svd
    saves = _ctrl_c_at_save(monkeypatch, 1)  # of its 2 blocks
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"dit-compress: interrupted; {tmp_path / 'run'} keeps its work (1 of 2 passes done, block "
                    "statistics (1 file), output Fishers (12 files) measured so far): rerun with --resume to "
                    "continue"), last
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saves) <= set(report["svd"]["cache_hits"]), report["svd"]["cache_hits"]


KILLED_IN_A_STAGE_SAVE = """\
import os, signal, sys
import compress.io_export as io_export
real = io_export.save_file
def killed(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)
    if "1-svd" in path:  # the stage written whole in its temp folder, never renamed in
        os.kill(os.getpid(), signal.SIGKILL)
io_export.save_file = killed
from compress.cli import main
main(sys.argv[1:])
"""


def test_a_resumed_run_leaves_nothing_of_a_stage_save_killed_hard(pixart):
    """kill -9 in a stage save left stages/.1-svd.tmp-* (a model copy) through every resume and the
    finished run."""
    import subprocess
    import sys

    tmp_path, _, _ = pixart
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    child = subprocess.run([sys.executable, "-c", KILLED_IN_A_STAGE_SAVE, *argv], cwd=Path(__file__).parents[1],
                           capture_output=True)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    assert [p.name[:11] for p in (tmp_path / "run" / "stages").glob(".*")] == [".1-svd.tmp-"]
    assert main(argv + ["--resume"]) == 0
    assert [p.name for p in (tmp_path / "run" / "stages").glob(".*")] == []
    assert sorted(p.name for p in tmp_path.glob(".out*")) == []


def test_a_rerun_refused_after_ctrl_c_in_teacher_sampling_names_the_samples_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C while distill sampled the teacher said the run folder kept '1 of 2 passes done, teacher
    samples (2 of 4 shards)'; a rerun without --resume was refused with only '(1 of 2 passes done)',
    though --resume reads those samples back: it names them as the stop did."""
    import compress.distill_data as distill_data

    (tmp_path / "r.yaml").write_text(
        "model: pixart\nteacher: toy:pixart\ncalibration: {num_prompts: 2, timesteps: 2, batch_size: 4}\n"
        "passes:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
        "  - distill: {data: teacher_samples, num_samples: 8, sample_steps: 1, batch_size: 2, steps: 1}\n")
    sampled, real = [], distill_data._sample_shard

    def sample(*args, **kwargs):
        if len(sampled) == 2:
            raise KeyboardInterrupt
        sampled.append(real(*args, **kwargs))

    monkeypatch.setattr(distill_data, "_sample_shard", sample)
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    assert main(args) == 130
    kept = "1 of 2 passes done, teacher samples (2 of 4 shards) measured so far"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dit-compress: interrupted; {run} keeps its work ({kept}): rerun with --resume to continue")
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dit-compress: error: {run} holds an interrupted run of this recipe ({kept}): add --resume to continue, "
        "or --restart to start over")


def test_a_rerun_refused_after_ctrl_c_in_an_svd_pass_names_its_block_statistics(pixart, monkeypatch, capsys):
    """Ctrl-C in the svd pass after remove_blocks was saved kept its block statistics and output
    Fishers for --resume, and said so; a rerun without --resume, refused, said only '1 of 2 passes done'.
    They are those of the fingerprint the run recorded: a cache of another teacher's run written later
    (a copy, a touch) is not named, as it was when the newest file's cache was taken for the run's."""
    import os
    import time

    tmp_path, make, loads = pixart  # r.yaml: remove_blocks, then svd
    _ctrl_c_at_save(monkeypatch, 1)
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    assert main(args) == 130
    capsys.readouterr()
    refused = (f"dit-compress: error: {run} holds an interrupted run of this recipe (1 of 2 passes done, block "
               "statistics (1 file), output Fishers (12 files) measured so far): add --resume to continue, or "
               "--restart to start over")
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refused
    other = run / "calib" / "0123456789abcdef" / "fedcba9876543210"  # another teacher's cache, newer
    other.mkdir(parents=True)
    later = time.time() + 60
    for name in ("blocks-0.pt", "blocks-1.pt", "stage-0.pt"):
        (other / name).write_bytes(b"")
        os.utime(other / name, (later, later))
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refused



def test_a_rerun_of_another_recipe_refused_names_what_the_interrupted_run_measured(tmp_path):
    """The refusal of a plain rerun of another recipe named only the passes saved ('1 of 3 passes
    done'), where that of the same recipe names the block statistics, output Fishers and teacher
    samples kept too: it names them as that one does (those under the fingerprint the run recorded,
    which the passes after those --resume keeps read back), and how to go on; so does Ctrl-C's note."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_folders import check_run_folder, interrupt_note

    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
            "  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - distill: {data: teacher_samples, num_samples: 64, sample_steps: 4, batch_size: 4}\n")
    before, now = parse_recipe(text, "r.yaml"), parse_recipe(text, "r.yaml", ["passes.1.svd.ratio=0.25"])
    for stage in ("0-remove_blocks", "1-svd"):  # interrupted in its distill pass
        (tmp_path / "stages" / stage).mkdir(parents=True)
        (tmp_path / "stages" / stage / "state.json").write_text(json.dumps({"recipe": before.raw}))
    (tmp_path / "stages" / "run.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    model = tmp_path / "calib" / "aaaa" / "0123456789abcdef"
    (model / "fisher-4probes").mkdir(parents=True)
    for name in ("blocks-0.pt", "blocks-1.pt", "fisher-4probes/0.pt"):
        (model / name).write_bytes(b"")
    cache = tmp_path / "distill" / "teacher_samples" / "k1"
    cache.mkdir(parents=True)
    (cache / "about.json").write_text(json.dumps({"fingerprint": "aaaa", "num_samples": 64, "sample_steps": 4,
                                                  "batch_size": 4, "guidance_scale": 1.0, "shards": 16}))
    for i in range(3):
        (cache / f"shard-{i:05d}.safetensors").write_bytes(b"")
    held = (f"{tmp_path} holds an interrupted run of another recipe (it differs in passes.1.svd.ratio; 2 of 3 passes "
            "done, block statistics (2 files), output Fishers (1 file), teacher samples (3 of 16 shards) measured so "
            "far): --resume keeps its first 1 pass (with the same teacher) and runs the rest; ")
    with pytest.raises(UserError) as e:
        check_run_folder(tmp_path, now.raw, build_passes(now))
    assert str(e.value) == held + "add --restart to discard it and start over, or choose another --run-dir"
    assert interrupt_note(tmp_path, False, now.raw, build_passes(now)) == (
        f"; {held}a rerun needs --restart to discard it, or another --run-dir")


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
    from compress.runner_folders import WRITTEN_BY
    from compress.runner_folders import foreign_in_run_folder

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
    from compress.runner_folders import foreign_in_run_folder

    (tmp_path / "stages" / "0-svd").mkdir(parents=True)
    (tmp_path / "stages" / "0-svd" / "state.json").write_text("{}\n")
    (tmp_path / "mine.json").write_text("{}\n")
    (tmp_path / "stages" / "env.json").symlink_to(tmp_path / "mine.json")
    assert foreign_in_run_folder(tmp_path) == tmp_path / "stages" / "env.json"


def test_resume_with_nothing_saved_says_it_starts_from_the_first_pass(pixart, capsys):
    """`run --resume` on a run folder holding no saved pass nor checkpoint (or on none at all) ran from
    scratch silently; it says so in one line. A run folder whose passes are saved is resumed without it."""
    tmp_path, make, loads = pixart
    nothing = "nothing was saved in {} to resume from (no pass saved, no distill checkpoint): starting from the first pass"
    for run in (tmp_path / "missing", tmp_path / "empty"):
        if run.name == "empty":
            (run / "calib").mkdir(parents=True)
        capsys.readouterr()
        assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / f"out-{run.name}"), "--run-dir",
                     str(run), "--resume"]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "--resume:" in line]
        if run.name == "missing":  # it said 'nothing was saved in MISSING'
            assert said == [f"note: --resume: there is no folder {run} (a mistyped --run-dir?): starting from "
                            "the first pass"], said
        else:
            assert said == [f"note: --resume: {nothing.format(run)}"], said
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out-again"), "--run-dir",
                 str(tmp_path / "empty"), "--resume"]) == 0  # its passes saved by the run before
    assert "nothing was saved" not in capsys.readouterr().err


def test_resume_after_a_ctrl_c_in_pass_1_names_what_was_measured(pixart, monkeypatch, capsys):
    """Ctrl-C in pass 1 (its statistics measured, no pass saved), then --resume: it said 'nothing was
    saved in RUN to resume from' and then that pass 1 reads back block statistics an earlier run measured."""
    tmp_path, args = _stopped_in_svd(pixart, monkeypatch)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "--resume:" in line]
    assert len(said) == 1 and "nothing was saved" not in said[0], said
    assert said[0].startswith(f"note: --resume: no pass was saved in {tmp_path / 'run'} (no distill checkpoint): "
                              "starting from the first pass, reading back what an earlier run measured there ("), said
    assert "output Fishers (" in said[0], said


def _stopped_in_svd(pixart, monkeypatch) -> tuple:
    """(tmp_path, the run's arguments) of a one-svd-pass recipe run to a Ctrl-C as the pass compresses
    (its statistics and output Fishers measured, no pass saved)."""
    from compress.passes.svd import SVDPass
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                                   passes="  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"))

    def compress(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(SVDPass, "_compress", compress)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    return tmp_path, args


def test_a_rerun_with_another_calibration_counts_what_the_interrupted_run_kept(pixart, monkeypatch, capsys):
    """Ctrl-C in pass 2 (its first block's statistics saved): 'keeps its work (1 of 2 passes done, block
    statistics (1 file) measured so far)'. A plain rerun with another calibration.seed was refused naming
    pass 1's statistics too ('block statistics (N+1 files)'), though the run's --resume keeps pass 1 and
    never reads them: counted as that --resume reads them back, as its stop did."""
    from compress.calib_stats import StatsCache
    from tests.runner_helpers import SIMPLE

    tmp_path, make, loads = pixart
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=(
        "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2, fisher: none}\n"
        "  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n")))
    folders, real = [], StatsCache.save

    def save(self, name, stats):
        folders.append(self.directory) if self.directory not in folders else None
        real(self, name, stats)
        if len(folders) == 2:  # pass 2's first statistics written, then Ctrl-C
            raise KeyboardInterrupt
    monkeypatch.setattr(StatsCache, "save", save)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 130
    kept = "1 of 2 passes done, block statistics (1 file) measured so far"
    assert f"keeps its work ({kept})" in capsys.readouterr().err
    assert sum(1 for _ in folders[0].glob("*.pt")) > 0
    assert main(args + ["--set", "calibration.seed=1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"holds an interrupted run of another recipe (it differs in calibration.seed; {kept})" in last, last


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
