"""A `--set KEY=null` or `--set KEY=` (nothing after '='): whether null goes into the recipe's tree
as a value (`takes_null`: a key that takes null, a required key, a list's item, a key not known) or
the key is taken out so its default holds (`drop`; a name absent from a mapping keyed by names is
refused: `_absent`), and what an empty value is told (`no_value`). Where a --set's value goes is
recipe_set's."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from compress.errors import UserError, did_you_mean
from compress.passes import PASSES, config_class
from compress.recipe_set import (NAME_KEYED, _check_index, _check_pass_index, _own, _refuse_leading_zero,
                                 _refuse_pass_name, _split)


def drop(data_node: yaml.MappingNode, dotted: str, value_text: str, path: str = "<recipe>") -> None:
    """`--set KEY=null` for a key that takes no null (`takes_null`): take the key out of the tree,
    so its default holds (a list's items are not dropped: the indices after them would move). An
    option the recipe lacks leaves the tree as it is (its default holds already); a key of a mapping
    keyed by names (a `ranks` pattern, a `count` group) that the recipe lacks is refused (`_absent`):
    it has no default, so it is misspelt, or the --set names another pass. Errors name the recipe
    `path` and the --set, as recipe_set.place's."""
    said = f"{path} (--set {dotted}={value_text})"
    node, parts = data_node, _split(dotted)
    _refuse_leading_zero(parts, said)
    _refuse_pass_name(data_node, parts, value_text, said)
    _check_pass_index(data_node, parts, said)
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, yaml.SequenceNode):
            _check_index(node, parts, i, said)
            node.value[int(part)] = node = _own(node.value[int(part)])
            continue
        at = [n for n, (k, _) in enumerate(node.value) if k.value == part] if isinstance(node, yaml.MappingNode) else []
        if not at:
            return _absent(node, parts, i, said)  # nothing there to drop
        node.value[at[0]] = (node.value[at[0]][0], _own(node.value[at[0]][1]))
        node = node.value[at[0]][1]
    if not isinstance(node, yaml.MappingNode) or parts[-1] not in [k.value for k, _ in node.value]:
        return _absent(node, parts, len(parts) - 1, said)
    node.value = [(k, v) for k, v in node.value if k.value != parts[-1]]
    if _named(parts):  # a name gone from its mapping stays in `key_nodes`, at the --set: what is said of it names that
        mark = yaml.Mark(f"--set {dotted}={value_text}", 0, 0, 0, None, None)
        gone = yaml.ScalarNode("tag:yaml.org,2002:null", "null", mark, mark)
        node.dropped = {**getattr(node, "dropped", {}), parts[-1]: gone}


def _absent(node: yaml.Node, parts: list[str], i: int, said: str) -> None:
    """`--set passes.3.svd.ranks.modulaton=null`, whose path the tree lacks from `parts[i]` on (`node`
    holds parts[:i]): nothing to drop. Refused where the last key is a name-keyed mapping's (`_named`):
    a name absent is no default left to hold, but a misspelt one, which left the recipe as it was
    (plan and run then said nothing); an option absent already holds its default, as the --set asks."""
    if not _named(parts):
        return
    there, key = ".".join(parts[:i]), parts[-1]
    if i < len(parts) - 1:
        raise UserError(f"{said}: {there} has no {parts[i]}, so no key '{key}' to remove")
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{said}: {there} is not a mapping, so it has no key '{key}' to remove")
    keys = [k.value for k, _ in node.value]
    listed = f"its keys: {', '.join(keys)}{did_you_mean(key, keys)}" if keys else "it is empty"
    raise UserError(f"{said}: {there} has no key '{key}' to remove ({listed})")


def _named(parts: list[str]) -> bool:
    """Whether the last key of a pass option's path is a key of a mapping keyed by names (a `ranks`
    pattern, a remove_blocks `count` group), not an option (a dataclass's field, which has a default)."""
    if parts[0] != "passes" or len(parts) < 5 or parts[2] not in PASSES:
        return False
    parent = config_class(parts[2])
    for part in parts[3:-1]:
        parent = _inner(parent, part)
    arms = typing.get_args(parent) if typing.get_origin(parent) in (typing.Union, types.UnionType) else (parent,)
    return parent is not None and not any(dataclasses.is_dataclass(a) for a in arms)


def takes_null(dotted: str, top: type, keys: tuple[str, ...]) -> bool:
    """Whether `--set KEY=null` places null at `dotted`: True for a key that takes null as a value
    (trust_region: null, count: null, a pass's options or calibration: null, their defaults), a
    required key (model, teacher: its check names the --set), a list's item (passes.2, targets.0: a
    list's items are not dropped, the indices after them would move) and a key not known (the
    recipe's check names what is wrong); False for a key with a default that takes no null (ratio,
    seed, a ranks pattern's rank), which the --set then drops (`drop`) so its default holds.
    `top`: the recipe's dataclass; `keys`: its fields that are recipe keys."""
    parts = _split(dotted)
    if parts[0] == "passes":
        if len(parts) < 4 or parts[2] not in PASSES:
            return True  # passes, passes.N (an item of the list), passes.N.PASS (its options)
        if len(parts) == 5 and parts[3] in NAME_KEYED:
            return False  # a rank
        parent, rest = config_class(parts[2]), parts[3:]
    elif parts[0] in keys:
        parent, rest = top, parts
    else:
        return True
    for part in rest[:-1]:
        parent = _inner(parent, part)
    tp = _inner(parent, rest[-1])
    if tp is None or _required(parent, rest[-1]):
        return True
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(a is Any or a is type(None) or dataclasses.is_dataclass(a) for a in args)


def no_value(dotted: str, null_is_a_value: bool) -> str:
    """What `--set KEY=` (nothing after '=', as from an unset shell variable) is told: it was read
    as null, so a key that takes no null silently fell back to its default. `null_is_a_value`:
    `takes_null`'s answer (where it is False, `KEY=null` drops the key)."""
    drop_it = "" if null_is_a_value else f", or {dotted}=null to drop the key so its default holds"
    return f"no value after '='; write {dotted}=VALUE{drop_it}"


def _required(tp, name: str) -> bool:
    """Whether `name` is a field of dataclass `tp` without a default (Recipe's model, teacher)."""
    if not dataclasses.is_dataclass(tp):
        return False
    found = [f for f in dataclasses.fields(tp) if f.name == name]
    return bool(found) and found[0].default is dataclasses.MISSING and found[0].default_factory is dataclasses.MISSING


def _inner(tp, part: str):
    """The type of key `part` of a value of type `tp` (a dataclass's field, a mapping's values; of
    a union, of its arms that have it), None where none has."""
    if tp is None:
        return None
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(part)
    if tp is dict:
        return Any
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [t for t in (_inner(a, part) for a in typing.get_args(tp)) if t is not None]
        return typing.Union[tuple(found)] if found else None
    return None
