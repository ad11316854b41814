"""A recipe's YAML syntax error in plain words, at the line the user wrote wrong.

PyYAML reports where it noticed the trouble (its problem_mark), which for the common mistakes is
often the line AFTER the wrong one: a key without ':' (`seed 0`) is noticed on the next line, an
unclosed '[' where the next key starts, a mis-indented `ratio: 0.6` where the following line no
longer fits. `yaml_error_words` picks the line (the context_mark where that is where the user's
text began, or the neighbour whose indentation is the odd one) and says what is wrong in words.
"""

from __future__ import annotations

import re

import yaml

from compress.passes import PASSES
from compress.recipe_yaml import unspaced

CLOSING = {"[": "]", "{": "}", "'": "'", '"': '"'}


def yaml_error_words(error: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """(1-based line, what is wrong: ': WORDS' or ' (PYYAML'S PROBLEM)') for a YAML error reading
    `text`: plain words for a tab, a key without ':', a mis-indented line, an unclosed bracket or
    quote, a stray closing bracket; otherwise PyYAML's own problem at its problem mark (None where
    it has none)."""
    if isinstance(error, yaml.reader.ReaderError):  # no problem nor mark: a character's position
        return text.count("\n", 0, error.position) + 1, f": {character_words(error, text)}"
    lines = text.splitlines()
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None) or ""
    mark, start = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    for words in (_tab, _no_colon, _second_document, _after_document_end, _unspaced_above, _unclosed, _colon_in_value, _indentation,
                  _stray_closing):
        if found := words(problem, context, mark, start, lines):
            return found
    return (mark.line + 1 if mark else None), f" ({problem})"


def _tab(problem, context, mark, start, lines):
    if "'\\t'" not in problem or mark is None:
        return None
    line = _line(lines, mark.line)
    if not line[:mark.column].strip():
        return mark.line + 1, ": a tab; indent with spaces, not tabs"
    return mark.line + 1, f": a tab at column {mark.column + 1}; YAML separates with spaces, not tabs"


def _no_colon(problem, context, mark, start, lines):
    """`seed 0`: PyYAML scans it as a key and misses its ':' on the next line (its context_mark is the key)."""
    if "could not find expected ':'" not in problem or start is None:
        return None
    text = _shown(_line(lines, start.line))
    if ":" in text and (hint := unspaced(text)):  # `seed:0`: its ':' there, without the space after it
        return start.line + 1, f": '{text}'{hint}"
    return start.line + 1, f": a key without ':' (KEY: VALUE): '{text}'"


def character_words(error: yaml.reader.ReaderError, text: str) -> str:
    """'a control character (U+0007) at column 25; remove it': a character YAML does not read
    (NUL, BEL, DEL, C1 controls; a surrogate, U+FFFE), at its column of `text`'s line, 1-based."""
    code = error.character if isinstance(error.character, int) else ord(error.character)
    kind = "a control character" if code < 0x20 or 0x7f <= code < 0xa0 else "a character YAML does not allow"
    column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
    return f"{kind} (U+{code:04X}) at column {column}; remove it"


def _second_document(problem, context, mark, start, lines):
    """A '---' after the recipe's mapping: PyYAML's 'but found another document', at that line."""
    if "found another document" not in problem or mark is None:
        return None
    return mark.line + 1, ": a second YAML document ('---'): a recipe is one document"


def _after_document_end(problem, context, mark, start, lines):
    """Text after a '...' line (YAML's end of a document) or after a '%' directive, without a '---':
    PyYAML's "expected '<document start>', but found '<block mapping start>'", at that text."""
    if mark is None or not problem.startswith("expected '<document start>'"):
        return None
    above = [i for i in range(min(mark.line, len(lines)) - 1, -1, -1) if lines[i].split(" #")[0].rstrip() == "..."]
    if above:
        return mark.line + 1, (f": text after the end of the YAML document ('...', line {above[0] + 1}): a recipe "
                               "is one document; remove the '...' line, or what follows it")
    directive = next((i for i in range(min(mark.line, len(lines))) if lines[i].startswith("%")), None)
    if directive is None:
        return None
    return directive + 1, (f": a YAML directive ('{_shown(lines[directive])}') needs a '---' line after it; "
                           "a recipe needs neither: remove it")


def _unspaced_above(problem, context, mark, start, lines):
    """`ratio:0.5` above `multiple: 8`: the text a ':' without its space left a plain scalar runs on to
    the next line, whose ': ' PyYAML refuses there (`mapping values are not allowed here`)."""
    if mark is None or "mapping values are not allowed" not in problem:
        return None
    line, above = _line(lines, mark.line), _content_line(lines, mark.line, -1)
    if ": " in line[:mark.column] or above is None or _indent(lines[above]) != _indent(line):
        return None  # a second ': ' on its line (_colon_in_value); a line indented unlike it (_indentation)
    text = _shown(lines[above])
    hint = unspaced(text)
    return (above + 1, f": '{text}'{hint}") if hint else None


