"""Layer names folded to a table's width for `inspect`: broken after a '.' (after a '_' within a
longer part), so no two look alike and none breaks mid-word; a block heading's note beside it."""

from __future__ import annotations

import re


def with_note(name: str, note: str, room: int) -> str:
    """A heading's (folded) name and its note: on the name's last line where that fits `room`, else
    on a line of its own."""
    if not note:
        return name
    last = name.rsplit("\n", 1)[-1]
    return f"{name} {note}" if len(last) + 1 + len(note) <= room else f"{name}\n{note}"


SHORTEST = 3  # characters of a folded name's last line, where a '.' earlier gives it more


def fold(name: str, width: int) -> str:
    """`name` in lines of at most `width` characters, broken after a '.' (after a '_' within a part
    longer than the width, mid-part only where that is longer still); continuation lines keep the
    name's indent. A name that fits stays one line; a last line shorter than SHORTEST (a lone block
    index) takes the piece before it where that fits. A note after the name ('transformer_blocks.1
    (teacher 2)', by block's labels) is no part of it: the name folded, the note beside its last line
    where it fits, else on a line of its own ('transformer_blocks.1' / '(teacher 2)', never 'blocks.' /
    '1 (teacher 2)')."""
    if len(name) <= width:
        return name
    indent = name[:len(name) - len(name.lstrip())]
    head, _, note = name.strip().partition(" ")
    if note:
        return with_note(fold(indent + head, width), note, width - len(indent)).replace("\n", "\n" + indent)
    room = max(width - len(indent), 1)
    lines, line = [], []
    for part in _parts(name.strip(), room):
        if line and len("".join(line)) + len(part) > room:
            lines.append(line)
            line = []
        line.append(part)
    if lines and len(lines[-1]) > 1 and len("".join(line)) < SHORTEST \
            and len(lines[-1][-1]) + len("".join(line)) <= room:  # 'to_out.0', not 'to_out.' and a lone '0'
        line.insert(0, lines[-1].pop())
    return "\n".join(indent + "".join(x) for x in lines + [line])


def _parts(name: str, room: int) -> list[str]:
    """`name`'s pieces, each ending in a '.' (or the end); a piece wider than `room` split after its
    '_'s, and a piece wider still in `room`-wide slices."""
    parts = []
    for piece in re.findall(r"[^.]+\.?|\.", name):
        for sub in ([piece] if len(piece) <= room else re.findall(r"[^_]+_?|_", piece)):
            parts += [sub[i:i + room] for i in range(0, len(sub), room)]
    return parts
