"""Tables fitted to a narrow terminal (inspect, plan, importance): the key column's names whole (folded after a
'.' or '_' at most) and no number cut; where that does not fit, the least important columns left out first,
and the caption says which and where to see them. Left alone, rich fits a table by shrinking its
wrappable key column to nothing and cutting the numbers ('128…', 'd…')."""

from __future__ import annotations

import re
import textwrap
from typing import Callable

from rich.cells import cell_len
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def table_width(table: Table) -> int:
    """The terminal columns `table` takes at its widest (no cell wrapped or cut). The height given too:
    rich sizes a console on a dumb terminal (TERM=dumb) 80x25 unless both are."""
    console = Console(width=1 << 16, height=25)
    return Measurement.get(console, console.options, table).maximum


def least_name_width(names) -> int:
    """The fewest columns that show every name (every line of it) folded after its '.'s and '_'s
    (inspect_fold.fold), no piece cut mid-word."""
    pieces = [p for name in names for line in str(name).split("\n")
              for p in re.findall(r"[^._]+[._]?|[._]", line.strip())]
    return max(map(cell_len, pieces), default=1)


def shown_columns(headers: list[str], drop: tuple[str, ...], fits: Callable[[list[str]], bool]) -> list[str]:
    """`headers` less those of `drop`, left out in that order (least important first) until `fits`
    the rest; all of them where they fit; as few as `drop` allows where nothing fits."""
    shown = list(headers)
    for header in drop:
        if fits(shown):
            break
        shown = [h for h in shown if h != header]
    return shown


JSON_OR_WIDER = "with --json or in a wider terminal"  # left_out_words' `where` of a command with --json


def left_out_words(left_out: list[str], width: int, where: str) -> str:
    """The caption's line of the columns left out: 'columns role, shape left out to fit 40 terminal
    columns (rerun with --json or in a wider terminal to see them)'; '' where none was. `where`: the
    rerun that shows them (JSON_OR_WIDER): this one's table, already printed, cannot."""
    if not left_out:
        return ""
    one = len(left_out) == 1
    what = f"column {left_out[0]}" if one else f"columns {', '.join(left_out)}"
    return f"{what} left out to fit {width} terminal columns (rerun {where} to see {'it' if one else 'them'})"


def fitted_table(title: str, caption: str | None, columns: list[tuple[str, str]], rows: list[list[str]],
                 width: int | None, drop: tuple[str, ...], where: str, key: int = 0,
                 said: Callable[[list[str]], str] | None = None, whole_names: bool = False) -> Table:
    """A table of `columns` (header, justify; the one at `key` the names) and `rows` (cells as text)
    as it fits `width`: as it is where it fits whole (or width None); else each column at its least (the
    widest cell, the header wrapping at its spaces, the key's names folded after a '.' or '_'), columns of
    `drop` left out in order until it fits, and the key column given the room left (its header whole
    where that fits in it). The caption says the columns left out: after its own words (left_out_words,
    `where`: the rerun that shows them), or `said`'s words of their headers on a line of their own.
    `whole_names`: the key's names never folded (plan's role names), its column as wide as the longest."""
    whole = _table(title, caption, columns, rows)
    if width is None or table_width(whole) <= width:
        return fitted_annotations(whole, width)
    names = [row[key] for row in rows]
    least = (max(cell_len(line) for name in names for line in str(name).split("\n")) if whole_names and names
             else least_name_width(names))
    least_key = max(least, *(cell_len(w) for w in columns[key][0].split()))
    headers = [h for h, _ in columns]

    def narrow(shown: list[str], key_room: int) -> Table:
        keep = [headers.index(h) for h in shown]
        cells = [[_fold(row[j], key_room) if j == key else row[j] for j in keep] for row in rows]
        return _table(title, None, [columns[j] for j in keep], cells, least=True, key=(keep.index(key), key_room))

    shown = shown_columns(headers, tuple(h for h in drop if h != headers[key]),
                          lambda shown: table_width(narrow(shown, least_key)) <= width)
    room = max(least_key, width - (table_width(narrow(shown, least_key)) - least_key))
    table = narrow(shown, room)  # the caption apart: it takes no part in the width
    table.caption = _captioned(caption, [h for h in headers if h not in shown], width, where, said)
    return fitted_annotations(table, width)


