"""A JSON file in a run folder's stages/: a newer dit-compress's (it says so: WRITTEN_BY) is tolerated,
a user's own is refused, never deleted with the stages a rerun replaces."""

import json

import pytest

from compress.cli import main
from tests.runner_helpers import pixart_runner


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """(tmp_path, argv of a run, its run folder) after the run finished on the tiny PixArt teacher."""
    pixart_runner(tmp_path, monkeypatch)
    run = tmp_path / "run"
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    assert main(argv) == 0
    return tmp_path, argv, run


@pytest.mark.parametrize("flag", [[], ["--restart"], ["--resume"]])
def test_a_users_json_file_in_a_finished_runs_stages_is_refused_not_deleted(finished, flag, capsys):
    """Since stages/*.json beside a run's stages was taken as a newer dit-compress's, a user's
    stages/notes.json was deleted silently when the finished run started over (or on --restart)."""
    tmp_path, argv, run = finished
    notes = run / "stages" / "notes.json"
    notes.write_text('{"mine": 1}\n')
    capsys.readouterr()
    assert main([*argv, "--overwrite", *flag]) != 0
    assert f"{notes} was not written by dit-compress" in capsys.readouterr().err
    assert notes.read_text() == '{"mine": 1}\n'


@pytest.mark.parametrize("flag", [[], ["--restart"], ["--resume"]])
def test_a_json_file_a_newer_dit_compress_wrote_in_stages_is_tolerated(finished, flag):
    """One that says dit-compress wrote it (a newer version's record) does not stop a rerun: --resume
    keeps it, a run that starts over replaces it with the stages."""
    from compress.runner_written import WRITTEN_BY

    tmp_path, argv, run = finished
    newer = run / "stages" / "env.json"
    newer.write_text(json.dumps({**WRITTEN_BY, "env": 1}) + "\n")
    assert main([*argv, "--overwrite", *flag]) == 0
    assert newer.is_file() == (flag == ["--resume"])
    assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("text, ours", [
    ('{"written_by": "dit-compress", "fingerprint": "ab"}', True),
    ('{"written_by": "dit-compress"}', True),
    ("{}", False),
    ('{"mine": 1}', False),
    ('{"written_by": "me"}', False),
    ('["written_by", "dit-compress"]', False),
    ('"dit-compress"', False),
    ("not json", False),
    ("[" * 100000, False),
    ("", False)])
def test_only_a_json_object_saying_dit_compress_wrote_it_is_ours(tmp_path, text, ours):
    from compress.runner_written import says_written_by_us

    (tmp_path / "f.json").write_text(text)
    assert says_written_by_us(tmp_path / "f.json") is ours
    assert says_written_by_us(tmp_path / "missing.json") is False


def test_a_large_json_file_is_not_read(tmp_path):
    from compress.runner_written import says_written_by_us

    (tmp_path / "f.json").write_text('{"written_by": "dit-compress", "pad": "' + "x" * 2048 + '"}')
    assert says_written_by_us(tmp_path / "f.json")
    assert not says_written_by_us(tmp_path / "f.json", limit=1024)


def test_this_version_marks_the_json_it_writes_in_stages_and_reads_unmarked_ones(finished):
    """run.json, finished.json and each stage's state.json say dit-compress wrote them, so a later
    version can tell them from a user's file; a run folder written before the mark still resumes."""
    from compress.runner_written import WRITTEN_BY

    tmp_path, argv, run = finished
    written = sorted([*(run / "stages").glob("*.json"), *(run / "stages").glob("*/state.json")])
    assert {p.name for p in written} >= {"run.json", "finished.json", "state.json"}
    for path in written:
        data = json.loads(path.read_text())
        assert data.get("written_by") == WRITTEN_BY["written_by"], path
        path.write_text(json.dumps({k: v for k, v in data.items() if k != "written_by"}) + "\n")  # as before
    assert main([*argv, "--overwrite", "--resume"]) == 0


def test_the_temp_file_of_the_run_record_a_kill_left_is_the_runs_own(tmp_path):
    """stages/.run.tmp-PID.json, which runner_stages.record_run writes run.json as (renamed over it), is
    left where the run was killed mid-write: a rerun does not refuse it as a user's file; a folder by
    that name, or another name, is still refused."""
    from compress.runner_written import foreign_in_run_folder

    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / ".run.tmp-1234.json").write_text('{"written_by": "dit-c')
    assert foreign_in_run_folder(tmp_path) is None
    (stages / ".run.tmp-x.json").write_text("{}")
    assert foreign_in_run_folder(tmp_path) == stages / ".run.tmp-x.json"
    (stages / ".run.tmp-x.json").unlink()
    (stages / ".run.tmp-5.json").mkdir()
    assert foreign_in_run_folder(tmp_path) == stages / ".run.tmp-5.json"
