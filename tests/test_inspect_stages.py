"""`dit-compress inspect`'s stages (compress.inspect_stages): the teacher's params, then each pass's params,
their share of the teacher's, its held-out teacher-relative error and, after a distill.kd_teacher: base
pass, its error against the chain's base, as report.json's `stages` records them, in the table and in
--json; an older report's missing fields as '-' (null), a report without stages as none."""

import json

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

REPORT = {"teacher": "out/a", "teacher_params": 200_000, "student_params": 150_000,
          "stages": [{"pass": "remove_blocks", "seconds": 0.3, "params": 160_000, "relative_error": 0.4208326},
                     {"pass": "distill", "seconds": 1.2, "params": 160_000, "relative_error": 0.4197155,
                      "kd_teacher": {"source": "out/base", "relative_error": 0.6042484}},
                     {"pass": "svd", "seconds": 2.5, "params": 150_000, "relative_error": 0.05123456}],
          "export": {"dtype": "float32", "computed_in": "float32", "exact": True, "relative_error": 0.05123456}}


def _output(tmp_path, report: dict | None):
    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=2), tmp_path / "out")
    if report is not None:
        (out / "report.json").write_text(json.dumps(report))
    return out


def _inspected(tmp_path, capsys, report: dict | None, *flags: str) -> str:
    out = _output(tmp_path, report)
    capsys.readouterr()
    assert main(["inspect", str(out), *flags]) == 0
    return capsys.readouterr().out