def fitted_rows(title: str, caption: str | None, columns: list[tuple[str, str]], rows: list[list[str]],
                width: int | None, drop: tuple[str, ...], where: str, whole_names: bool = False, key: int = 0,
                said: Callable[[list[str]], str] | None = None, piped: bool = False) -> list:
    """What to print of a table (its names the column at `key`) on a `width`-column terminal:
    [fitted_table], or where even its least is wider (rich would cut its names, numbers and headers)
    row_lines, each row's name first; `piped` (is_piped: COLUMNS set off a terminal), those
    lines whole, for grep."""
    table = fitted_table(title, caption, columns, rows, width, drop, where, key, said, whole_names)
    if width is None or table_width(table) <= width:
        return [table]
    order = [key, *(j for j in range(len(columns)) if j != key)]
    return row_lines(title, caption, [columns[j] for j in order], [[row[j] for j in order] for row in rows],
                     None if piped else width)


def printable(items: list) -> Table | Group:
    """fitted_rows' `items` as one thing to print: the table, or the lines as they are (`_as_is`)."""
    return items[0] if len(items) == 1 and isinstance(items[0], Table) else Group(*map(_as_is, items))


def print_fitted(console: Console, items: list) -> None:
    """fitted_rows' tables and lines on `console`, the lines as they are (`_as_is`)."""
    for item in items:
        console.print(_as_is(item))


def _as_is(item: Table | str) -> Table | Text:
    """One of fitted_rows' items as printed: a table, or a line as it is (a Text: no markup, highlighting
    or emoji codes read in it)."""
    return item if isinstance(item, Table) else Text(item)


def row_lines(title: str, caption: str | None, columns: list[tuple[str, str]], rows: list[list[str]],
              width: int | None = None) -> list[str]:
    """A table too wide for the terminal at its least, as lines: `title`, a line per row (row_line: its
    first cell, then each other column's header and cell, but a cell '-': 'svd: params 150,000, of
    teacher 75.0%'), then `caption`; `width`: each broken at its spaces to fit it (None: as long as it
    is), no cell cut."""
    lines = wrapped(title, width)
    for row in rows:
        lines += row_line(row[0], [h for h, _ in columns[1:]], row[1:], width)
    return lines + (wrapped(caption, width) if caption else [])


def row_line(name: str, headers: list[str], cells: list[str], width: int | None) -> list[str]:
    """'svd: params 150,000, of teacher 75.0%' (a cell '-' left out), in lines of `width` broken between
    its 'header cell' pairs (pairs_wrapped); the name folded after its '.'s and '_'s where longer than the
    width (inspect_fold.fold), its cells on the lines below where it fills the width; continuation lines
    indented two past its indent."""
    pairs = [(header, cell) for header, cell in zip(headers, cells) if cell != "-"]
    *heads, last = (_fold(name, width) if width else str(name)).split("\n")
    indent = " " * (len(last) - len(last.lstrip()) + 2)
    if width and len(last) >= width:  # no room for its ':' ('transformer_blocks.0' at 20): the cells below it
        return [*heads, last, *pairs_wrapped("", pairs, width, indent)]
    return heads + pairs_wrapped(f"{last}:", pairs, width, indent)


NBSP = "\u00a0"  # a space textwrap does not break at (its whitespace is ASCII's)


def pairs_wrapped(head: str, pairs: list[tuple[str, str]], width: int | None, indent: str) -> list[str]:
    """`head` then 'header cell, header cell' ('-' where no pair), in lines of at most `width` (as one
    line where None) broken between pairs only, so that 'after (planned) ≤ 330,240' never reads as
    'after' / '(planned) ≤' / '330,240'; a pair longer than a line on lines of its own, broken at its
    header's spaces, its cell whole (where a line holds it). Lines after the first begin with `indent`;
    `head` '': the pairs begin on a line of their own."""
    pairs = pairs or [("-", "")]
    said = [f"{header} {cell}".strip() + ("," if j < len(pairs) - 1 else "") for j, (header, cell) in enumerate(pairs)]
    if width is None:
        return [" ".join(filter(None, [head, *said]))]
    lines, line = [], head or None
    for text, (header, cell) in zip(said, pairs):
        if line is not None and len(f"{line} {text}") <= width:
            line = f"{line} {text}"
        elif len(indent + text) <= width:
            lines, line = lines + ([] if line is None else [line]), indent + text
        else:  # longer than a line: lines of its own, its cell (and comma) whole where a line holds it
            whole = cell.replace(" ", NBSP) if len(f"{indent}{cell},") <= width else cell
            comma = text[len(f"{header} {cell}"):]
            pieces = [p.replace(NBSP, " ") for p in wrapped(f"{indent}{header} {whole}{comma}", width, indent)]
            lines, line = lines + ([] if line is None else [line]) + pieces[:-1], pieces[-1]
    return lines + [line]


