"""One reader of the JSON files a user or a crash can damage (a run folder's records, an output's
report.json, a checkpoint's meta.json, a lock file, a teacher's index): `read(path)` and `parse(text)`.

Whatever a file that is no JSON makes json raise is a ValueError, so a reader's `except (OSError,
ValueError)` takes it: no JSON text (JSONDecodeError), not UTF-8 (UnicodeDecodeError), and JSON nested
past Python's recursion limit ('[' * 100000), where json raises RecursionError, which such a reader let
through as a traceback: here it is `NestedTooDeep`, a ValueError with RecursionError's words. An OSError
reading the file is raised as it is.
"""

from __future__ import annotations

import json
from pathlib import Path


class NestedTooDeep(ValueError):
    """JSON nested past Python's recursion limit: 'maximum recursion depth exceeded while decoding a JSON
    array from a unicode string'."""


def parse(text: str | bytes):
    """json.loads of `text`; nesting past the recursion limit: NestedTooDeep."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise NestedTooDeep(str(e)) from None


def read(path: Path):
    """The JSON of the file `path` (its text read as UTF-8): `parse`."""
    return parse(Path(path).read_text(encoding="utf-8"))
