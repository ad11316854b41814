"""`dit-compress inspect`'s distill lines (inspect_distill.distill_lines): the steps done of those asked, the
held-out teacher-relative error before → after, the resumes and the last loss terms of each distill
pass the output's report.json records; nothing of distillation for an output without one."""

import json

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import factorize, tiny_pixart
from tests.runner_helpers import SIMPLE

pytestmark = pytest.mark.usefixtures("one_thread")

LAST = {"loss": 0.5, "task": 0.25, "out": 0.125, "feat": 1.0}


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    """inspect on a terminal wide enough for each distill line whole (on a narrower one note_lines breaks
    it at its spaces: tests/test_report_fit.py, test_inspect_tables.py)."""
    from compress.report import results

    monkeypatch.setattr(results, "_width", 400)


def _inspected(tmp_path, capsys, report: dict | None) -> str:
    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=2), tmp_path / "out")
    if report is not None:
        (out / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    return capsys.readouterr().out


def test_inspect_says_what_each_distill_pass_did(tmp_path, capsys):
    first = {"steps": 60, "steps_done": 60, "resumed": 0, "data": "toy", "train": "all", "last": LAST,
             "pred_rel_error_before": 0.08092, "pred_rel_error_after": 0.09314,
             "error_rose": {"before": 0.08092, "after": 0.09314, "reads": ["lambda_task"], "warning": "..."}}
    second = {"steps": 200, "steps_done": 200, "resumed": 2, "data": "teacher_samples", "train": "factors",
              "pred_rel_error_before": 0.09314, "pred_rel_error_after": 0.0655, "last": LAST}
    lines = [line for line in _inspected(tmp_path, capsys, {"distill": {**second, "earlier": [first]}}).splitlines()
             if line.startswith("distill")]
    assert lines == [
        "distill (pass 1 of 2): 60/60 steps (data toy, train all); held-out teacher-relative error 0.08092 → 0.09314 "
        "(rose; its error_rose in report.json says why); not resumed; last step: loss 0.5 task 0.25 out 0.125 feat 1",
        "distill (pass 2 of 2): 200/200 steps (data teacher_samples, train factors); held-out teacher-relative error "
        "0.09314 → 0.06550; resumed 2 times; last step: loss 0.5 task 0.25 out 0.125 feat 1"]


def test_inspect_of_an_older_record_says_what_it_holds(tmp_path, capsys):
    """A record from before steps_done, resumed and error_rose, unmeasured errors (no held-out inputs)."""
    older = {"steps": 500, "data": "toy", "pred_rel_error_before": None, "pred_rel_error_after": None}
    printed = _inspected(tmp_path, capsys, {"distill": older})
    assert "distill: 500 steps (data toy); held-out teacher-relative error not measured\n" in printed
    assert "distill" not in _inspected(tmp_path / "plain", capsys, {"svd": {}})


def test_inspect_of_a_run_resumed_in_its_distill_pass(tmp_path, capsys):
    """A real run stopped by max_steps_this_run and resumed: the record counts the resume, and inspect says it."""
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    passes = ("  - distill: {steps: 4, batch_size: 2, lambda_task: 0, lr: 0.0001, warmup_steps: 1, checkpoint_every: 2, "
              "max_steps_this_run: 2, progress: false, plot: false}\n")
    recipe = parse_recipe(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes), str(tmp_path / "r.yaml"))
    with pytest.raises(Exception, match="max_steps_this_run=2"):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    Runner(recipe, tmp_path / "out", tmp_path / "run", resume=True).run()
    record = json.loads((tmp_path / "out" / "report.json").read_text())["distill"]
    assert (record["steps_done"], record["resumed"]) == (4, 1)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("distill"))
    assert line.startswith("distill: 4/4 steps (data toy, train all); held-out teacher-relative error ")
    assert "; resumed 1 time; last step: loss " in line
    assert record["weights"] == {"task": 0, "out": 1.0, "feat": 0.1}  # the recipe's lambda_task 0, defaults else
    assert " task " not in line.split("last step:")[1] and " out " in line  # a term of weight 0 is not shown


def test_inspect_shows_the_terms_a_record_weighs(tmp_path, capsys):
    """A record with its loss weights shows only the terms of nonzero weight (lambda_task 0 in every shipped
    recipe; the distill bar does the same); an older record without them, every term (above)."""
    record = {"steps": 60, "steps_done": 60, "data": "toy", "last": LAST, "weights": {"task": 0, "out": 1, "feat": 0.1},
              "pred_rel_error_before": 0.1, "pred_rel_error_after": 0.05}
    line = next(line for line in _inspected(tmp_path, capsys, {"distill": record}).splitlines()
                if line.startswith("distill"))
    assert line.endswith("; last step: loss 0.5 out 0.125 feat 1"), line
