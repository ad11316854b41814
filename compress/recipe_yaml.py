"""How recipes and `--set` values read YAML: the YAML 1.2 core schema, one rule everywhere.

PyYAML reads YAML 1.1, where yes/no/on/off are booleans, 1_000 and 0b101 are integers, 017 is
octal, 1e-4 is a string and dates are timestamps. Recipes read plain scalars as YAML 1.2's core
schema does instead: booleans are only true/false (True, TRUE, ...), integers are decimal, 0o
octal or 0x hex, floats include 1e-4 and .inf/.nan, null is null/Null/NULL/~ or nothing; anything
else is a string. A decimal with a leading zero (010: YAML 1.1's octal 8) is refused, and explicit
tags (!!bool yes, !!float abc) are held to the same rules, each a ConstructorError that the recipe
names by file:line; a list or mapping takes no tag but !!seq / !!map (`collection_tag`).
`RecipeDumper` quotes a string either YAML version would read as something else.
"""

from __future__ import annotations

import re
import types
import typing

import yaml

NULL, BOOL, INT, FLOAT, STR, TIMESTAMP, SEQ, MAP = (f"tag:yaml.org,2002:{t}" for t in
                                                    ("null", "bool", "int", "float", "str", "timestamp",
                                                     "seq", "map"))