def lines_width(console: Console) -> int | None:
    """The width plan's and inspect's lines of words are broken to on `console`: its width on a terminal;
    None piped (each line whole, for grep, as report.soft_wrap keeps it; tables are still fitted)."""
    return console.width if console.is_terminal else None


def is_piped(console: Console) -> bool:
    """Whether plan's and inspect's lines on `console` stay whole (lines_width None: stdout is no terminal,
    whatever COLUMNS says): a table too wide for COLUMNS then falls back to lines that grep finds whole
    (fitted_rows' `piped`)."""
    return lines_width(console) is None


def note_lines(note: str, width: int | None) -> list[str]:
    """A note printed under a table (inspect's 'compensation ...', 'blocks removed ...') on a `width`-column
    terminal: each of its lines longer than the width broken at its spaces into lines of at most `width`
    (continuation lines indented two; a word longer than a line whole, on a line of its own; '→ 0.1764' kept
    together), where the terminal would fold it mid-word ('calibra' / 'tion'); a line that fits, or every
    line where width is None, as it is."""
    if width is None:
        return [note]
    pieces = []
    for line in note.split("\n"):
        glued = line.replace(" → ", f" →{NBSP}")  # '→ 0.1764' on one line
        pieces += [line] if len(line) <= width else [p.replace(NBSP, " ") for p in wrapped(glued, width, "  ")]
    return pieces


def fitted_annotations(table: Table, width: int | None) -> Table:
    """`table` with its title and caption (text) broken at their spaces into lines of at most `width`
    (wrapped: a word longer than a line whole), where the results console (soft_wrap: a line as it is)
    would leave the terminal to fold them mid-word ('(the svd pass's tar' / 'gets)'); a line that fits,
    or all where width is None, as it is."""
    for name in ("title", "caption"):
        text = getattr(table, name)
        if width is not None and isinstance(text, str):
            setattr(table, name, "\n".join(piece for line in text.split("\n") for piece in
                                           ([line] if len(line) <= width else wrapped(line, width))))
    return table


def wrapped(line: str, width: int | None, indent: str = "") -> list[str]:
    """`line` broken at its spaces into lines of at most `width` (a word longer stays whole); as it is
    where `width` is None."""
    if width is None:
        return [line]
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [line]


def _captioned(caption: str | None, left_out: list[str], width: int, where: str,
               said: Callable[[list[str]], str] | None) -> str | None:
    """fitted_table's caption: `caption` and what it says of the columns `left_out` (None: no words)."""
    if said is not None:
        return "\n".join(x for x in (caption, left_out and said(left_out)) if x) or None
    return "; ".join(x for x in (caption, left_out_words(left_out, width, where)) if x) or None


def _table(title: str, caption: str | None, columns: list[tuple[str, str]], rows: list[list[str]],
           least: bool = False, key: tuple[int, int] = (0, 0)) -> Table:
    """The rich table; `least`: each column as wide as its widest cell line or header word, the key
    column (`key`: its index, its room) as wide as its whole header where the room holds it."""
    table = Table(title=title, caption=caption)
    for j, (header, justify) in enumerate(columns):
        cells = [line for row in rows for line in str(row[j]).split("\n")]
        at_least = max(map(cell_len, cells + header.split()))
        if j == key[0]:
            at_least = max(at_least, cell_len(header) if cell_len(header) <= key[1] else 0)
        table.add_column(header, justify=justify, no_wrap=not least, width=at_least if least else None)
    for row in rows:
        table.add_row(*row)
    return table


def _fold(name: str, room: int) -> str:
    from compress.inspect_fold import fold

    return "\n".join(fold(line, room) for line in str(name).split("\n"))
