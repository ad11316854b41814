"""`dit-compress inspect`'s distill lines (report_card.distill_lines): the steps done of those asked, the
held-out teacher-relative error before → after, the resumes and the last loss terms of each distill
pass the output's report.json records; nothing of distillation for an output without one."""

import json

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

LAST = {"loss": 0.5, "task": 0.25, "out": 0.125, "feat": 1.0}


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
        "0.09314 → 0.0655; resumed 2 times; last step: loss 0.5 task 0.25 out 0.125 feat 1"]


def test_inspect_of_an_older_record_says_what_it_holds(tmp_path, capsys):
    """A record from before steps_done, resumed and error_rose, unmeasured errors (no held-out inputs)."""
    older = {"steps": 500, "data": "toy", "pred_rel_error_before": None, "pred_rel_error_after": None}
    printed = _inspected(tmp_path, capsys, {"distill": older})
    assert "distill: 500 steps (data toy); held-out teacher-relative error not measured\n" in printed
    assert "distill" not in _inspected(tmp_path / "plain", capsys, {"svd": {}})

