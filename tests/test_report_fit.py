"""compress.report_fit's lines of a table too wide at its least: a row's 'header cell' pairs kept
together, broken between pairs only."""

import pytest

from compress.report_fit import row_line, row_lines

HEADERS = ["before", "after (planned)", "ratio"]
CELLS = ["396,288", "≤ 330,240", "≤ 83.3%"]


def _pairs_whole(lines: list[str], width: int) -> None:
    """Each line within `width`; each pair a line holds on one line, one longer broken between its
    header's words and its cell, its cell whole."""
    assert all(len(line) <= width for line in lines), lines
    said = [line.strip() for line in lines]
    for header, cell in zip(HEADERS, CELLS):
        pair = f"{header} {cell}"
        fits = len(f"  {pair},") <= width  # a line of its own (indented two) holds it
        assert any(pair in line for line in said) if fits else any(line.startswith(cell) for line in said), lines


@pytest.mark.parametrize("width", range(18, 45))
def test_a_row_line_breaks_between_its_header_cell_pairs_only(width):
    """R2: textwrap broke the row at every space: plan at COLUMNS=20 printed 'attention: before' /
    '  396,288, after' / '  (planned) ≤' / '  330,240, ratio ≤' / '  83.3%', a header and cell split
    over lines, and '≤' apart from its number. Now the row breaks between pairs; a pair longer than a
    line has lines of its own ('  after (planned)' / '  ≤ 330,240,')."""
    for name in ("attention", "cross_attention", "transformer_blocks.0.attn1"):
        _pairs_whole(row_line(name, HEADERS, CELLS, width), width)
    assert row_line("attention", HEADERS, CELLS, 20) == [
        "attention:", "  before 396,288,", "  after (planned)", "  ≤ 330,240,", "  ratio ≤ 83.3%"]


def test_row_lines_unbroken_without_a_width_and_a_dash_left_out():
    """No width: a line a row, as before; a cell '-' left out, a row of only '-' said as '-'."""
    lines = row_lines("t", "c", [("role", "left"), *[(h, "right") for h in HEADERS]],
                      [["attention", *CELLS], ["mlp", "1", "-", "-"], ["out", "-", "-", "-"]])
    assert lines == ["t", "attention: before 396,288, after (planned) ≤ 330,240, ratio ≤ 83.3%",
                     "mlp: before 1", "out: -", "c"]
    assert row_line("out", HEADERS, ["-"] * 3, 20) == ["out: -"]


NOTE = ("compensation single_transformer_blocks.0 attention: calibration error 0.2054 → 0.1983 (step 0.03125 of the "
        "K-FAC Newton step)")


@pytest.mark.parametrize("width", [20, 24, 30, 40, 60, 79, 80, 100, 124])
def test_a_note_breaks_at_its_spaces_where_the_terminal_is_narrower(width):
    """S46 F3 #3: inspect printed its notes (compensation, blocks removed, optimality, distill) as one line
    at any width, which a 30-column terminal folds mid-word ('calibra' / 'tion'). Now broken at spaces, a
    word longer than a line whole on a line of its own, '→ 0.1983' together. S47: at 80-119 columns too (it
    broke them under 80 only: a 125-character note folded mid-word at 80, 100 and 124)."""
    from compress.report_fit import note_lines

    lines = note_lines(NOTE, width)
    assert len(lines) > 1 and lines[0].startswith("compensation") and all(x.startswith("  ") for x in lines[1:])
    assert " ".join(" ".join(lines).split()) == NOTE
    assert all(len(x) <= width or len(x.split()) == 1 for x in lines)
    assert any("→ 0.1983" in x for x in lines)


@pytest.mark.parametrize("width", [None, 125, 200])
def test_a_note_is_one_line_where_it_fits(width):
    from compress.report_fit import note_lines

    assert note_lines(NOTE, width) == [NOTE]
    assert width is None or note_lines(f"{NOTE}\nshort", width) == [NOTE, "short"]


TITLE = "out/toy-pixart: factorization (the svd pass's targets)"
CAPTION = ("of dense: params / the same layers of this student held dense (removed blocks not counted; plan's ratio "
           "is of the teacher's)\n(rerun in a wider terminal to see them)")  # lines of 124 and 39 characters