def _stage_rows(printed: str) -> dict[str, list[str]]:
    """label -> cells of the stages table's rows (the first of a name where several passes share it)."""
    lines = printed[printed.index("stages: "):].splitlines()
    rows = {}
    for line in lines[1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_inspect_shows_each_pass_s_params_and_errors_against_the_teacher_and_the_chain_s_base(tmp_path, capsys):
    """inspect printed no word of the stages (what each pass did to the whole model): only the model card
    had them. Now a table: the teacher, then each pass in order, with report.json's numbers."""
    printed = _inspected(tmp_path, capsys, REPORT)
    rows = _stage_rows(printed)
    assert list(rows) == ["teacher", "remove_blocks", "distill", "svd"]
    assert rows["teacher"] == ["200,000", "100.0%", "-", "-"]
    assert rows["remove_blocks"] == ["160,000", "80.0%", "0.4208", "-"]
    assert rows["distill"] == ["160,000", "80.0%", "0.4197", "0.6042"]
    assert rows["svd"] == ["150,000", "75.0%", "0.05123", "-"]
    said = " ".join(printed[printed.index("stages: "):].split())
    assert "the teacher: out/a; the chain's base: out/base (distill.kd_teacher: base)" in said
    assert "The output holds the weights measured above, exactly, in float32." in said


def test_inspect_of_an_older_report_shows_what_it_holds(tmp_path, capsys):
    """A report of before kd_teacher and teacher_params, a stage unmeasured: '-' for what it lacks, no
    column of the chain's base; a report without stages (or none at all): no stages table, --json's null."""
    older = {"stages": [{"pass": "svd", "params": 150_000, "relative_error": None},
                        {"pass": "distill", "params": 150_000}]}
    printed = _inspected(tmp_path, capsys, older)
    rows = _stage_rows(printed)
    assert rows == {"teacher": ["-", "-", "-"], "svd": ["150,000", "-", "-"], "distill": ["150,000", "-", "-"]}
    assert "chain's base" not in printed and "the teacher:" not in printed
    for report in ({"svd": {}}, None):
        where = tmp_path / ("none" if report is None else "plain")
        assert "stages: " not in _inspected(where, capsys, report)
        assert json.loads(_inspected(where / "json", capsys, report, "--json"))["stages"] is None


def test_inspect_json_carries_the_stages(tmp_path, capsys):
    """--json held report.json whole (its raw `stages` under `report`), not the shares of the teacher: its
    `stages` key now has the teacher and each pass as the table shows them."""
    stages = json.loads(_inspected(tmp_path, capsys, REPORT, "--json"))["stages"]
    assert stages["teacher"] == {"source": "out/a", "params": 200_000}
    assert [p["pass"] for p in stages["passes"]] == ["remove_blocks", "distill", "svd"]
    assert [p["of_teacher"] for p in stages["passes"]] == [0.8, 0.8, 0.75]
    assert [p["relative_error"] for p in stages["passes"]] == [0.4208326, 0.4197155, 0.05123456]
    assert stages["passes"][1]["kd_teacher"] == {"source": "out/base", "relative_error": 0.6042484}
    assert "kd_teacher" not in stages["passes"][0]


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_the_stages_table_fits_the_terminal_with_its_errors_whole(tmp_path, capsys, monkeypatch, width):
    """On a narrow terminal the table keeps its errors and names whole (report_fit.fitted_table): params,
    then of teacher, left out first, the caption saying so."""
    from compress.report import results

    monkeypatch.setattr(results, "_width", width)
    printed = _inspected(tmp_path, capsys, REPORT)
    table = printed[printed.index("stages: "):]
    drawn = [line for line in table.splitlines() if line[:1] in "┏┃┡│└"]
    assert max(map(len, drawn)) <= width and "…" not in table
    assert all(cell in table for cell in ("0.4208", "0.4197", "0.6042", "0.05123"))
    assert all(piece in table for piece in ("remove_", "blocks", "distill", "svd", "teacher"))
    assert ("left out to fit" in " ".join(table.split())) == (width == 40)  # headers wrap at their spaces first


def test_a_terminal_too_narrow_for_both_errors_leaves_the_base_s_out_and_cuts_no_cell(tmp_path, capsys, monkeypatch):
    """30 columns (a split pane): the stage and both error columns did not fit, and rich cut the numbers
    and headers ('0.6…', 'tea…'). Now the error against the chain's base goes after params and of
    teacher, named in the caption, and the teacher-relative errors stay whole."""
    from compress.report import results

    monkeypatch.setattr(results, "_width", 30)
    printed = _inspected(tmp_path, capsys, REPORT)
    table = printed[printed.index("stages: "):]
    drawn = [line for line in table.splitlines() if line[:1] in "┏┃┡│└"]
    assert max(map(len, drawn)) <= 30 and "…" not in table
    assert all(cell in table for cell in ("0.4208", "0.4197", "0.05123")) and "0.6042" not in table
    said = " ".join(table.split())
    assert "columns params, of teacher, against the chain's base left out to fit 30 terminal columns" in said


@pytest.mark.parametrize("width", [20, 25, 29])
def test_a_terminal_under_the_least_table_shows_a_line_per_stage(tmp_path, capsys, monkeypatch, width):
    """Under 30 columns even the stage and teacher-relative error columns did not fit: rich cut the names,
    numbers and header ('re…', 'teacher-r…'). Now a line per stage, each column's header beside its cell
    (a '-' left out), broken at its spaces to the width (the terminal folded it mid-number), nothing cut;
    30 columns keep the table."""
    from compress.report import results

    monkeypatch.setattr(results, "_width", width)
    monkeypatch.setattr(results, "_force_terminal", True)  # a terminal's (piped, each line whole: test_inspect_tables)
    printed = _inspected(tmp_path, capsys, REPORT)
    said = printed[printed.index("stages: "):printed.index("the teacher: out/a")].splitlines()
    assert "…" not in "\n".join(said) and not any(line[:1] in "┏┃┡│└" for line in said)
    assert max(map(len, said)) <= width
    assert [line.split(":")[0] for line in said if not line.startswith(" ")][-4:] == [
        "teacher", "remove_blocks", "distill", "svd"]  # a stage a line, wrapped lines indented under it
    stages = " ".join(" ".join(said).split()).split(": params ")
    assert stages[1:] == ["200,000, of teacher 100.0% remove_blocks",
                          "160,000, of teacher 80.0%, teacher-relative error 0.4208 distill",
                          "160,000, of teacher 80.0%, teacher-relative error 0.4197, against the chain's base 0.6042 svd",
                          "150,000, of teacher 75.0%, teacher-relative error 0.05123"]
    assert " ".join(printed.split()).count(
        "the teacher: out/a; the chain's base: out/base (distill.kd_teacher: base)") == 1
    monkeypatch.setattr(results, "_width", 30)
    assert "┏" in _inspected(tmp_path / "30", capsys, REPORT)


def test_inspect_json_doc_lists_every_top_level_key():
    """inspect --json printed `layers` and `report`, which docs/COMMANDS.md never named (T5): its inspect row
    lists every top-level key (inspect.json_record, what --json prints), and only those."""
    import re
    from pathlib import Path

    from compress.inspect import json_record

    page = (Path(__file__).parents[1] / "docs" / "COMMANDS.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `dit-compress inspect OUT"))
    listed = re.search(r"`--json`'s top-level keys are (.*?):", row)
    assert listed, "COMMANDS.md's inspect row lists no top-level keys of --json"
    named = set(re.findall(r"`(\w+)`", listed.group(1)))
    for block_map in (None, {"blocks": [0, 2]}):
        assert set(json_record([], {}, block_map)) == named


def test_inspect_shows_the_guided_error_where_a_stage_recorded_one(tmp_path, capsys):
    """A run whose source samples with classifier-free guidance records each stage's guided error too
    (runner_heldout): a column of it, '-' for a stage kept from before it was recorded; --json's passes
    carry `guided_error` where recorded; a report without any shows no such column."""
    stages = [{"pass": "svd", "params": 160_000, "relative_error": 0.178},  # kept from an older run
              {"pass": "distill", "params": 160_000, "relative_error": 0.0652, "guided_error": 0.0913}]
    report = {"teacher": "toy:pixart", "teacher_params": 200_000, "stages": stages}
    printed = _inspected(tmp_path, capsys, report)
    rows = _stage_rows(printed)
    assert rows == {"teacher": ["200,000", "100.0%", "-", "-"], "svd": ["160,000", "80.0%", "0.1780", "-"],
                    "distill": ["160,000", "80.0%", "0.06520", "0.09130"]}
    said = " ".join(printed[printed.index("stages: "):].split())
    assert "guided error" in said and "classifier-free-guided prediction" in said
    passes = json.loads(_inspected(tmp_path / "json", capsys, report, "--json"))["stages"]["passes"]
    assert [p.get("guided_error", "absent") for p in passes] == ["absent", 0.0913]
    plain = _inspected(tmp_path / "plain", capsys, REPORT)
    assert "guided" not in plain[plain.index("stages: "):]