def _unclosed(problem, context, mark, start, lines):
    """`[a, b` or `"text`: the bracket or quote the context_mark points at is not closed on its line."""
    if start is None or mark is None or mark.line == start.line and "<stream end>" not in problem:
        return None
    if not ("flow" in context or "quoted scalar" in context and "end of stream" in problem):
        return None
    opened = _line(lines, start.line)[start.column:start.column + 1]
    if opened not in CLOSING:
        return None
    return start.line + 1, f": unclosed '{opened}' (no '{CLOSING[opened]}' closes it on this line)"


def _colon_in_value(problem, context, mark, start, lines):
    """`description: a note: with colon`: a second ': ' on the line of a key's value (`mapping values are not
    allowed here` at it), not the line before mis-indented (`_indentation` would blame it after a block)."""
    if mark is None or "mapping values are not allowed" not in problem:
        return None
    line = _line(lines, mark.line)
    if ": " not in line[:mark.column] and not line[:mark.column].rstrip().endswith(":"):
        return None  # the first ':' of its line: a key where none may be (a mis-indented line)
    key, _, value = line.split(" #")[0].strip().partition(": ")
    if value[:1] in ("{", "["):  # `export: {dtype: float32}: x`: text after the closing bracket
        rest = line[mark.column:].split(" #")[0].strip()
        return mark.line + 1, f": '{_shown(rest)}' after the closing '{CLOSING[value[0]]}' of {key}'s value; remove it"
    item = key[2:] if key.startswith("- ") else None  # a list's: a pass (`- svd: targets: [mlp]`) or a prompt
    if item in PASSES and re.fullmatch(r"[A-Za-z_]\w*", value.partition(": ")[0]):
        return mark.line + 1, f": a mapping as a key's value on its line goes in braces: {key}: {{{value}}}"
    quote = '"' if "'" in value or "'" in (item or "") else "'"
    if item is not None:  # `- a cat: cute: photo` (a prompt holding ': ')
        return mark.line + 1, f": an item with ': ' in it: quote it (- {quote}{item}: {value}{quote})"
    return mark.line + 1, f": a value with ': ' in it: quote it ({key}: {quote}{value}{quote})"


def _indentation(problem, context, mark, start, lines):
    """A line indented unlike its neighbours: PyYAML notices on the line P after it (`mapping values are
    not allowed here`, `expected <block end>` at P's first token); the wrong one is the line Q before P
    where P's indentation agrees with the line before Q or after P, else P itself."""
    if mark is None:
        return None
    line = _line(lines, mark.line)
    starts_line = context.startswith("while parsing a block") and mark.column == _indent(line)
    if not ("mapping values are not allowed" in problem or starts_line):
        return None
    at, before = mark.line, _content_line(lines, mark.line, -1)
    if before is None or _indent(lines[before]) == _indent(line):
        return None
    if _indent(line) > _indent(lines[before]) and lines[before].split(" #")[0].rstrip().endswith(":"):
        return None  # P is the first line of the block `before` opens: indented as it should be
    around = [i for i in (_content_line(lines, before, -1), _content_line(lines, at, +1)) if i is not None]
    wrong, right = (before, at) if any(_indent(lines[i]) == _indent(line) for i in around) else (at, before)
    return wrong + 1, (f": this line's indentation does not match the lines above: '{_shown(lines[wrong])}' "
                       f"is indented {_spaces(_indent(lines[wrong]))}, its neighbour {_indent(lines[right])}")


def _stray_closing(problem, context, mark, start, lines):
    """`[a, b]]`: a closing bracket no opening one matches."""
    closing = {"]": "[", "}": "{"}
    if mark is None or not (problem.endswith("found ']'") or problem.endswith("found '}'")):
        return None
    found = problem[-2]
    return mark.line + 1, f": a '{found}' at column {mark.column + 1} that closes no '{closing[found]}'"


def _line(lines: list[str], index: int) -> str:
    return lines[index] if 0 <= index < len(lines) else ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content_line(lines: list[str], index: int, step: int) -> int | None:
    """The nearest line from `index` (excluded) in direction `step` that holds more than a comment."""
    index += step
    while 0 <= index < len(lines):
        if lines[index].strip() and not lines[index].lstrip().startswith("#"):
            return index
        index += step
    return None


def _spaces(count: int) -> str:
    return f"{count} space{'' if count == 1 else 's'}"


def _shown(line: str) -> str:
    """The line's text, without its indentation and comment, cut to 40 characters."""
    text = line.split(" #")[0].strip()
    return text if len(text) <= 40 else text[:37] + "..."
