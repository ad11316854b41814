"""YAML nodes to typed values and config dataclasses (recipe fields, pass options), and where each node
came from: its file:line or the --set that gave it, which errors name.

Keys are checked first (`_check_keys`: plain, unique, untagged); `build_dataclass` validates a mapping
against a dataclass's fields, pointing a BadValue at its key's line and the --sets its check read.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

import yaml

from compress.errors import BadValue, UserError, as_yaml, did_you_mean, must_be_one_of, not_one_of
from compress.recipe_set import key_nodes, nearest
from compress.recipe_yaml import MAP, NULL, RecipeLoader, collection_tag, type_hint, unspaced


# an unknown key '<<': YAML 1.1's merge key, which YAML 1.2 (how recipes are read) does not have
MERGE_HINT = ("; recipes are read as YAML 1.2, which has no merge key: write the keys out "
              "(or use --set)")


# ---- YAML with line numbers -------------------------------------------------------------------
class _Loc:
    """file:line of a YAML node, for messages."""

    def __init__(self, path: str, node: yaml.Node | None):
        mark = getattr(node, "start_mark", None)
        self.path = path
        self.line = mark.line + 1 if mark is not None else 0
        self.override = mark.name if mark is not None and mark.name.startswith("--set") else None

    def where(self) -> str:
        if self.override:  # a value given on the command line, not in the file
            return f"{self.path} ({self.override})"
        return f"{self.path}:{self.line}" if self.line else self.path

    def err(self, msg: str) -> UserError:
        return UserError(f"{self.where()}: {msg}")


def with_sets(at: _Loc, locs) -> str:
    """`at`'s where, and '(with --set ...)' naming the --sets among `locs` (the keys whose values the
    error's check read): an error a --set caused names it. Where `at` is a --set itself, the others
    follow it: 'r.yaml (--set count={single: 1}, with --set count.single=null)'."""
    sets = sorted({loc.override for loc in locs if loc.override} - {at.override})
    if at.override:
        return f"{at.path} ({at.override}{', with ' + ', '.join(sets) if sets else ''})"
    return at.where() + (f" (with {', '.join(sets)})" if sets else "")


def concerned(keys: dict, error: Exception) -> list:
    """The places among `keys` (dotted key -> _Loc) of the keys `error` concerns: the key a BadValue
    names and those its check says it read (`reads`, errors.BadValue), each with the keys under and
    above it; all of them where the error does not say (no key, or a check that does not list what it
    read), so that a --set that may have caused it is never left out."""
    key, reads = getattr(error, "key", None), getattr(error, "reads", None)
    if key is None or reads is None:
        return list(keys.values())
    wanted = (key, *reads)
    return [at for k, at in keys.items()
            if any(k == w or k.startswith(f"{w}.") or w.startswith(f"{k}.") for w in wanted)]


def _key_locs(node: yaml.Node | None, path: str) -> dict[str, _Loc]:
    """Where each key under `node` is, by dotted path (recipe_set.key_nodes)."""
    return {key: _Loc(path, at) for key, at in key_nodes(node).items()}

def _construct(node: yaml.Node):
    loader = RecipeLoader("")
    return loader.construct_object(node, deep=True)


def _problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem constructing a value; a tag it has no constructor for (!!python/object:x,
    !custom) said as a tag a recipe does not read."""
    problem = getattr(error, "problem", None) or str(error)
    if found := re.fullmatch(r"could not determine a constructor for the tag '(.*)'", problem):
        tag = found[1].replace("tag:yaml.org,2002:", "!!")
        return f"the YAML tag {tag} is not read: a recipe holds plain values; remove the tag"
    return problem


