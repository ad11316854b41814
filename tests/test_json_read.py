"""compress/json_read.py: a JSON file nested past Python's recursion limit ('[' * 100000) is read as any
other file that is no JSON (a ValueError), where json's RecursionError went through the readers'
`except (OSError, ValueError)` as a traceback (R3 stop 50)."""

from __future__ import annotations

import os
import shutil

import pytest

from compress.cli import main
from tests.runner_helpers import SIMPLE

DEEP = "[" * 100_000
GARBAGE = "{not json"


def test_json_nested_too_deep_is_a_value_error_with_recursions_words(tmp_path):
    from compress.json_read import NestedTooDeep, parse, read

    (tmp_path / "a.json").write_text(DEEP)
    with pytest.raises(NestedTooDeep, match="maximum recursion depth exceeded") as e:
        read(tmp_path / "a.json")
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError):
        parse(GARBAGE)
    assert parse(b'{"a": [1]}') == {"a": [1]}


def _lock_record(path):
    from compress.runner_lock import _read

    fd = os.open(path, os.O_RDONLY)
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _sites():
    """(reader of a folder, the file under it that it reads): the readers json_read serves."""
    from compress import (distill_data, io_single_config, io_source, pipeline_family, plan_memory, report_teacher,
                          runner_caches_keyed, runner_config_sum, runner_kept, runner_measured, runner_pending,
                          runner_ranks, runner_resume, runner_written)
    from compress.passes import distill_checkpoint_folders, distill_resume

    samples = runner_resume.TEACHER_SAMPLES / "k" / runner_resume.SAMPLES_ABOUT
    return {
        "state.json": (lambda d: runner_resume.read_state(d), "state.json"),
        "run.json": (lambda d: runner_resume.run_record(d), f"stages/{runner_resume.RUN_RECORD}"),
        "read-by.json (readers)": (lambda d: runner_kept.readers_of(d), runner_kept.READ_BY),
        "read-by.json (pass)": (lambda d: runner_kept._read_by(d), runner_kept.READ_BY),
        "a rank record": (lambda d: runner_ranks.read_json(d / "r.json"), "r.json"),
        "kept-past-stage.json": (lambda d: distill_checkpoint_folders.kept_past(d), distill_resume.KEPT_PAST),
        "meta.json": (lambda d: distill_resume.newest_meta(d), "step-00000001/meta.json"),
        "report.json": (lambda d: report_teacher.reported_blocks(d), "report.json"),
        "config.json (record)": (lambda d: io_source.config_record(d / "config.json"), "config.json"),
        "transformer/config.json": (lambda d: pipeline_family._transformer_config(d), "transformer/config.json"),
        "config.json (checksum)": (lambda d: runner_config_sum.config_checksum(d / "config.json"), "config.json"),
        "complete.json": (lambda d: distill_data._complete(d, 4), "complete.json"),
        "about.json (keyed)": (lambda d: runner_caches_keyed.keyed_by(d / samples.parent, d), str(samples)),
        "about.json (latest)": (lambda d: runner_measured.latest_fingerprint(d), str(samples)),
        "pending state.json": (lambda d: runner_pending.read_record(d), f"{runner_pending.PENDING}/state.json"),
        "index.json": (lambda d: plan_memory.component_files(d), "model.safetensors.index.json"),
        "a lock file": (lambda d: _lock_record(d / "lock"), "lock"),
        "a single file's config": (lambda d: io_single_config._config_or_why(d / "config.json"), "config.json"),
        "a newer run's record": (lambda d: runner_written.says_written_by_us(d / "notes.json"), "notes.json"),
    }


@pytest.mark.parametrize("site", list(_sites()))
def test_each_reader_takes_json_nested_too_deep_as_any_json_that_does_not_parse(tmp_path, site):
    reader, name = _sites()[site]
    said = {}
    for text in (GARBAGE, DEEP):
        folder = tmp_path / str(len(said))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
        said[text] = reader(folder)
    if site == "a single file's config":  # (it says why, in json's words)
        assert said[DEEP].startswith("maximum recursion depth exceeded"), said
    elif site == "config.json (checksum)":  # (the file's bytes)
        assert said[DEEP] != said[GARBAGE] and said[DEEP] is not None
    else:
        assert said[DEEP] == said[GARBAGE], said


TWO_SVD = ("  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n"
           "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2}\n")


def test_commands_on_a_run_folder_with_a_record_nested_too_deep_say_what_they_say_of_a_damaged_one(
        pixart, capsys):
    """run --resume ended in a RecursionError traceback where stages/run.json, a stage's state.json or a stats
    cache's read-by.json was nested past the recursion limit; now it does what it does where they hold no JSON.
    inspect and eval of an output whose report.json is so say one line (they did: io.read_json)."""
    tmp_path = pixart[0]
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=TWO_SVD))
    out, run = tmp_path / "out", tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir", str(run)]
    assert main(args) == 0
    shutil.copytree(run, tmp_path / "kept")
    read_by = sorted(run.glob("calib/*/*/read-by.json"))[0]
    for name in ("stages/run.json", "stages/1-svd/state.json", str(read_by.relative_to(run))):
        said = {}
        for text in (GARBAGE, DEEP):
            shutil.rmtree(run)
            shutil.copytree(tmp_path / "kept", run)
            (run / name).write_text(text)
            capsys.readouterr()
            said[text] = main(args + ["--resume", "--overwrite"]), capsys.readouterr().err
        assert "Traceback" not in said[DEEP][1] and said[DEEP][0] == said[GARBAGE][0] == 0, (name, said[DEEP])
    (out / "report.json").write_text(DEEP)
    for command in ("inspect", "eval"):
        assert main([command, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"dit-compress {command}: error: cannot read {out / 'report.json'}: maximum recursion depth " \
                              "exceeded while decoding a JSON array from a unicode string", err
