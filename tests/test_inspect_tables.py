"""inspect's per-layer tables (compress.inspect_tables.inspect_tables): no cell cut at 40, 60, 80, 120 or 200
columns, round-off losses as 0, missing fields as dashes."""

import re

import pytest
from rich.console import Console

from compress.inspect_tables import inspect_tables


def _rows():
    return [{"name": f"single_transformer_blocks.{i}.attn.to_q", "role": "attention", "block": f"single.{i}",
             "shape": [3072, 3072], "rank": 512, "params": 3_148_800, "kept": 1 / 3, "energy_kept": 0.99871,
             "loss": 12.25 + i, "optimal_loss": 12.25 + i, "loss_ratio": 1.0000002, "rel_output_error": 0.03594,
             "time_s": 41.5} for i in range(3)]


def _render(width: int) -> tuple[str, int]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    tables = inspect_tables(_rows(), width, "layers", {})
    for table in tables:
        console.print(table)
    return console.export_text(), len(tables)


# every per-layer number issue 8 names: shape, rank, kept params and share, energy kept, whitened
# loss, closed-form optimum, their ratio, relative output error, seconds
CELLS = ("3072×3072", "512", "3,148,800", "33%", "0.9987", "1.22e+01", "1.42e+01", "1.000000", "0.0359", "41.50s")


def test_layer_tables_never_cut_a_cell():
    """An 80-column terminal gets two tables (budget; factorization) that fold only the names;
    a wide one gets one table with every name whole, each block's layers under its name."""
    narrow, n = _render(80)
    assert n == 2 and "…" not in narrow
    assert all(cell in narrow for cell in CELLS)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    wide, n = _render(200)
    assert n == 1 and "…" not in wide
    assert all(cell in wide for cell in CELLS)
    assert all(f"single_transformer_blocks.{i}" in wide for i in range(3))
    assert wide.count("attn.to_q") == 3


def test_layer_tables_show_round_off_losses_as_zero_and_missing_fields_as_dashes():
    rows = _rows()[:1]
    rows[0]["loss"] = -3.5e-15  # a sum of squares measured as a difference
    dense = {"name": "proj_out", "role": "output", "block": "-", "shape": [64, 3072], "rank": None,
             "params": 196_672, "kept": 1.0}
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for table in inspect_tables(rows + [dense], 200, "layers", {}):
        console.print(table)
    text = console.export_text()
    assert "-3.5" not in text and "0.00e+00" in text
    dense_line = next(line for line in text.splitlines() if "proj_out" in line)
    assert "dense" in dense_line and dense_line.count(" - ") >= 6
    narrow = Console(width=80, record=True, file=open("/dev/null", "w"))
    for table in inspect_tables(rows + [dense], 80, "layers", {}):
        narrow.print(table)
    # a layer the svd pass never looked at is in the budget table, not in the factorization one
    assert narrow.export_text().count("proj_out") == 1


def _rendered(tables, width: int) -> str:
    """What inspect prints of `tables` (a table, or a list of tables or lines) on `width` columns."""
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    for item in tables if isinstance(tables, list) else [tables]:
        console.print(item, **({"markup": False} if isinstance(item, str) else {}))
    return console.export_text()


