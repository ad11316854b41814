"""A streamed stage interrupted while it is written (compress/runner_pending.py): --resume writes it
from what its pass left in run_dir/stream/, without running the pass again, and the output is the
uninterrupted run's."""

import json

import pytest
import torch

from compress.io_output import load_transformer
from compress.runner_kept import saved_in_words
from compress.runner_pending import read_record
from compress.runner_resume import interrupted_run
from tests.runner_helpers import run_recipe, streamed_teacher


def _stop_in_stage(monkeypatch, stage: str):
    """save_pieces raises KeyboardInterrupt at the second shard it writes into `stage`'s temp folder."""
    from compress import stream

    real, written = stream.save_pieces, []

    def save_then_stop(path, state, metadata=None):
        if path.parent.name.startswith(f".{stage}.tmp-"):
            written.append(path)
            if len(written) == 2:
                raise KeyboardInterrupt
        real(path, state, metadata)
    monkeypatch.setattr(stream, "save_pieces", save_then_stop)
    return written


def _runs_of_svd(monkeypatch):
    from compress.passes import svd

    real, ran = svd.SVDPass.run, []
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, model, ctx: (ran.append(1), real(self, model, ctx))[1])
    return ran


def _without_times(report: dict) -> dict:
    """`report` without its timings, nor the fused_gelu list of an svd pass after the first, which
    any resumed run fills from the restored student (the uninterrupted one's is empty: it fused none)."""
    svd = report["svd"]
    layers = {name: {k: v for k, v in r.items() if k != "time_s"} for name, r in svd["layers"].items()}
    passes = [{k: v for k, v in r.items() if k != "fused_gelu" or i == 0} for i, r in enumerate(svd["passes"])]
    return dict(report, stages=[{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]],
                svd=dict(svd, layers=layers, passes=passes))


REMOVAL = "  - remove_blocks: {blocks: {blocks: [1]}}\n"  # blocks renumbered: read under their old names


@pytest.mark.parametrize("first, stage", [("", "0-svd"), (REMOVAL, "1-svd"), (REMOVAL, "0-remove_blocks")])
def test_an_interrupt_while_a_streamed_stage_is_written_is_finished_not_redone(tmp_path, monkeypatch, capsys,
                                                                             first, stage):
    text = streamed_teacher(tmp_path, "pixart").format(stream="true").replace("passes:\n", "passes:\n" + first)
    whole = run_recipe(tmp_path, text, "whole")
    total, done = 3 if first else 2, int(stage[0]) + 1  # passes in all, and done when the stage was written
    with monkeypatch.context() as m:
        written = _stop_in_stage(m, stage)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "cut")
    assert len(written) == 2
    run_dir = tmp_path / "run-cut"
    assert not (run_dir / "stages" / stage).exists()  # the stage was not written
    info = interrupted_run(run_dir, None)
    assert saved_in_words(info) == f"{done} of {total} passes done"  # the pass's work is kept
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _runs_of_svd(m)
        out = run_recipe(tmp_path, text, "cut", resume=True)
    assert len(ran) == total - done  # the svd passes after it alone: it did not run again
    said = capsys.readouterr().err
    assert f"resuming after pass {done}/{total} ({stage[2:]}), whose stage was being written when the run stopped: " \
           f"it is written from what the pass left in {run_dir / 'stream'}, without running the pass again" \
           in said.replace("\n", " ")
    # its held-out error, never measured, is measured now: said as what happened, not as a stop during that check
    assert f"pass {done}/{total} ({stage[2:]}, kept) was stopped while its stage was being written, before its " \
           "held-out check: measuring it now" in said.replace("\n", " ")
    assert "during its held-out check" not in said.replace("\n", " ")
    a, b = load_transformer(whole).state_dict(), load_transformer(out).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (whole, out))
    assert _without_times(ra) == _without_times(rb)
    assert not (run_dir / "stream" / "pending-stage").exists()


