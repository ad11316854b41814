"""What --resume says of where a run stopped, and what it does, for stops between a pass's end and
the output: once a streamed stage was saved but before the copies it replaces were deleted, and
during the export (its output not written)."""

import pytest

from compress.runner import Runner
from compress.runner_stream import StreamedModels
from tests.runner_helpers import pixart_runner, run_recipe, streamed_teacher
from tests.test_runner_stages_pending import _runs_of_svd

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_streamed_run_stopped_before_the_copies_its_last_stage_replaces_were_deleted(tmp_path, monkeypatch,
                                                                                      capsys):
    """Stopped in StreamedModels.adopt of the last pass (its stage saved; its spilled blocks and the
    earlier stage not yet deleted, a copy of the model each): --resume says so, does not run the pass
    again, and deletes those copies, which no later pass would."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    real, adopted = StreamedModels.adopt, []

    def adopt_then_stop(self, student, stage, **kw):
        adopted.append(stage.name)
        if len(adopted) == 2:  # pass 2's
            raise KeyboardInterrupt
        real(self, student, stage, **kw)
    with monkeypatch.context() as m:
        m.setattr(StreamedModels, "adopt", adopt_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "cut")
    run_dir = tmp_path / "run-cut"
    assert adopted == ["0-svd", "1-svd"]
    assert any((run_dir / "stream").iterdir()) and (run_dir / "stages" / "0-svd").is_dir()  # not deleted yet
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _runs_of_svd(m)
        run_recipe(tmp_path, text, "cut", resume=True)
    assert ran == []  # both passes kept
    said = capsys.readouterr()
    said = (said.out + said.err).replace("\n", " ")
    assert "pass 2/2 (svd, kept) was stopped after its stage was saved, before its held-out check: measuring it " \
           "now" in said
    assert "during its held-out check" not in said
    assert sorted(p.name for p in (run_dir / "stages").iterdir() if p.is_dir()) == ["1-svd"]
    assert not (run_dir / "stream").exists()


def test_a_resume_after_a_stop_during_the_export_writes_the_output_not_again(tmp_path, monkeypatch, capsys):
    tmp_path, make, _ = pixart_runner(tmp_path, monkeypatch)  # remove_blocks, then svd

    def stop(self, student, teacher_params):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(Runner, "export", stop)
        with pytest.raises(KeyboardInterrupt):
            make(tmp_path / "out").run()
    assert not (tmp_path / "out").exists()
    capsys.readouterr()

    def resumed() -> list[str]:
        make(tmp_path / "out", resume=True, overwrite=True).run()
        said = capsys.readouterr()
        return [line for line in (said.out + said.err).splitlines() if line.startswith(("resuming", "all "))]
    # it said 'resuming all 2 passes done (...): the output is written'
    assert resumed() == ["all 2 passes were done (remove_blocks, svd): writing the output"]
    assert (tmp_path / "out" / "config.json").is_file()
    # a finished run resumed: its output was written, and is written again
    assert resumed() == ["all 2 passes were done (remove_blocks, svd): writing the output again"]