def test_the_guided_error_s_caption_says_its_scale_and_held_out_inputs(tmp_path, capsys):
    """report.json's heldout (943316c) records the guided error's scale and the held-out inputs, but inspect's
    stages table did not say them: its caption said 'guided error: of the classifier-free-guided prediction'
    alone. Now it ends ' at s = 3, on 64 held-out inputs'; an older report without heldout as before."""
    stages = [{"pass": "distill", "params": 160_000, "relative_error": 0.0652, "guided_error": 0.0913}]
    report = {"teacher": "toy:pixart", "teacher_params": 200_000, "stages": stages,
              "heldout": {"inputs": 64, "guidance_scale": 3.0}}
    said = " ".join(_inspected(tmp_path, capsys, report).split())
    assert "guided error: of the classifier-free-guided prediction at s = 3, on 64 held-out inputs" in said, said
    report["heldout"] = {"inputs": 4, "guidance_scale": 4.5}
    said = " ".join(_inspected(tmp_path / "b", capsys, report).split())
    assert "classifier-free-guided prediction at s = 4.5, on 4 held-out inputs" in said, said
    del report["heldout"]
    said = " ".join(_inspected(tmp_path / "c", capsys, report).split())
    assert said.endswith("guided error: of the classifier-free-guided prediction"), said


def test_every_error_figure_keeps_its_four_significant_figures_as_the_card_and_eval_print_it(tmp_path, capsys):
    """T3: inspect printed a stage error of 0.178036 as 0.178 and 0.1 as 0.1 (trailing zeros dropped, as
    '.4g' does), so a figure seemed to have fewer significant figures than its neighbours (0.1717); the card
    and eval did the same. Now inspect's stages (teacher-relative, guided, against the chain's base), its
    distill line and its compensation line, the model card's and eval's errors all print them with
    report.error_figure: 4 significant figures, zeros kept (0.1780, 0.1000, 1.400), an exact 0 as 0."""
    from compress.commands import _figure
    from compress.report import error_figure
    from compress.report_card import _figure as card_figure
    from tests.test_report_card import _card

    report = {"teacher": "toy:pixart", "teacher_params": 200_000, "student_params": 150_000,
              "stages": [{"pass": "importance", "seconds": 1.0, "params": 200_000, "relative_error": 0.0,
                          "guided_error": 0.0},
                         {"pass": "remove_blocks", "seconds": 0.3, "params": 160_000, "relative_error": 0.178036,
                          "guided_error": 0.1},
                         {"pass": "distill", "seconds": 1.2, "params": 160_000, "relative_error": 0.06,
                          "guided_error": 1.4, "kd_teacher": {"source": "out/base", "relative_error": 0.25}}],
              "distill": {"steps": 10, "steps_done": 10, "pred_rel_error_before": 0.178036,
                          "pred_rel_error_after": 0.06},
              "svd": {"compensation": {"double 0 attention": {"uncompensated_error": 0.2, "calibration_error": 0.15,
                                                               "step": 0.5}}},
              "export": {"dtype": "float32", "computed_in": "float32", "exact": True, "relative_error": 0.06}}
    printed = _inspected(tmp_path, capsys, report)
    rows = _stage_rows(printed)
    assert rows["importance"][2:] == ["0", "0", "-"], rows
    assert rows["remove_blocks"][2:] == ["0.1780", "0.1000", "-"], rows
    assert rows["distill"][2:] == ["0.06000", "1.400", "0.2500"], rows
    said = " ".join(printed.split())
    assert "distill: 10/10 steps; held-out teacher-relative error 0.1780 → 0.06000" in said, said
    assert "calibration error 0.2000 → 0.1500 (step 0.5 of the K-FAC Newton step)" in said, said
    card = _card(report)  # the model card's stage table and lines: the same figures
    assert "| remove_blocks | 160,000 | 0.1780 | 0.1000 | 0.3 |" in card and "| importance | 200,000 | 0 | 0 |" in card
    assert "| distill | 160,000 | 0.06000 | 1.400 | 1.2 |" in card and "against that base it is 0.2500." in card
    assert "after the last one 0.1500 (plain factorization there: 0.2000; first compensated stage 0.2000" in card
    for value, shown in ((0.178036, "0.1780"), (0.1, "0.1000"), (0.06519, "0.06519"), (1.4, "1.400"),
                         (1234.56, "1235"), (0.0, "0"), (float("nan"), "nan"), (None, "-")):
        assert error_figure(value) == card_figure(value) == shown, (value, shown)
        if isinstance(value, float):
            assert _figure("pred_rel_error", value) == _figure("guided_error", value) == shown
    assert _figure("psnr_vs_teacher", 28.0) == "28" and _figure("guidance", 3.0) == "3"  # not errors: as before
