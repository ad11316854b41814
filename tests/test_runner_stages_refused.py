"""A stage whose student's held-out prediction holds NaN/Inf (runner_heldout.check_stage refuses it) is
deleted (runner_stages.drop_refused): the run folder keeps no stage of non-finite weights, and --resume
runs that pass again from the stage before it (a streamed run keeps that one until the check) rather
than measure the same NaN again and fail with the same words."""

import pytest

from compress.errors import NumericError
from compress.passes import svd
from tests.runner_helpers import SIMPLE, run_recipe, streamed_teacher
from tests.conftest import tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

TWO_SVD = ("  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n"
           "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2, fisher: none}\n")


def _second_svd_pass_nan(monkeypatch, finite: bool = False) -> list:
    """SVDPass.run counted (the list returned); its second call hands on a student whose (resident)
    output layer holds NaN, as a pass that diverged would (`finite`: whose block 1 modulates by 1e38,
    finite weights whose prediction overflows)."""
    real, ran = svd.SVDPass.run, []

    def run(self, model, ctx):
        ran.append(1)
        model = real(self, model, ctx)
        if len(ran) == 2 and finite:
            model.transformer_blocks[1].scale_shift_table.data[:] = 1e38
        elif len(ran) == 2:
            model.proj_out.weight.data[:] = float("nan")
        return model
    monkeypatch.setattr(svd.SVDPass, "run", run)
    return ran


def _counted(monkeypatch) -> list:
    real, ran = svd.SVDPass.run, []
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, model, ctx: (ran.append(1), real(self, model, ctx))[1])
    return ran


def _stages(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "stages").iterdir() if p.is_dir())


def test_a_refused_stage_is_deleted_and_resume_runs_its_pass_again(tmp_path, monkeypatch, capsys):
    """Its stage stayed saved: --resume measured it again and failed with the same words, the pass
    never ran again."""
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes=TWO_SVD)
    with monkeypatch.context() as m:
        _second_svd_pass_nan(m)
        with pytest.raises(NumericError) as e:
            run_recipe(tmp_path, text, "r")
    said = str(e.value)
    assert said.startswith(f"{tmp_path / 'r.yaml'}:6: pass 2/2 (svd): the student's prediction holds NaN/Inf"), said
    assert said.endswith("; change its settings and rerun with --resume (it keeps the passes before it)"), said
    run_dir = tmp_path / "run-r"
    assert _stages(run_dir) == ["0-svd"]  # pass 1's kept, pass 2's (NaN weights) not
    capsys.readouterr()
    with monkeypatch.context() as m:
        ran = _counted(m)
        run_recipe(tmp_path, text, "r", resume=True)
    assert ran == [1]  # pass 2 only
    assert (tmp_path / "out-r").is_dir()
    assert "resuming after pass 1/2 (svd)" in capsys.readouterr().err.replace("\n", " ")


def test_a_streamed_run_keeps_the_stage_before_a_refused_one(tmp_path, monkeypatch):
    """A streamed run deleted the stage before as it saved the refused one (StreamedModels.adopt): the run
    folder kept only the NaN stage, which --resume measured again."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    with monkeypatch.context() as m:
        _second_svd_pass_nan(m)
        with pytest.raises(NumericError, match=r"pass 2/2 \(svd\): the student's prediction holds NaN/Inf.*; "
                                               r"change its settings and rerun with --resume"):
            run_recipe(tmp_path, text, "s")
    run_dir = tmp_path / "run-s"
    assert _stages(run_dir) == ["0-svd"]
    with monkeypatch.context() as m:
        ran = _counted(m)
        run_recipe(tmp_path, text, "s", resume=True)
    assert ran == [1]
    assert _stages(run_dir) == ["1-svd"]  # once checked, the stage before it goes (one copy of the student)
    assert (tmp_path / "out-s").is_dir()


def test_a_kept_stage_refused_by_its_check_on_resume_is_deleted_too(tmp_path, monkeypatch):
    """A run stopped during the held-out check of a stage whose prediction overflows: --resume measures it
    (runner_heldout.check_kept) and refuses it; that stage was kept, so every --resume did the same. (A stage
    of NaN weights that old code kept was worse: --resume refused it as damaged and said to --restart.)"""
    import compress.runner_heldout

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes=TWO_SVD)
    real, checks = compress.runner_heldout.relative_error, []

    def check_then_stop(*args, **kwargs):
        checks.append(1)
        if len(checks) == 2:  # pass 2's
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    with monkeypatch.context() as m:
        _second_svd_pass_nan(m, finite=True)
        m.setattr(compress.runner_heldout, "relative_error", check_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, text, "r")
    run_dir = tmp_path / "run-r"
    assert _stages(run_dir) == ["0-svd", "1-svd"]
    with pytest.raises(NumericError, match=r"pass 2/2 \(svd\): the student's prediction holds NaN/Inf"):
        run_recipe(tmp_path, text, "r", resume=True)
    assert _stages(run_dir) == ["0-svd"]
    with monkeypatch.context() as m:
        ran = _counted(m)
        run_recipe(tmp_path, text, "r", resume=True)
    assert ran == [1]
