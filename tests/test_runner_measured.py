"""What a run interrupted before it saved a pass measured, refused to a plain rerun naming another
teacher before that teacher loads, with the advice that fits (compress.runner_measured)."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from tests.conftest import tiny_pixart
from tests.runner_helpers import STREAM_RECIPE
from tests.test_runner_folders_teacher import _changed_in_place

OTHER = "holds what was measured with another teacher or calibration"


@pytest.fixture
def interrupted(tmp_path, monkeypatch, capsys):
    """(run folder, the run's arguments, teacher loads): two svd passes on the tiny PixArt folder
    tmp_path/teacher, stopped by a Ctrl-C once pass 1 saved its first block statistics (no pass saved)."""
    import compress.runner_setup as runner_setup
    from compress.calib_stats import StatsCache

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(STREAM_RECIPE.format(family="pixart", teacher=tmp_path / "teacher",
                                                          stream="false"))
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    real = StatsCache.save

    def stopped(self, name, stats):
        real(self, name, stats)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(StatsCache, "save", stopped)
        assert main(args) == 130
    assert not list(run.glob("stages/*-*/state.json"))  # no pass saved
    loads, load = [], runner_setup.load_teacher
    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: (loads.append(a), load(*a, **k))[1])
    capsys.readouterr()
    return run, args, loads


def _refusal(args, capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_folder_teachers_config_edited_in_place_says_to_undo_the_edit(interrupted, capsys):
    """The teacher's config.json edited in place: refused once the teacher had loaded, 'of another teacher
    or calibration ... rerun with that teacher and calibration', though the teacher named is the same. Now
    before it loads, naming the file and advising to undo the edit, after which a plain rerun reads back."""
    run, args, loads = interrupted
    config = run.parent / "teacher" / "config.json"
    _changed_in_place(config)
    said = _refusal(args, capsys)
    assert said.startswith(f"dit-compress run: error: {run} holds what was measured with another teacher "
                           f"({config} changed since the run (its contents differ); block statistics (up to 1 file)"), said
    assert said.endswith(f"which this run does not read back: undo the change to {config} to read it back, add "
                         "--restart to discard it, or choose another --run-dir"), said
    assert loads == []  # said before the teacher loads
    _changed_in_place(config)  # undone, as advised: read back
    assert main(args) == 0


def test_another_teacher_named_says_which_and_to_rerun_with_it(interrupted, capsys):
    run, args, loads = interrupted
    other = run.parent / "teacher2"
    tiny_pixart(seed=1).save_pretrained(other)  # other weights (a byte-identical copy is this teacher)
    said = _refusal([*args, "--teacher", str(other)], capsys)
    assert said.startswith(f"dit-compress run: error: {run} holds what was measured with another teacher "
                           f"(was {run.parent / 'teacher'}, now {other} (the same config, other weights); block "
                           "statistics (up to 1 file)"), said
    assert said.endswith("which this run does not read back: rerun with that teacher to read it back, add --restart "
                         "to discard it, or choose another --run-dir"), said
    assert loads == []


def test_the_same_teacher_named_is_left_to_the_check_after_it_loads(interrupted, capsys):
    """Another calibration (a seed): said once the teacher has loaded and the fingerprints differ. It said
    'of another teacher or calibration ... rerun with that teacher and calibration', the teacher being the
    same; now it names the calibration key the run recorded and what it was."""
    run, args, loads = interrupted
    said = _refusal([*args, "--set", "calibration.seed=3"], capsys)
    assert said == (f"dit-compress run: error: {run} holds what was measured with this teacher and another "
                    "calibration (calibration.seed was 0, now 3; block statistics (up to 1 file)), which this run does not "
                    "read back: rerun with that calibration to read it back, add --restart to discard it, or choose "
                    "another --run-dir"), said
    assert len(loads) == 1


def test_a_run_that_recorded_no_calibration_says_what_may_differ(interrupted, capsys):
    """An older run folder's record (no calibration in stages/run.json): the same teacher, another seed is
    said to be its calibration or dit-compress's version, not 'another teacher'."""
    run, args, loads = interrupted
    record = json.loads((run / "stages" / "run.json").read_text())
    del record["calibration"]
    (run / "stages" / "run.json").write_text(json.dumps(record))
    said = _refusal([*args, "--set", "calibration.seed=3"], capsys)
    assert said.startswith(f"dit-compress run: error: {run} holds what was measured with this teacher and "
                           "another calibration (its calibration (seed, prompts, ...) or dit-compress's version (this "
                           "run folder does not record which); block statistics (up to 1 file)), which"), said
    assert OTHER not in said and len(loads) == 1


def test_weights_changed_in_place_say_the_teacher_changed_once_it_loads(interrupted, capsys):
    """The teacher folder's weights written again in place (its config the same): refused once the teacher
    had loaded with the generic 'of another teacher or calibration ... rerun with that teacher and
    calibration', though the run recorded the identity of the teacher it read, weights included. It
    says the teacher changed, as --resume over a saved pass does (runner_teacher_id.teacher_change)."""
    run, args, loads = interrupted
    teacher = run.parent / "teacher"
    config = (teacher / "config.json").read_bytes()
    tiny_pixart(seed=1).save_pretrained(teacher)
    assert (teacher / "config.json").read_bytes() == config  # the weights alone changed
    said = _refusal(args, capsys)
    assert said.startswith(f"dit-compress run: error: {run} holds what was measured with another teacher "
                           f"(the weights of {teacher} changed since the run (its config holds the same); block "
                           "statistics (up to 1 file)"), said
    assert said.endswith(f"which this run does not read back: put back the weights {teacher} had to read it back, "
                         "add --restart to discard it, or choose another --run-dir"), said
    assert len(loads) == 1  # the weights are known once it loads


def test_what_an_earlier_finished_run_measured_is_not_said_to_be_an_interrupted_runs(tmp_path, monkeypatch, capsys):
    """A finished run of an attention pass, then a pass of the modulation alone stopped by Ctrl-C before it
    measured anything: a rerun naming another teacher, or another seed, was refused as 'RUN holds what an
    interrupted run of another teacher measured (...; block statistics (up to 5 files))' (of this teacher
    '... with another calibration'), though the finished run had measured all of them. Now 'what was measured
    with another teacher', whose run not said."""
    from tests.test_runner_kept import _modulation_stopped_after_attention

    run, found, lines = _modulation_stopped_after_attention(tmp_path, monkeypatch, capsys)
    assert f"keeps block statistics (up to {found} files)" in lines[-1], lines[-1]  # all the finished run's
    tiny_pixart(seed=1).save_pretrained(tmp_path / "teacher2")
    assert run("modulation", "--teacher", str(tmp_path / "teacher2")) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress run: error: {tmp_path / 'run'} holds what was measured with another teacher "
                           f"(was {tmp_path / 'teacher'}, now {tmp_path / 'teacher2'} (the same config, other weights); "
                           f"block statistics (up to {found} files)), which this run does not read back"), said
    assert run("modulation", "--set", "calibration.seed=3") == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress run: error: {tmp_path / 'run'} holds what was measured with this teacher and "
                           f"another calibration (calibration.seed was 0, now 3; block statistics (up to {found} "
                           "files)), which this run does not read back"), said
    assert "interrupted" not in said