def _stopped_writing_its_first_stage(tmp_path, monkeypatch) -> tuple:
    """(recipe text, run folder) of a streamed run (svd, svd) of tmp_path/teacher, interrupted while its
    first stage was written (its record left)."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    with monkeypatch.context() as m:
        _stop_in_stage(m, "0-svd")
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "r")
    return text, tmp_path / "run-r"


def test_a_run_that_starts_over_discards_the_record(tmp_path, monkeypatch):
    """--restart (and a resume that does not finish it) leaves no record whose files its passes
    may spill over: an interrupt later offers no stage it did not write."""
    text, run_dir = _stopped_writing_its_first_stage(tmp_path, monkeypatch)
    assert (run_dir / "stream" / "pending-stage" / "state.json").is_file()
    from compress.passes import svd

    def stop(self, model, ctx):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(svd.SVDPass, "run", stop)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "r", restart=True)
    assert not (run_dir / "stream" / "pending-stage").exists()
    assert interrupted_run(run_dir, None) is None


def test_an_older_records_teacher_config_its_folder_teacher_does_not_read_is_no_other_teacher(tmp_path, monkeypatch,
                                                                                             capsys):
    """A record written before 652e195 holds a --teacher-config its folder teacher does not read: --resume
    read it as is (not as a stage's, runner_teacher_id.as_compared) and refused 'the teacher changed
    (--teacher-config was …, now not given)'. It is no change: --resume writes the stage from the record."""
    text, run_dir = _stopped_writing_its_first_stage(tmp_path, monkeypatch)
    record = run_dir / "stream" / "pending-stage" / "state.json"
    old = json.loads(record.read_text())
    old["teacher"]["config"] = str((tmp_path / "teacher" / "config.json").resolve())  # as the old code wrote it
    record.write_text(json.dumps(old))
    assert read_record(run_dir) == (0, {**old, "teacher": {**old["teacher"], "config": None}})
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _runs_of_svd(m)
        out = run_recipe(tmp_path, text, "r", resume=True)
    assert len(ran) == 1  # the second svd pass alone: the first did not run again
    assert "whose stage was being written when the run stopped" in capsys.readouterr().err.replace("\n", " ")
    assert (out / "config.json").is_file()


def test_an_older_record_of_other_statistics_is_not_finished(tmp_path, monkeypatch, capsys):
    """A record written before 29f6c36 records no statistics version: read_record left it out (a stage's
    state.json is read as of the version its run recorded: runner_resume.read_state), so after STATS_VERSION
    changed --resume finished and exported the svd stage measured under the old one. Now it is read as of
    its run's version, and the svd pass runs again."""
    import compress.calib_stats as calib_stats

    text, run_dir = _stopped_writing_its_first_stage(tmp_path, monkeypatch)
    record = run_dir / "stream" / "pending-stage" / "state.json"
    old = json.loads(record.read_text())
    was = old.pop("statistics")
    assert was == calib_stats.STATS_VERSION
    record.write_text(json.dumps(old))  # as a dit-compress before 29f6c36 wrote it
    assert read_record(run_dir)[1]["statistics"] == was
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 1)
    _resumed_without_the_record(tmp_path, monkeypatch, capsys, text)  # the record of the old statistics


def test_a_record_of_other_prompts_is_not_finished_where_its_source_records_no_inputs(tmp_path, monkeypatch, capsys):
    """A record whose source recorded no `inputs` (synthetic here, toy, an older run's) compares the recipe's
    prompts as recipe keys, as a saved stage's (runner_resume.inputs_apart): runner_restore._finishable
    left them out, so after the prompts changed a plain rerun said 'an interrupted run of another recipe (it
    differs in calibration.prompts.0, ...)' but --resume finished the record, keeping the pass. Now --resume
    runs that pass again, as it would from a saved stage of that recipe."""
    text, run_dir = _stopped_writing_its_first_stage(tmp_path, monkeypatch)
    assert read_record(run_dir)[1]["inputs"] is None  # (synthetic: no prompts read)
    changed = text.replace("heldout: 4}", "heldout: 4, prompts: [a cat, a dog]}")
    _resumed_without_the_record(tmp_path, monkeypatch, capsys, changed)  # the record of the other prompts


def _resumed_without_the_record(tmp_path, monkeypatch, capsys, text: str) -> None:
    """--resume of tmp_path/run-r with `text` runs both svd passes: the record there was not finished."""
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _runs_of_svd(m)
        run_recipe(tmp_path, text, "r", resume=True)
    assert len(ran) == 2
    assert "whose stage was being written when the run stopped" not in capsys.readouterr().err.replace("\n", " ")
