"""`inspect`'s per-layer tables: one table where the terminal shows it whole, else the rank budget and
the factorization measurements apart, a block's layers under a row naming it (its teacher index beside
it), names folded to the width (inspect_fold), the least important columns left out first and said
(LEFT_OUT_FIRST); a line per layer where even that is too wide (`layer_lines`)."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

from compress.inspect_blocks import teacher_label
from compress.inspect_fold import fold, with_note
from compress.report import BUDGET_COLUMNS, QUALITY_COLUMNS, block_prefix
from compress.report_fit import (JSON_OR_WIDER, fitted_annotations, least_name_width, left_out_words, row_line,
                                 shown_columns, table_width, wrapped)


def _displayed(row: dict) -> dict:
    """`row` as the tables show it: a loss ratio that is not a finite number (an older report's
    Infinity where the optimum was 0) as none, never "inf"."""
    ratio = row.get("loss_ratio")
    return {**row, "loss_ratio": None} if isinstance(ratio, float) and not math.isfinite(ratio) else row


def _measured(row: dict) -> bool:
    return any(cell(row) != "-" for _, _, cell in QUALITY_COLUMNS)


def inspect_tables(rows: list[dict], width: int, title: str, teacher: dict[str, str], svd_passes: int = 1,
                   piped: bool = False) -> list:
    """The per-layer table as one table when `width` columns show it whole, else as two: the rank
    budget of every layer, and the loss, optimum, error and time of the layers the svd pass
    measured (no second table, nor its columns, where it measured none). Names too long for the
    width fold at a '.' (at a '_' within a longer part), so no two look alike and none breaks mid-word;
    titles and captions longer than the width break at their spaces (report_fit.fitted_annotations).
    Where even a table at its least is wider than `width` (rich would cut its names and numbers): a line
    per layer (layer_lines)."""
    return [fitted_annotations(t, width) if isinstance(t, Table) else t
            for t in _tables(rows, width, title, teacher, svd_passes, piped)]


def _tables(rows: list[dict], width: int, title: str, teacher: dict[str, str], svd_passes: int = 1,
            piped: bool = False) -> list:
    """inspect_tables' tables (or lines), their titles and captions as they are; the second table's title
    names the svd pass's targets, or the svd passes' where the output had several (`svd_passes`)."""
    measured = [r for r in rows if _measured(r)]
    if not measured:
        tables = [_layer_table(rows, f"{title}: rank budget", BUDGET_COLUMNS, width, teacher)]
    else:
        whole = _layer_table(rows, title, BUDGET_COLUMNS + QUALITY_COLUMNS, None, teacher)
        if table_width(whole) <= width:
            return [whole]
        tables = [_layer_table(rows, f"{title}: rank budget", BUDGET_COLUMNS, width, teacher),
                  _layer_table(measured, f"{title}: factorization ({targets_of(svd_passes)})", QUALITY_COLUMNS, width,
                               teacher)]
    if all(table_width(t) <= width for t in tables):
        return tables
    return layer_lines(rows, title, BUDGET_COLUMNS + (QUALITY_COLUMNS if measured else ()), None if piped else width,
                       teacher)


def targets_of(svd_passes: int) -> str:
    """"the svd pass's targets", or "the svd passes' targets" for an output of several svd passes."""
    return "the svd passes' targets" if svd_passes > 1 else "the svd pass's targets"


def layer_lines(rows: list[dict], title: str, columns, width: int | None, teacher: dict[str, str]) -> list[str]:
    """The per-layer table as lines broken at spaces to `width` (report_fit.row_line; None, piped: each
    line whole, for grep): `title`, each block's name (its teacher index beside it), then each layer's,
    indented, with each column's header and cell ('  attn.to_q: role attention, shape 32×32, rank 8, ...',
    a cell '-' left out)."""
    lines = wrapped(title, width)
    for name, note, r in _entries(rows, teacher):
        if r is None:
            lines += with_note(fold(name, width), note, width).split("\n") if width else [f"{name} {note}".rstrip()]
        else:
            lines += row_line(name, [h for h, _, _ in columns], [cell(r) for _, _, cell in columns], width)
    return lines


def _shown_headers(tables: list) -> set[str]:
    """The headers of the columns inspect_tables' `tables` show; every column's where they are lines."""
    if any(isinstance(t, str) for t in tables):
        return {h for h, _, _ in BUDGET_COLUMNS + QUALITY_COLUMNS}
    return {str(c.header) for t in tables for c in t.columns}


# the per-layer columns left out first where a terminal is too narrow for them all (rank and loss/opt stay)
LEFT_OUT_FIRST = ("role", "shape", "params", "kept", "time", "optimal", "loss", "energy", "rel err")


def _layer_table(rows: list[dict], title: str, columns, width: int | None, teacher: dict[str, str]) -> Table:
    """One row per layer; a block's layers under a row naming the block (with its teacher index where
    removal renumbered it), by the rest of their names (`attn1.to_q`). `width`: names folded so the
    table fits it (None: as they are), never below their widest piece between '.'s: where that does
    not fit, columns of LEFT_OUT_FIRST are left out in its order, and the caption says which."""
    entries = _entries(rows, teacher)
    if width is None:
        return _table(title, columns, [(with_note(name, note, 1 << 16), r) for name, note, r in entries])
    least = max(least_name_width([name for name, _, _ in entries] + [note for _, note, _ in entries]), len("layer"))

    def fixed(headers: list[str]) -> int:  # the table's width less the layer column's
        shown = [c for c in columns if c[0] in headers]
        return table_width(_table(title, shown, [("", r) for _, _, r in entries])) - len("layer")

    headers = [c[0] for c in columns]
    shown = shown_columns(headers, LEFT_OUT_FIRST, lambda hs: fixed(hs) + least <= width)
    room = max(width - fixed(shown), least)  # the layer column's share of the width
    left_out = left_out_words([h for h in headers if h not in shown], width, JSON_OR_WIDER)
    return _table(title, [c for c in columns if c[0] in shown],
                  [(with_note(fold(name, room), note, room), r) for name, note, r in entries], left_out or None)


def _entries(rows: list[dict], teacher: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    """(name, note, row): a block's heading row (row None; note: its teacher index), then its layers."""
    entries, block = [], None
    for r in rows:
        prefix = block_prefix(r["name"]) if r["block"] != "-" else ""
        if prefix and prefix != block:
            label = teacher_label(r["block"], teacher)
            entries.append((prefix, label[len(r["block"]):].strip(), None))
        block = prefix
        entries.append((f"  {r['name'][len(prefix) + 1:]}" if prefix else r["name"], "", r))
    return entries


def _table(title: str, columns, entries: list[tuple[str, dict | None]], caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, show_lines=False)
    table.add_column("layer", overflow="fold")  # names come folded at '.'; this only where nothing fits
    for header, just, _ in columns:
        table.add_column(header, justify=just, no_wrap=True)
    for name, r in entries:
        if r is None:
            table.add_row(Text(name, style="bold"))
        else:
            table.add_row(name, *(cell(r) for _, _, cell in columns))
    return table