def _printed(width: int, fitted: bool = True) -> str:
    """A small table titled TITLE over CAPTION as the results console prints it (soft_wrap: no line
    broken by rich) on `width` columns, its title and caption fitted (fitted_annotations) or not."""
    from rich.console import Console
    from rich.table import Table

    from compress.report_fit import fitted_annotations

    table = Table(title=TITLE, caption=CAPTION)
    table.add_column("role"), table.add_column("of dense", justify="right")
    table.add_row("attention", "91.2%")
    console = Console(width=width, record=True, soft_wrap=True, file=open("/dev/null", "w"))
    console.print(fitted_annotations(table, width) if fitted else table)
    return console.export_text()


@pytest.mark.parametrize("width", [30, 60, 80, 100])
def test_a_tables_title_and_caption_break_at_their_spaces_on_a_narrow_terminal(width):
    """S47: the results console's soft_wrap printed a table's title and caption as one line each, which a
    terminal narrower than them folds mid-word ('(the svd pass's tar' / 'gets)' at 60 columns); now each
    line of them is broken at its spaces to the width, its words and their order as they were."""
    text = _printed(width)
    assert all(len(line) <= width for line in text.splitlines()), text
    words = " ".join(text.split())
    assert words.startswith(" ".join(TITLE.split())) and words.endswith(" ".join(CAPTION.split()))


# what the results console printed of _printed's table before S47 (at any width: 124 and wider, it fits)
PRINTED_WIDE = "\n".join([
    "out/toy-pixart: factorization (the svd pass's targets)",
    "┏━━━━━━━━━━━┳━━━━━━━━━━┓",
    "┃ role      ┃ of dense ┃",
    "┡━━━━━━━━━━━╇━━━━━━━━━━┩",
    "│ attention │    91.2% │",
    "└───────────┴──────────┘",
    *CAPTION.split("\n"), ""])


@pytest.mark.parametrize("width", [124, 200])
def test_a_title_and_caption_that_fit_are_printed_as_before(width):
    assert _printed(width) == _printed(width, fitted=False) == PRINTED_WIDE


@pytest.mark.parametrize("term", ["dumb", "xterm-256color"])
def test_a_tables_width_is_measured_whole_on_a_dumb_terminal(monkeypatch, term):
    """T2 stop 52 #1: on a TERM=dumb terminal (an Emacs shell, some CI ttys) table_width's console was
    80 columns wide whatever its width (rich sizes a dumb terminal's console 80x25 unless both width and
    height are given), so every table seemed to fit in 80 and inspect printed its table cut ('┃┃ role ┃
    sha… ┃ r… ┃', an empty layer column). Now it measures the table's real width, and fitted_rows fits
    a table wider than the terminal as it does elsewhere."""
    from rich.table import Table

    from compress.report_fit import fitted_rows, table_width

    monkeypatch.setenv("TERM", term)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich takes it for a terminal, as a tty's console is
    table = Table()
    table.add_column("layer"), table.add_column("rank", justify="right")
    table.add_row("transformer_blocks.0.attn1.to_q." * 6, "128")
    assert table_width(table) > 200
    columns = [("layer", "left"), ("rank", "right")]
    items = fitted_rows("t", None, columns, [["transformer_blocks.0.attn1.to_q." * 6, "128"]], 100, (), "x")
    assert table_width(items[0]) <= 100


def test_plan_and_inspect_keep_their_lines_whole_off_a_terminal_whatever_its_width():
    """is_piped, the one test plan and inspect share: off a terminal (a pipe, a file) lines stay whole whatever
    width rich takes from COLUMNS (lines_width None); on a terminal they are broken at its width."""
    import io

    from rich.console import Console

    from compress.report_fit import is_piped, lines_width

    piped, terminal = (Console(width=20, file=io.StringIO(), force_terminal=t) for t in (False, True))
    assert is_piped(piped) and lines_width(piped) is None
    assert not is_piped(terminal) and lines_width(terminal) == 20
