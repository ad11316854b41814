"""The importance table on a narrow terminal, and its heatmap and JSON never cut off by an interrupt."""

import dataclasses
import io
import math
import re
from pathlib import Path

import pytest
from rich.console import Console

from compress.passes.importance import BlockScore, ImportanceResult, bucket_names, save_json
from compress.passes.importance_report import plot_heatmap, render_table


def flux_result(k: int = 3, proxy_only: bool = False) -> ImportanceResult:
    """A scan of 2 double + 4 single blocks in `k` buckets (scores made up, distinct)."""
    blocks = []
    for j in range(6):
        group, i = ("double", j) if j < 2 else ("single", j - 2)
        scan = math.nan if proxy_only else 0.31234 + j / 97
        by_bucket = [math.nan if proxy_only else 0.2 + j / 89 + b / 1000 for b in range(k)]
        blocks.append(BlockScore(group, i, i, scan, by_bucket, 0.05 + j / 83, [0.04 + j / 79 + b / 1000
                                                                              for b in range(k)]))
    return ImportanceResult("flux", bucket_names(k), [[1 - b / k, 1 - (b + 1) / k] for b in range(k)], [12] * k,
                            blocks, math.nan if proxy_only else 0.657, 21, 36)


def shown(table, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize("k", [3, 4])
def test_a_narrow_terminal_cuts_no_block_name_or_number(k):
    """60 columns: the rank, block and score columns whole (rich cut them to 'doubl…', '0.31…' to
    make room for a column per bucket); the columns that do not fit are left out, and the caption says so."""
    result = flux_result(k)
    text = shown(render_table(result, width=60), 60)
    assert "…" not in text
    for b in result.blocks:
        assert f"{b.group}.{b.teacher_index}" in text and f"{b.scan:.4f}" in text
    assert "left out to fit 60 columns" in " ".join(text.split())
    wide = shown(render_table(result, width=200), 200)
    assert "…" not in wide and all(f"{n} (n=12)" in wide for n in result.buckets)
    assert "left out" not in wide


def pixart_result(k: int = 3) -> ImportanceResult:
    """A scan of 4 PixArt blocks ('blocks.N') in `k` buckets, sample counts of one and two digits."""
    blocks = [BlockScore("blocks", j, j, 0.16 + j / 50, [0.15 + j / 60 + b / 1000 for b in range(k)],
                         0.011 + j / 300, [0.01 + j / 310 + b / 1000 for b in range(k)]) for j in range(4)]
    return ImportanceResult("pixart", bucket_names(k), [[1 - b / k, 1 - (b + 1) / k] for b in range(k)],
                            [14, 8, 10, 9][:k], blocks, 1.0, 20, 32)


@pytest.mark.parametrize("width", [60, 66, 72, 80, 120])
@pytest.mark.parametrize("make", [pixart_result, flux_result])
def test_every_block_name_and_number_is_whole_at_any_width(make, width):
    """66-80 columns: rich kept the per-bucket columns by shrinking the block column to nothing (no
    header, no names) and cut numbers ('0.21…'), or folded names ('blocks.' / '2'). Each column now
    keeps its least width (headers wrap), and columns go where even that does not fit (at 60 the proxy)."""

    result = make()
    text = shown(render_table(result, width=width), width)
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    names = sorted(f"{b.group}.{b.teacher_index}" for b in result.blocks)
    assert sorted(re.findall(r"(?<![\w.])[a-z]+\.\d+(?![\w.])", text)) == names
    assert re.search(r"┃ *block", text)  # the block column's header
    narrow = "left out" in " ".join(text.split())
    assert narrow == (width == 60)
    numbers = re.findall(r"\d\.\d+", text.split("└")[0])  # the table's, not its caption's
    scores = {f"{x:.4f}" for b in result.blocks for x in [b.scan, *([] if narrow else [b.proxy]), *b.scan_by_bucket]}
    assert set(numbers) == scores and len(numbers) == len(result.blocks) * (2 + len(result.buckets) - narrow)


@pytest.mark.parametrize("result, width, headers, said", [
    (pixart_result(3), 60, ["scan", "early (n=14)", "middle (n=8)", "late (n=10)"],
     "left out to fit 60 columns: proxy; the heatmap shows them (rerun in a wider terminal or with --json FILE, or "
     "with --buckets 2)"),
    (flux_result(6), 80, ["scan", "b0 (n=12)", "b1 (n=12)", "b2 (n=12)", "b3 (n=12)", "b4 (n=12)"],
     "left out to fit 80 columns: b5, proxy; the heatmap shows them (rerun in a wider terminal or with --json "
     "FILE, or with --buckets 4)"),
    (flux_result(3), 40, ["scan", "early (n=12)"],
     "left out to fit 40 columns: middle, late, proxy; the heatmap shows them (rerun in a wider terminal or with --json "
     "FILE)"),
    (flux_result(3, proxy_only=True), 40, ["early (n=12)", "proxy"],
     "left out to fit 40 columns: middle, late; the heatmap shows them (rerun in a wider terminal or with --json "
     "FILE, or with --buckets 1)")])
def test_the_least_telling_columns_go_first_and_the_caption_names_them(result, width, headers, said):
    """Columns go one at a time, as inspect's and plan's do (report_fit): the proxy first where the skip
    scan ranks (its Spearman is in the caption), then the buckets from the last; a proxy-only scan
    keeps its proxy. Before, every per-bucket column went at once where one did not fit, the proxy kept
    ('the per-bucket columns are left out to fit the terminal'): at 60 columns none of 3 buckets, at
    80 none of 6, where all 3, or 5, fit beside the scan. The line naming them is its own, and short: each
    bucket by its name, not its header ('b5', not 'b5 (n=12)'), then how to see them all."""
    table = render_table(result, width=width)
    assert [str(c.header) for c in table.columns] == ["rank", "block", *headers]
    text = shown(table, width)
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    assert " ".join(text.split()).endswith(" " + said)
    assert any(line.strip().startswith(f"left out to fit {width} columns: ") for line in text.splitlines())


@pytest.mark.parametrize("k, width", [(6, 60), (6, 80), (12, 120), (20, 200)])
def test_the_left_out_line_is_one_line_where_it_can_be_and_its_buckets_fit(k, width):
    """The caption named each left-out bucket by its whole header, in the caption's paragraph: 'columns
    b3 (n=12), b4 (n=12), b5 (n=12), proxy left out to fit 60 terminal columns (the heatmap, --json or a
    wider terminal shows them)', three lines at 60 columns. Now a line of its own, by bucket name, one
    line where the names fit, and the --buckets it names gives a table with nothing left out at that
    width (one more would not)."""
    text = shown(render_table(flux_result(k), width=width), width)
    line = " ".join(text.split()).split("single_transformer_blocks ")[-1]
    assert line.startswith(f"left out to fit {width} columns: ") and "(n=" not in line
    if len(line) <= width:
        assert any(row.strip() == line for row in text.splitlines())
    fewer = int(line.rsplit("--buckets ", 1)[1].rstrip(")"))
    assert "left out" not in shown(render_table(flux_result(fewer), width=width), width)
    assert "left out" in shown(render_table(flux_result(fewer + 1), width=width), width)


def test_the_left_out_line_says_where_they_show_before_a_rescan():
    """80 columns, 6 buckets: the line said 'left out to fit 80 columns: b5, proxy; widen the terminal or
    --buckets 4', its first way a rescan (long on a real teacher, and other buckets measured). Now the
    heatmap written beside the table and --json come first, on the line naming them, whole; the wider
    terminal and the rescan on a line of their own, not cut mid-phrase."""
    rows = [row.strip() for row in shown(render_table(flux_result(6), width=80), 80).splitlines()]
    assert rows[-2:] == ["left out to fit 80 columns: b5, proxy; the heatmap shows them",
                         "(rerun in a wider terminal or with --json FILE, or with --buckets 4)"]
    wide = [row.strip() for row in shown(render_table(flux_result(20), width=200), 200).splitlines()]
    assert wide[-1] == ("left out to fit 200 columns: b19, proxy; the heatmap shows them (rerun in a wider terminal "
                        "or with --json FILE, or with --buckets 18)")


def test_the_left_out_line_says_a_rerun_shows_them_and_names_the_json_file_given():
    """The line said 'the heatmap and --json show them (or widen the terminal ...)', as if --json (a rerun
    of the whole scan where it was not given) or a wider terminal showed them now. Now: the heatmap shows
    them, and --json FILE's file where it was given; a rerun in a wider terminal or with --json FILE."""
    said = " ".join(shown(render_table(flux_result(6), width=80), 80).split())
    assert said.endswith("left out to fit 80 columns: b5, proxy; the heatmap shows them (rerun in a wider terminal "
                         "or with --json FILE, or with --buckets 4)")
    given = " ".join(shown(render_table(flux_result(6), width=80, json_file="scan.json"), 80).split())
    assert given.endswith("left out to fit 80 columns: b5, proxy; the heatmap and scan.json show them (rerun in a "
                          "wider terminal, or with --buckets 4)")
    assert "--json show" not in said + given and "widen the terminal" not in said + given


def test_a_terminal_narrower_than_the_scores_keeps_names_and_scores_whole():
    """34 columns (a split pane): the rank, block and scan columns fit once the others go. Before,
    the proxy stayed and rich cut every name and number to fit ('sing…', '0.3…')."""
    result = flux_result(3)
    text = shown(render_table(result, width=34), 34)
    assert "…" not in text and max(map(len, text.splitlines())) <= 34
    for b in result.blocks:
        assert f"{b.group}.{b.teacher_index}" in text and f"{b.scan:.4f}" in text


def test_a_renumbered_scan_shows_its_block_header_whole_where_there_is_room():
    """A scan after a removal names blocks by teacher index, its header 'block (teacher index)': at 80
    columns it was wrapped to three lines ('block' / '(teacher' / 'index)') beside the names, with 16
    columns to spare; it now takes the room left to it."""
    result = pixart_result(3)
    result.blocks = [dataclasses.replace(b, teacher_index=b.index + 2) for b in result.blocks]
    text = shown(render_table(result, width=80), 80)
    assert "┃ block (teacher index) ┃" in text and "…" not in text
    assert max(map(len, text.splitlines())) <= 80


def test_a_proxy_only_scan_is_ranked_by_the_proxy():
    """No skip scan (proxy_only): the table ranks by the proxy and shows its buckets, not a column of
    '-' in the blocks' own order."""
    result = flux_result(proxy_only=True)
    table = render_table(result, width=200)
    assert [str(c.header) for c in table.columns][2:] == ["early (n=12)", "middle (n=12)", "late (n=12)", "proxy"]
    assert table.columns[1]._cells == ["single.3", "single.2", "single.1", "single.0", "double.1", "double.0"]
    assert "-" not in table.columns[2]._cells


def interrupted_midway(path: Path, write) -> None:
    """`write(path)` cut off by a Ctrl-C after some bytes reached the file it writes."""
    with pytest.raises(KeyboardInterrupt):
        write(path)


def test_an_interrupted_heatmap_leaves_the_old_file_and_no_other(tmp_path, monkeypatch):
    import matplotlib.figure

    def cut_off(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    png = tmp_path / "importance-flux.png"
    png.write_bytes(b"old")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_off)
    interrupted_midway(png, lambda p: plot_heatmap(flux_result(), p))
    assert png.read_bytes() == b"old" and [f.name for f in tmp_path.iterdir()] == [png.name]
    png.unlink()
    interrupted_midway(png, lambda p: plot_heatmap(flux_result(), p))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert plot_heatmap(flux_result(), png) == png and png.read_bytes()[:4] == b"\x89PNG"
    assert oct(png.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as an ordinary open makes it


def test_an_interrupted_json_leaves_the_old_file_and_no_other(tmp_path, monkeypatch):
    real = Path.write_text

    def cut_off(self, text, *a, **kw):
        real(self, text[:10])
        raise KeyboardInterrupt

    js = tmp_path / "importance.json"
    js.write_text("old")
    monkeypatch.setattr(Path, "write_text", cut_off)
    interrupted_midway(js, lambda p: save_json(flux_result(), p))
    assert js.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == [js.name]
    monkeypatch.undo()
    assert save_json(flux_result(), js) == js and js.read_text().startswith("{")


def _umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


@pytest.mark.parametrize("make, said", [
    (flux_result, "; groups as remove_blocks' blocks name them: double = transformer_blocks, "
                  "single = single_transformer_blocks"),
    (pixart_result, "; blocks are transformer_blocks")])
def test_the_caption_says_which_module_list_each_group_label_is(make, said):
    """The table names blocks as remove_blocks' `blocks` take them (double.1), where inspect, the run's
    log and the weights name the module (transformer_blocks.1), and nothing tied the two: the caption
    now says which module list each group is; the labels stay short (room for the per-bucket columns).
    PixArt's one group read oddly as 'groups as remove_blocks' blocks name them: blocks = transformer_blocks'."""
    text = " ".join(shown(render_table(make(), width=100), 100).split())
    assert said in text
    assert ("groups as" in text) == (make is flux_result)


@pytest.mark.parametrize("width", [20, 24, 26])
def test_a_table_narrower_than_its_least_is_a_line_per_block(width):
    """S46 F3 #3: below its least width (27 columns here) rich folded the block names ('sing' / 'le.3') and
    cut the scores; now, as plan's and inspect's tables (report_fit.fitted_rows), a line per block, its name
    first: 'single.3: rank 1,' / '  scan 0.3639,' ..., every name and score whole."""
    result = flux_result(3)
    console = Console(width=width, file=io.StringIO(), record=True, soft_wrap=True)  # as report.results
    console.print(render_table(result, width=width))
    text = console.export_text()
    lines = text.splitlines()
    assert "┃" not in text and "…" not in text and "single = single_transformer_blocks" in " ".join(text.split())
    assert all(len(x) <= width or len(x.split()) == 1 for x in lines)
    for rank, b in enumerate(reversed(result.ranked("scan")), 1):
        assert f"{b.group}.{b.index}: rank {rank}," in lines
        assert f"scan {b.scan:.4f}," in text and f"proxy {b.proxy:.4f}" in text


def printed(table, width: int) -> str:
    """`table` as importance prints it on `width` columns: the results console's soft_wrap (rich breaks no
    line; one wider than the terminal is the terminal's to fold)."""
    console = Console(width=width, file=io.StringIO(), record=True, soft_wrap=True)
    console.print(table)
    return console.export_text()


CAPTION = ("buckets by noise level (1 = pure noise): early 1.00-0.67, middle 0.67-0.33, late 0.33-0.00; proxy = 1 - "
           "cos(block in, block out); Spearman(proxy, scan) = 1.000; 20 block evaluations; blocks are transformer_blocks")


@pytest.mark.parametrize("width", [30, 60, 80, 100])
def test_the_title_and_caption_break_between_words_on_a_narrow_terminal(width):
    """S47: the table's title and caption were one line each (soft_wrap), the caption 212 characters, so a
    terminal of 30-211 columns folded it mid-word ('transformer_bl' / 'ocks'). Now every line is within the
    width, the title's and caption's words whole and in order."""
    text = printed(render_table(pixart_result(), width=width), width)
    assert all(len(line) <= width for line in text.splitlines()), text
    said = " ".join(text.split())
    assert said.startswith("Block importance (pixart): error when the block is skipped ") and CAPTION in said


def test_a_table_whose_title_and_caption_fit_is_printed_as_before():
    """At 212 columns and wider the caption fits: the table as importance printed it before S47."""
    rows = [("1", "3", "0.2200", "0.2000", "0.2010", "0.2020", "0.0210"),
            ("2", "2", "0.2000", "0.1833", "0.1843", "0.1853", "0.0177"),
            ("3", "1", "0.1800", "0.1667", "0.1677", "0.1687", "0.0143"),
            ("4", "0", "0.1600", "0.1500", "0.1510", "0.1520", "0.0110")]
    before = "\n".join([
        "Block importance (pixart): error when the block is skipped",
        "┏━━━━━━┳━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━┓",
        "┃ rank ┃ block    ┃   scan ┃ early (n=14) ┃ middle (n=8) ┃ late (n=10) ┃  proxy ┃",
        "┡━━━━━━╇━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━┩",
        *("│    {} │ blocks.{} │ {} │       {} │       {} │      {} │ {} │".format(*row) for row in rows),
        "└──────┴──────────┴────────┴──────────────┴──────────────┴─────────────┴────────┘",
        CAPTION, ""])
    for width in (212, 250):
        assert printed(render_table(pixart_result(), width=width), width) == before