def test_a_40_column_terminal_keeps_names_and_numbers_whole_and_says_which_columns_it_left_out():
    """At COLUMNS=40 rich shrank the layer column to nothing (no block heading, no layer name) and cut
    the numbers ('128…', '6,2…', a rank as 'd…'). Now names fold after a '.' or '_', the least
    important columns are left out (role and shape first; rank and loss/opt stay) and a line says
    which, and where to see them."""
    from compress.report import summary_table

    rows = _rows() + [{**_rows()[0], "name": "proj_out", "block": "-", "rank": None, "role": "output",
                       "params": 196_672, "kept": 1.0, "dense_params": 196_672}]
    text = _rendered(inspect_tables(rows, 40, "layers", {}), 40)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 40
    assert text.count("single_") == 6 and text.count("blocks.1") == 2  # once in each table
    assert "dense" in text and "proj_out" in text
    assert all(cell in text for cell in ("512", "1.000000"))
    said = " ".join(text.split())
    assert ("columns role, shape, params left out to fit 40 terminal columns (rerun with --json or in a wider terminal "
            "to see them)") in said  # --json was a rerun, not something shown now
    assert "left out to fit 40 terminal columns" in said[said.index("factorization"):]
    dense = [{**r, "dense_params": 3 * r["params"]} for r in rows]
    by_block = _rendered(summary_table(dense, "block", "by block", 40), 40)
    assert "…" not in by_block and "3,148,800" in by_block and "top level" in by_block
    assert "column factorized left out to fit 40 terminal columns" in " ".join(by_block.split())
    assert _rendered(summary_table(dense, "block", "by block", 200), 200).count("factorized") == 1


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_inspect_measures_its_tables_as_report_fit_does(width):
    """One rule fits tables to the terminal: inspect measured its layer table with a measure of its own
    (inspect_fold.natural_width, on the notes' console), importance's and plan's with
    report_fit.table_width; it now uses table_width (the output unchanged: 840 renders, 20 to 229
    columns, the same). The whole table where that measure says it fits, every table within the
    console's width, no cell cut, names broken only after a '.' or '_'."""
    from compress.report_fit import table_width

    rows = _rows() + [{"name": "proj_out", "role": "output", "block": "-", "shape": [64, 3072], "rank": None,
                       "params": 196_672, "kept": 1.0}]
    whole = table_width(inspect_tables(rows, 1 << 16, "layers", {})[0])
    tables = inspect_tables(rows, width, "layers", {})
    assert (len(tables) == 1) == (whole <= width)
    text = _rendered(tables, width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    for row in rows:
        assert all(piece in text for piece in re.findall(r"[^._]+", row["name"]))
    said = " ".join(text.split())
    kept = CELLS if "left out" not in said else ("512", "1.000000")  # rank and loss/opt stay
    assert all(cell in text for cell in kept) and ("left out to fit" in said) == (width == 60)


def test_the_whole_layer_table_is_shown_just_where_it_fits():
    """At the measured width the one table takes every column of the console and no more; one column
    less, the two tables."""
    from compress.report_fit import table_width

    whole = table_width(inspect_tables(_rows(), 1 << 16, "layers", {})[0])
    text = _rendered(inspect_tables(_rows(), whole, "layers", {}), whole)
    assert len(inspect_tables(_rows(), whole, "layers", {})) == 1
    assert max(len(line) for line in text.splitlines()) == whole and "…" not in text
    assert len(inspect_tables(_rows(), whole - 1, "layers", {})) == 2


def _whole(text: str, width: int, cells) -> set[str]:
    """`text`'s words (a table's cells; a trailing ',' or ':' apart), after checking nothing is cut or
    past `width` (a word longer than the width apart)."""
    assert "…" not in text, text
    assert all(len(line) <= width or " " not in line.strip() for line in text.splitlines()), text
    words = {word.rstrip(",:") for word in text.replace("│", " ").split()}
    assert all(cell in words for cell in cells), (set(cells) - words, text)
    return words


@pytest.mark.parametrize("width", [20, 25])
def test_a_terminal_under_the_least_layer_table_shows_a_line_per_layer(width):
    """Under the per-layer tables' least (layer and rank, or layer and loss/opt) rich cut the names
    mid-word ('time_tex' over 't_') and the numbers ('1.0000…'). Now a line per layer under its block's
    name, each column's header beside its cell, broken at spaces to the width; names fold after a '.'
    or '_' only."""
    rows = _rows() + [{"name": "proj_out", "role": "output", "block": "-", "shape": [64, 3072], "rank": None,
                       "params": 196_672, "kept": 1.0}]
    text = _rendered(inspect_tables(rows, width, "layers", {}), width)
    assert not any(line[:1] in "┏┃┡│└" for line in text.splitlines()), text
    words = _whole(text, width, CELLS + ("dense", "proj_out", "attn.to_q", "single_transformer_", "blocks.1"))
    assert {"rank", "loss/opt", "rel", "err", "time"} <= words
    said = " ".join(text.split())
    assert "attn.to_q: role attention, shape 3072×3072, rank 512, params 3,148,800, kept 33%, energy 0.9987" in said
    assert "proj_out: role output, shape 64×3072, rank dense, params 196,672, kept 100%" in said
    assert said.count("attn.to_q:") == 3 and "proj_out: role output, shape 64×3072, rank dense, params 196,672, " \
        "kept 100%, energy" not in said  # '-' cells left out


@pytest.mark.parametrize("width", [20, 25])
@pytest.mark.parametrize("key", ["role", "block"])
def test_a_terminal_under_the_least_summary_table_shows_a_line_per_row(width, key):
    """By role and by block under their least table (name and of dense) rich cut names and numbers
    ('embeddi…', '100.…', 'transform…'). Now, where the table at its least does not fit, a line per role
    or block, broken at spaces; names folded after a '.' or '_' only, numbers whole."""
    from compress.report import summary_table

    rows = [{**r, "dense_params": 3 * r["params"], "block": f"single_transformer_blocks.{i}", "role": "modulation"}
            for i, r in enumerate(_rows())]
    text = _rendered(summary_table(rows, key, f"by {key}", width), width)
    table = "┏" in text
    assert not table or width == 25, text  # 25 columns hold name and of dense
    names = ["modulation"] if key == "role" else ["blocks.0", "blocks.2"]  # after 'single_transformer_'
    params = "9,446,400" if key == "role" else "3,148,800"
    _whole(text, width, ["33.3%", *names] + ([] if table else [params]))
    said = " ".join(text.split())
    assert table or said.count(f"params {params}, of dense 33.3%") == (1 if key == "role" else 3), said


def _noted_output(tmp_path, monkeypatch):
    """A tiny PixArt output in tmp_path/out (the current folder tmp_path) whose report gives inspect every
    kind of note: a removed block (renumbered: 'transformer_blocks.1 (teacher 2)'), two factorized layers,
    compensation, distill and stages."""
    import json

    from compress.arch import get_adapter
    from compress.io_export import save_compressed
    from tests.conftest import factorize, tiny_pixart

    teacher = tiny_pixart()
    teacher.compression_meta = {"block_map": get_adapter(teacher).remove_blocks(teacher, {"blocks": [1]})}
    layers = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.0.proj"]
    record = {"rank": 2, "method": "whitened", "loss": 1.0, "optimal_loss": 1.0, "loss_ratio": 1.0, "energy_kept": 0.9,
              "time_s": 0.5, "objective": "output error"}
    report = {"teacher": "toy:pixart", "teacher_params": 100000,
              "remove_blocks": {"criterion": None, "iterative": False, "removed": {"blocks": [1]},
                                "blocks_before": {"blocks": 3}},
              "svd": {"method": "whitened", "layers": {name: record for name in layers}, "compensation": {
                  "blocks 0 attention": {"uncompensated_error": 0.2054, "calibration_error": 0.1983, "step": 0.03125}}},
              "distill": {"steps": 60, "steps_done": 60, "data": "toy", "train": "all",
                          "pred_rel_error_before": 0.08092, "pred_rel_error_after": 0.07314, "resumed": 1},
              "stages": [{"pass": "remove_blocks", "params": 80000, "relative_error": 0.2},
                         {"pass": "svd", "params": 60000, "relative_error": 0.1}]}
    save_compressed(factorize(teacher, layers, rank=2), tmp_path / "out", files={"report.json": json.dumps(report)})
    monkeypatch.chdir(tmp_path)


def _inspected(capsys, monkeypatch, width: int, terminal: bool = True) -> list[str]:
    """What `dit-compress inspect out` prints on a `width`-column terminal (the results console's soft_wrap
    as it is: a line longer than the width is the terminal's to fold), or (`terminal` false) piped."""
    from compress.cli import main
    from compress.report import results

    monkeypatch.setattr(results, "_width", width)
    monkeypatch.setattr(results, "_force_terminal", terminal)  # (its colours stay off: chosen at its start)
    capsys.readouterr()
    assert main(["inspect", "out"]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("width", [30, 60, 80, 100])
def test_inspect_breaks_its_notes_titles_and_captions_between_words_at_any_width(tmp_path, capsys, monkeypatch,
                                                                                 width):
    """S47: inspect broke its notes at spaces under 80 columns only, and its tables' titles and captions
    never (the results console's soft_wrap prints a line as it is): at 80-100 columns its notes ('compensation
    transformer_blocks.0 attention: calibration error ...'), and at any width under them its titles and
    captions ('out: factorization (the svd pass's targets)', 'of dense: params / ...') were lines the terminal
    folds mid-word. A renumbered block's label in the table by block folded as 'transformer_blocks.' / '1
    (teacher 2)' (60 columns), its index with its note. Now no line is wider than the terminal, and every word
    of them is whole, in order; the label folds before its note."""
    _noted_output(tmp_path, monkeypatch)
    lines = _inspected(capsys, monkeypatch, width)
    assert all(len(line) <= width for line in lines), "\n".join(x for x in lines if len(x) > width)
    said = " ".join(" ".join(lines).split())
    for words in ("out: factorization (the svd pass's targets)",
                  "of dense: params / the same layers of this student held dense (removed blocks not counted; plan's "
                  "ratio is of the teacher's)",
                  "stages: each pass's params and its error on held-out inputs",
                  "compensation transformer_blocks.0 attention: calibration error 0.2054 → 0.1983 (step 0.03125 of "
                  "the K-FAC Newton step)",
                  "distill: 60/60 steps (data toy, train all); held-out teacher-relative error 0.08092 → 0.07314; "
                  "resumed 1 time",
                  "whitened loss / optimal loss over 2 whitened layers: max 1.000000"):
        assert words in said, words
    cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert not any(cell.endswith("blocks.") or cell.startswith("1 (") for cell in cells), cells


@pytest.mark.parametrize("width", [40, 80])
def test_a_piped_inspect_keeps_each_note_whole(tmp_path, capsys, monkeypatch, width):
    """T2 stop 52: piped, inspect broke its notes at the console's width (80, or COLUMNS) as on a terminal
    ('compensation transformer_blocks.0 attention: calibration error 0.2054 →' / '0.1983 (step ...'), where
    plan's keep each line whole piped (18b747e): `inspect out | grep compensation` got a piece. Now both follow
    report_fit.lines_width: piped, each note is the wide terminal's line (the tables still fitted to the width)."""
    _noted_output(tmp_path, monkeypatch)
    piped = _inspected(capsys, monkeypatch, width, terminal=False)
    notes = [line for line in INSPECTED_WIDE if line.startswith(("compensation ", "distill: ", "whitened loss ",
                                                                  "blocks removed ", "student blocks "))]
    assert len(notes) == 5 and all(len(line) > width for line in notes[2:])  # (the lines a terminal breaks)
    assert all(line in piped for line in notes), "\n".join(piped)
    assert max(len(line) for line in piped if line[:1] in "┏┃┡│└") <= width


# inspect's lines but its tables' rows (titles, column words, captions, notes) on a terminal they all fit, as
# it printed them before S47: _inspected at 200 columns, its lines that do not start with a table's frame
INSPECTED_WIDE = [
    'out',
    "columns energy, loss, optimal, loss/opt are in each layer's factorization objective, its output error on "
    'its calibration inputs.',
    "column rel err is each layer's plain output error ‖(W − W')x‖ / ‖Wx‖ on its calibration inputs against the "
    'weight the pass found (no Fisher, no step): it can be far above √(1 − energy kept).',
    'by role (linear layers)',
    "of dense: params / the same layers of this student held dense (removed blocks not counted; plan's ratio is "
    "of the teacher's)",
    'by block (all parameters)',
    'of dense: params / the same block of this student held dense',
    'blocks removed from the teacher: transformer_blocks [1] (3 → 2)',
    'student blocks renumbered (student ← teacher index): transformer_blocks.1 ← 2',
    'whitened loss / optimal loss over 2 whitened layers: max 1.000000; optimal: the exact optimum of each '
    "layer's calibration output error",
    'compensation transformer_blocks.0 attention: calibration error 0.2054 → 0.1983 (step 0.03125 of the K-FAC '
    'Newton step)',
    'distill: 60/60 steps (data toy, train all); held-out teacher-relative error 0.08092 → 0.07314; resumed 1 time',
    "stages: each pass's params and its error on held-out inputs",
    'the teacher: toy:pixart',
]


@pytest.mark.parametrize("width", [200, 240])
def test_inspect_prints_what_fits_as_before(tmp_path, capsys, monkeypatch, width):
    _noted_output(tmp_path, monkeypatch)
    lines = _inspected(capsys, monkeypatch, width)
    assert [line for line in lines if line[:1] not in "┏┃┡│└"] == INSPECTED_WIDE


def test_the_factorization_tables_title_counts_the_svd_passes():
    """T3: an output of two svd passes was titled 'factorization (the svd pass's targets)'."""
    from compress.report_fit import table_width

    whole = table_width(inspect_tables(_rows(), 1 << 16, "out", {})[0])
    for passes, words in ((1, "out: factorization (the svd pass's targets)"),
                          (2, "out: factorization (the svd passes' targets)")):
        text = " ".join(_rendered(inspect_tables(_rows(), whole - 1, "out", {}, passes), whole - 1).split())
        assert words in text, text


def test_a_piped_inspect_keeps_each_row_line_whole_whatever_columns_says(tmp_path, capsys, monkeypatch):
    """F5 stop 54 (after plan's, f9688ea): `COLUMNS=20 dit-compress inspect out | grep attention` got
    'attention:' without its numbers: where even a table's least is wider than COLUMNS, inspect's per-layer,
    by-role, by-block and stages lines were broken at that width off a terminal too. Piped, each is whole now;
    a 20-column terminal still breaks them."""
    _noted_output(tmp_path, monkeypatch)
    piped = _inspected(capsys, monkeypatch, 20, terminal=False)
    assert "  attn1.to_q: role attention, shape 16×16, rank 2, params 80, kept 29%, energy 0.9000, loss 1.00e+00, " \
           "optimal 1.00e+00, loss/opt 1.000000, time 0.50s" in piped
    assert "transformer_blocks.1 (teacher 2)" in piped
    assert any(line.startswith("attention: factorized 1, params ") and line.endswith("of dense 91.2%") for line in piped)
    assert "transformer_blocks.1 (teacher 2): factorized 0, params 4,400, of dense 100.0%" in piped
    assert "svd: params 60,000, of teacher 60.0%, teacher-relative error 0.1000" in piped
    terminal = _inspected(capsys, monkeypatch, 20)
    assert "attention:" in terminal and "  attn1.to_q:" in terminal  # their cells on the lines below