# ---- typed conversion ---------------------------------------------------------------------------
def _type_name(tp) -> str:
    tp = {list: list[Any], dict: dict[str, Any]}.get(tp, tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list" if item is Any else f"a list of {_type_name(item)}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return "a mapping" if v is Any else f"a mapping of {_type_name(k)} to {_type_name(v)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(node: yaml.Node, tp, loc_path: str, what: str):
    """YAML node -> a value of type tp (dataclass, list, dict, Literal, scalars, unions)."""
    loc = _Loc(loc_path, node)
    tp = {list: list[Any], dict: dict[str, Any]}.get(tp, tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        try:
            return _construct(node)
        except yaml.YAMLError as e:
            raise loc.err(f"{what}: {_problem(e)}") from None
    if dataclasses.is_dataclass(tp):
        return build_dataclass(node, tp, loc_path, what)
    if origin in (typing.Union, types.UnionType):
        errors = {}
        for arg in typing.get_args(tp):
            try:
                return convert(node, arg, loc_path, what)
            except UserError as e:
                errors[arg] = e
        if (inner := _only_container(node, typing.get_args(tp))) is not None:
            raise errors[inner]  # names the value inside that is wrong, at its line
        if (choice := _only_choice(typing.get_args(tp))) is not None:
            raise errors[choice]  # a choice or null: the choices, as without null
        raise loc.err(f"{what} must be {_type_name(tp)}, not {_shown(node)}{type_hint(node, tp)}")
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise loc.err(f"{what} must be {_type_name(tp)}, not {_shown(node)}")
        (item,) = typing.get_args(tp)
        return [convert(n, item, loc_path, f"{what}[{i}]") for i, n in enumerate(node.value)]
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise loc.err(f"{what} must be {_type_name(tp)}, not {_shown(node)}")
        kt, vt = typing.get_args(tp)
        return {convert(k, kt, loc_path, f"key of {what}"): convert(v, vt, loc_path, f"{what}.{k.value}")
                for k, v in node.value}
    if not isinstance(node, yaml.ScalarNode):
        if origin is Literal:  # as a wrong scalar is refused (not_one_of), the value's kind for it
            raise loc.err(f"{must_be_one_of(what, typing.get_args(tp))}, not {_shown(node)}")
        raise loc.err(f"{what} must be {_type_name(tp)}")
    try:
        value = _construct(node)
    except yaml.YAMLError as e:
        raise loc.err(f"{what}: {_problem(e)}") from None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise loc.err(not_one_of(what, value, choices))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise loc.err(f"{what} must be {_type_name(tp)}, not {as_yaml(value)}{type_hint(node, tp)}")


def _only_container(node: yaml.Node, args) -> Any:
    """The one type of a union that takes a list (a mapping) when `node` is one, None if none or
    several do: its error about a value inside (blocks.blocks: '1') says more than the union's."""
    def takes(arg) -> bool:
        arg = {list: list[Any], dict: dict[str, Any]}.get(arg, arg)
        if isinstance(node, yaml.SequenceNode):
            return typing.get_origin(arg) is list
        return isinstance(node, yaml.MappingNode) and (typing.get_origin(arg) is dict
                                                       or dataclasses.is_dataclass(arg))
    found = [arg for arg in args if takes(arg)]
    return found[0] if len(found) == 1 else None


def _only_choice(args) -> Any:
    """The Literal of a union that is a Literal or null (remove_blocks.estimator), else None."""
    others = [arg for arg in args if arg is not type(None)]
    return others[0] if len(others) == 1 and typing.get_origin(others[0]) is Literal else None


def _choosing(tp, choices):
    """A string key's type `tp` (or string-or-null) as the Literal of its `choices` (its config's
    CHOICES), so that a value outside them, a boolean or a number too, is refused naming them (not
    as 'must be a string, not false'); `tp` where the key has none."""
    if not choices:
        return tp
    if tp is str:
        return Literal[tuple(choices)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {str, type(None)}:
        return Literal[tuple(choices)] | None
    return tp


def _shown(node: yaml.Node) -> str:
    """A value as an error quotes it: a scalar as written, else its kind."""
    if isinstance(node, yaml.ScalarNode):
        try:
            return as_yaml(_construct(node))
        except yaml.YAMLError:
            return repr(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def build_dataclass(node: yaml.Node, cls, path: str, what: str, keys: str | None = None):
    """`node`'s mapping as a `cls`; `what` names the mapping in errors about it (passes[0].svd), `keys`
    (default `what`) prefixes its keys' names, as its checks spell them (svd.ratio)."""
    loc, keys = _Loc(path, node), what if keys is None else keys
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == NULL):
        if node is not None:
            convert(node, type(None), path, what)  # !!null abc is refused, not read as null
        node = yaml.MappingNode(MAP, [], node.start_mark if node else None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in ("path", "raw")}
    if not isinstance(node, yaml.MappingNode):  # `- svd: fast`, `ratio:0.5` (a ':' without its space)
        hint = unspaced(node.value, fields) if isinstance(node, yaml.ScalarNode) and node.style is None else ""
        raise loc.err(f"{what} must be a mapping of options, not {_shown(node)}{hint}")
    values, key_at = {}, {}
    for key_node, value_node in node.value:  # keys: unique strings (_check_keys)
        key = key_node.value
        if key not in fields:
            hint = MERGE_HINT if key == "<<" else did_you_mean(key, fields)
            raise _Loc(path, key_node).err(f"unknown key '{key}' in {what}{hint} "
                                           f"(known: {', '.join(fields)})")
        try:
            tp = _choosing(hints[key], getattr(cls, "CHOICES", {}).get(key))
            values[key] = convert(value_node, tp, path, f"{keys}.{key}" if keys else key)
        except UserError as e:  # a field's metadata may say what to write (remove_blocks.blocks)
            if words := _checked_words(cls, values, key, value_node, tp):
                raise _Loc(path, value_node).err(words) from None
            if not fields[key].metadata.get("hint"):
                raise
            raise UserError(f"{e}; {fields[key].metadata['hint']}") from None
        key_at[key] = key_node
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise loc.err(f"{what or 'recipe'} is missing required key '{missing[0]}'")
    try:
        obj = cls(**values)
    except (ValueError, TypeError) as e:
        raise loc.err(f"{what}: {e}") from None
    for key, value in values.items():  # .nan / .inf read as floats and pass most range checks
        if isinstance(value, float) and not math.isfinite(value):
            raise _Loc(path, key_at.get(key, node)).err(f"{keys + '.' if keys else ''}{key} must be a "
                                                        f"finite number, got {value}")
    # the keys the mapping wrote, for its checks; not a field (asdict, ==). In a saved recipe with marks
    # (recipe_yaml.read_marks), `_filled` holds those its marks say the defaults filled in, left out of `_given`
    filled = {k for k, n in key_at.items() if getattr(n, "filled", False) and values[k] == field_default(fields[k])}
    obj.__dict__["_given"] = set(values) - filled
    if any(hasattr(n, "filled") for n in key_at.values()):
        obj.__dict__["_filled"] = filled
    check = getattr(obj, "validate", None)
    if check:
        try:
            check()
        except BadValue as e:  # names its key: point at that key's line (or its --set), and the --sets it read
            locs = _key_locs(node, path)
            raise UserError(f"{with_sets(nearest(locs, e.key) or loc, concerned(locs, e))}: {e}") from None
        except ValueError as e:
            raise loc.err(f"{what}: {e}") from None
    return obj


def _checked_words(cls, values: dict, key: str, node: yaml.Node, tp) -> str | None:
    """What `cls`'s own check says of the scalar its type `tp`, a union of words (bool | str), refused
    at `key`: `asymmetric: 1` is 'svd.asymmetric must be true, false or auto, not 1' (its check's
    words), not 'must be true or false or a string'. None where the type takes no words, the value is
    no plain scalar, or the check refuses no value of `key` (the type's words stand)."""
    if str not in typing.get_args(tp) or not isinstance(node, yaml.ScalarNode) or not hasattr(cls, "validate"):
        return None
    try:
        cls(**{**values, key: _construct(node)}).validate()
    except BadValue as e:
        return str(e) if e.key == key else None
    except (yaml.YAMLError, ValueError, TypeError):
        return None
    return None


def field_default(f: dataclasses.Field):
    """A dataclass field's default value (a new one of a default_factory); MISSING where it has none."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_keys(node: yaml.Node, path: str, seen: set[int] | None = None, dotted: str = "") -> None:
    """Every mapping key is a plain scalar and appears once (YAML itself lets the last one win);
    no list or mapping carries a tag but the standard ones (`collection_tag`; `dotted`: the node's path)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias (even a recursive one) is checked once
        return
    seen.add(id(node))
    if problem := collection_tag(node):
        raise _Loc(path, node).err(f"{dotted + ': ' if dotted else ''}{problem}")
    if isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            _check_keys(item, path, seen, f"{dotted}.{n}" if dotted else str(n))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}  # key -> its line
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise _Loc(path, key).err("a key must be a plain name, not a list or mapping")
            if key.value in first:
                where = f" (first at line {first[key.value]})" if first[key.value] else ""
                raise _Loc(path, key).err(f"duplicate key '{key.value}'{where}")
            first[key.value] = 0 if _Loc(path, key).override else _Loc(path, key).line
            _check_keys(value, path, seen, f"{dotted}.{key.value}" if dotted else key.value)