# (tag, pattern, first characters) of the core schema (YAML 1.2.2, 10.3.2); ints before floats
CORE = [
    (NULL, r"null|Null|NULL|~|", ["n", "N", "~", ""]),
    (BOOL, r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    (INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", list("-+0123456789")),
    (FLOAT, r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?(?:\.inf|\.Inf|\.INF)|\.nan|\.NaN|\.NAN", list("-+0123456789.")),
]
CORE_RE = [(tag, re.compile(rf"^(?:{pattern})$"), first) for tag, pattern, first in CORE]
PATTERN = {tag: pattern for tag, pattern, _ in CORE}


def core_tag(text: str) -> str:
    """The tag YAML 1.2's core schema gives the plain scalar `text`."""
    for tag, regexp, _ in CORE_RE:
        if regexp.match(text):
            return tag
    return STR


def is_null(node: yaml.Node) -> bool:
    """Whether `node` is a null value (null, ~, an empty value; not 'null' quoted, nor !!null abc)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL and core_tag(node.value) == NULL


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader reading plain scalars by YAML 1.2's core schema (module docstring); a mapping key
    that lacks the space after its ':' ({double:1}) refused (`unspaced_key`)."""

    yaml_implicit_resolvers: dict = {}  # not SafeLoader's YAML 1.1 ones (filled below)

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        for key, value in node.value:
            if problem := unspaced_key(key, value):
                raise yaml.composer.ComposerError(None, None, problem, key.start_mark)
        return node


_UNSPACED = re.compile(r"([^:\s]+):(\S.*)")  # double:1: a key and value a ':' without its space joined


def unspaced_key(key: yaml.Node, value: yaml.Node) -> str | None:
    """What is wrong with a mapping entry whose plain key holds a ':' not followed by a space and
    that has no value: {double:1} is YAML's key 'double:1' with the value null, never what was meant.
    None for any other entry (a quoted key, one with a value, b:2: 3)."""
    if not (isinstance(key, yaml.ScalarNode) and key.style is None and (split := _UNSPACED.fullmatch(key.value))):
        return None
    if not (isinstance(value, yaml.ScalarNode) and value.style is None and value.value == ""):
        return None
    return (f"no space after ':' in '{key.value}', which YAML reads as the key '{key.value}' without a value; "
            f"write '{split[1]}: {split[2]}'")


_SPACED = re.compile(r"([A-Za-z_]\w*)[ \t]+([^:\s]\S*)")  # ratio 0.5: a key and value without the ':'


def unspaced(text: str, keys=None) -> str:
    """" (write 'ratio: 0.5', a space after ':')" for a plain text that is a key and its value a ':'
    without its space joined (ratio:0.5), or without the ':' (ratio 0.5); `keys`, where given, the
    keys it is said for (a pass's options); else ''."""
    if split := _UNSPACED.fullmatch(text):
        why = "a space after ':'"
    elif split := _SPACED.fullmatch(text):
        why = "a ':' after the key"
    if not split or ": " in text or keys is not None and split[1] not in keys:
        return ""
    return f" (write '{split[1]}: {split[2]}', {why})"


def rest_of_line(mark: yaml.Mark | None) -> str | None:
    """The file's line from `mark` on, its comment cut; None for a mark that holds no text (a --set's)."""
    if mark is None or mark.buffer is None:
        return None
    return _rest_of_line(mark.buffer, mark.pointer).split(" #")[0].rstrip(" \t\0")


def _refuse(node: yaml.ScalarNode, problem: str, hint: str = "") -> typing.NoReturn:
    """Raise the ConstructorError a recipe error quotes ("{where}: {key}: {problem} {hint}"); the
    hint alone is its note (type_hint shows it where a union of types was wanted)."""
    raise yaml.constructor.ConstructorError(None, None, f"{problem}{' ' if hint else ''}{hint}", node.start_mark,
                                            hint or None)


def _construct_checked(loader: RecipeLoader, node: yaml.ScalarNode):
    """A core-schema null, boolean, integer or float (CHECKED, by the node's tag): an explicit tag
    (!!bool yes, !!float abc, !!null abc) is held to the pattern a plain scalar is."""
    text = loader.construct_scalar(node)
    what, hinted, value = CHECKED[node.tag]
    if not re.fullmatch(PATTERN[node.tag], text):
        _refuse(node, f"{text!r} is not a YAML 1.2 {what}", spelling_hint(text, hinted).strip())
    return value(node, text)


def _int_value(node: yaml.ScalarNode, text: str) -> int:
    """0o17 is fifteen, 0x1f 31; 017 is refused (YAML 1.1 read it as octal 15, YAML 1.2 as 17:
    `_leading_zero`)."""
    if re.fullmatch(r"[-+]?0[0-9]+", text):
        _refuse(node, f"{text!r} has a leading zero", _leading_zero(text))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _leading_zero(text: str) -> str:
    """How to write the decimal integer `text` (010) without its leading zero, or as octal."""
    decimal, octal = int(text, 10), re.fullmatch(r"[-+]?0[0-7]+", text) and int(text, 8)
    if octal is None or octal == decimal:  # 08 (a string to YAML 1.1), 00
        return f"(write {decimal})"
    spelled = "" if text[0] in "+-" else f", or 0o{text.lstrip('0')} for octal"  # the core schema's 0o is unsigned
    return f"(YAML 1.1 read it as octal {octal}: write {decimal}{spelled})"


def _float_value(node: yaml.ScalarNode, text: str) -> float:
    """An explicit !!float 2 is 2.0; .inf, -.Inf, .NaN as Python reads inf and nan."""
    if text.lstrip("+-").lower() in (".inf", ".nan"):
        return float(text.replace(".", ""))  # float("-inf"), float("nan")
    return float(text)


# tag -> (what a text not of its core-schema PATTERN is not, the type whose YAML 1.1 spelling the
# refusal hints (spelling_hint: yes, 1_000, 0b101), the value of a text of that pattern)
CHECKED = {
    NULL: ("null (null, Null, NULL, ~ or nothing)", set(), lambda node, text: None),
    BOOL: ("boolean", {bool}, lambda node, text: text.lower() == "true"),
    INT: ("integer", {int}, _int_value),
    FLOAT: ("number", {float}, _float_value),
}


def _construct_timestamp(loader: RecipeLoader, node: yaml.ScalarNode):
    """SafeLoader's !!timestamp, whose malformed text (abc, 2024-13-45) raised AttributeError or ValueError."""
    text = loader.construct_scalar(node)
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except (AttributeError, ValueError):
        _refuse(node, f"{text!r} is not a YAML timestamp (YYYY-MM-DD, or with a time)")


for _tag, _regexp, _first in CORE_RE:
    RecipeLoader.add_implicit_resolver(_tag, _regexp, _first)
for _tag in CHECKED:
    RecipeLoader.add_constructor(_tag, _construct_checked)
RecipeLoader.add_constructor(TIMESTAMP, _construct_timestamp)


def collection_tag(node: yaml.Node) -> str | None:
    """What is wrong with a list or mapping tagged other than !!seq / !!map (!!str [a], !!set {a},
    !!omap, !custom), which a recipe would read as a plain list or mapping, not as its tag says;
    None for any other node."""
    standard = {yaml.SequenceNode: SEQ, yaml.MappingNode: MAP}.get(type(node))
    if standard is None or node.tag == standard:
        return None
    kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    return (f"{tag} on {kind}: a recipe's lists and mappings take no tag (but the standard !!seq and "
            f"!!map); remove {tag}")


class RecipeDumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings the core schema reads as something else (0o17, 1e-4),
    so a dumped recipe reads back the same by RecipeLoader and by YAML 1.1 readers alike."""

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == STR:
            return core_tag(value)
        return tag


def spelling_hint(text: str, expected: set) -> str:
    """A hint for a string where `expected` (of bool, int, float) wanted a boolean or a number that
    YAML 1.1 would have read from it: yes/on, 1_000, 0b101 (and 1,000). '' when there is none."""
    if bool in expected and text.lower() in ("yes", "no", "on", "off", "y", "n", "true", "false"):
        word = "true" if text.lower() in ("yes", "on", "y", "true") else "false"
        return f" (write {word}: in YAML 1.2 only true and false are booleans)"
    number = _number(text) if expected & {int, float} else None
    if number is None or (float not in expected and not isinstance(number, int)):
        return ""
    why = "YAML 1.2 has no 0b binary numbers" if "0b" in text.lower() else "a YAML 1.2 number has no '_' or ','"
    return f" (write {number}: {why})"


def _number(text: str) -> int | float | None:
    """The finite number `text` spells with digit separators ('_', or ',' between groups of three)
    or in 0b binary; None if it is none of those."""
    cleaned = text.replace("_", "")
    if re.fullmatch(r"[-+]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?", cleaned):
        cleaned = cleaned.replace(",", "")
    if cleaned == text and not re.fullmatch(r"[-+]?0[bB][01]+", text):
        return None  # nothing to respell
    try:
        return int(cleaned, 0)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if value - value == 0 else None  # not inf or nan


def type_hint(node: yaml.Node, tp) -> str:
    """How to spell the boolean or number that type `tp` wanted and the scalar `node` nearly is:
    yes -> true, 1_000 -> 1000 (spelling_hint), 1e11 -> 100000000000 for an integer; else ''."""
    if not isinstance(node, yaml.ScalarNode):
        return ""
    wanted = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
    try:
        value = RecipeLoader("").construct_object(node)
    except yaml.YAMLError as e:  # 010, !!bool yes: the constructor's hint (_refuse)
        return f" {e.note}" if getattr(e, "note", None) else ""
    if isinstance(value, str):
        return spelling_hint(value, wanted & {bool, int, float}) or _mapping_hint(node, wanted)
    if int in wanted and isinstance(value, float) and value.is_integer():
        return f" (an integer is written without a dot or exponent: {int(value)})"
    return ""


def _mapping_hint(node: yaml.ScalarNode, wanted: set) -> str:
    """How to write the mapping a plain text such as single:1 (a ':' without its space) nearly is,
    where `wanted` takes a mapping; else ''."""
    takes_mapping = any(w is dict or typing.get_origin(w) is dict for w in wanted)
    split = _UNSPACED.fullmatch(node.value) if node.style is None and takes_mapping else None
    return f" (a mapping needs a space after ':': write {{{split[1]}: {split[2]}}})" if split else ""


# ---- a saved recipe's default marks -------------------------------------------------------------
# An output's recipe.yaml writes every key; its first line says that a key ending in DEFAULT_MARK was
# left out of the recipe and holds its default (recipe_dump.dump_recipe). Only a file with that line above
# its first key is read for marks: a comment '# default' in a recipe written by hand means nothing.
MARKS_HEADER = "# every key is written out; '# default' marks one the recipe left out (it holds its default)"
DEFAULT_MARK = "# default"
_MARKED = re.compile(r":?[ \t]*#[ \t]*default[ \t]*")  # what follows a marked key's value on its line


def entries(node: yaml.Node, prefix: str = "", seen: set[int] | None = None):
    """(dotted path, key node, value node) of every mapping entry under `node`, by the paths --set
    names them with (calibration.seed, passes.2.svd.ratio); an alias's node is walked once."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from entries(item, f"{prefix}{i}.", seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                yield f"{prefix}{key.value}", key, value
                yield from entries(value, f"{prefix}{key.value}.", seen)


def _mark_at(key: yaml.Node, value: yaml.Node) -> int:
    """Where an entry's line takes its mark: after a value that ends on its key's line (a scalar, a
    flow list or mapping), else after the key (a block list or mapping starts on the next line)."""
    block = isinstance(value, (yaml.SequenceNode, yaml.MappingNode)) and not value.flow_style
    return (key if block else value).end_mark.index


def _rest_of_line(text: str, at: int) -> str:
    return re.match(r"[^\r\n\x85\u2028\u2029]*", text[at:]).group()


def with_marks(text: str, paths: set[str]) -> str:
    """The dumped recipe `text` with DEFAULT_MARK at the end of the lines of the keys `paths`."""
    ends = sorted((_mark_at(k, v) + len(_rest_of_line(text, _mark_at(k, v)))
                   for dotted, k, v in entries(yaml.compose(text, Loader=RecipeLoader)) if dotted in paths),
                  reverse=True)
    for end in ends:  # from the last, so that the earlier ends stay where they are
        text = f"{text[:end]}  {DEFAULT_MARK}{text[end:]}"
    return text


_OPENING = re.compile(r"(#.*|%.*|---([ \t]+#.*)?|)")  # a comment, a directive, a document start, a blank


def is_marked(text: str) -> bool:
    """Whether `text` is a recipe saved with default marks: MARKS_HEADER among the lines above its
    first key (comments, blank lines, a '---' or a %YAML directive: an edit may have put them there)."""
    for line in text.lstrip("\ufeff").splitlines():
        if line.strip() == MARKS_HEADER:
            return True
        if not _OPENING.fullmatch(line.strip()):
            return False
    return False


def read_marks(root: yaml.Node, text: str) -> None:
    """In a recipe saved with marks (`is_marked`), set `filled` on every mapping key node of `root`:
    True where its line ends in DEFAULT_MARK (build_dataclass reads it). Another recipe's nodes are
    left without it."""
    if not is_marked(text):
        return
    for _, key, value in entries(root):
        key.filled = bool(_MARKED.fullmatch(_rest_of_line(text, _mark_at(key, value))))
