"""Where a `--set a.b.c=value` goes in a recipe's YAML node tree (recipe.set_override composes and
checks the value first): list items by index (passes.1.svd.ratio=0.4); mappings and keys the file
lacks are added, marked with the `--set` so errors about them name it. Under a mapping keyed by
layer names or patterns (`ranks`), the rest of the path is one name (ranks.adaln_single.linear=16).
Also where each key of a tree is (`key_nodes`), for errors that name a key. A `--set KEY=null` that
takes the key out, so its default holds, is recipe_set_null's."""

from __future__ import annotations

import copy
import dataclasses

import yaml

from compress.errors import UserError
from compress.passes import PASSES, config_class
from compress.recipe_yaml import RecipeLoader, is_null

NAME_KEYED = ("ranks",)  # pass options whose keys are module names or patterns, which hold dots


def place(data_node: yaml.MappingNode, dotted: str, value_text: str, value_node: yaml.Node,
          mark: yaml.Mark, path: str = "<recipe>") -> None:
    """Put `value_node` at the dotted path of the tree under `data_node`; errors name the recipe
    `path` and the --set, as 'r.yaml (--set passes.5.svd.ratio=0.4): ...'."""
    said = f"{path} (--set {dotted}={value_text})"
    node, parts = data_node, _split(dotted)
    _refuse_leading_zero(parts, said)
    _refuse_pass_name(data_node, parts, value_text, said)
    _check_pass_index(data_node, parts, said)
    _refuse_null_options(data_node, parts, value_node, said)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, yaml.SequenceNode):
            _check_index(node, parts, i, said)
            if last:
                node.value[int(part)] = value_node
                return
            node.value[int(part)] = node = _own(node.value[int(part)])
            continue
        if not isinstance(node, yaml.MappingNode):
            raise UserError(f"{said}: '{'.'.join(parts[:i])}' is not a mapping{_made_by(node)}")
        match = [(k, v) for k, v in node.value if k.value == part]
        if last:
            _set_key(node, yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark), value_node,
                     first=parts[0] == "passes" and i == 4 and parts[3] in NAME_KEYED)
            return
        if not match or is_null(match[0][1]):  # a key null (its defaults, or set so by an earlier --set):
            _refuse_new_list(parts, i, said, match[0][1] if match else None)  # a mapping of this key alone
            child = yaml.MappingNode("tag:yaml.org,2002:map", [], mark, mark)
            key = match[0][0] if match else yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark)
            if match:
                node.value[node.value.index(match[0])] = (key, child)
            else:
                node.value.append((key, child))
            node = child
        else:
            child = _own(match[0][1])
            node.value[node.value.index(match[0])] = (match[0][0], child)
            node = child


def _made_by(node: yaml.Node) -> str:
    """' (--set calibration=5 made it 5)' where an earlier --set wrote the value that is no mapping
    (`--set calibration=5 --set calibration.seed=1` named the later --set alone); '' for the file's."""
    by = node.start_mark.name
    if not by.startswith("--set"):
        return ""
    return f" ({by} made it {node.value})" if isinstance(node, yaml.ScalarNode) else f" ({by} made it so)"


def _refuse_null_options(data_node: yaml.MappingNode, parts: list[str], value_node: yaml.Node, said: str) -> None:
    """`--set passes.2.svd=null` set every option of the pass back to its default, without a word
    (the file's targets, ratio, ... gone): refused, as a list's item set to null is, saying how to drop
    one option, all of them (`{}`, written out), or the pass. A pass that has no options is left to it."""
    if len(parts) != 3 or parts[0] != "passes" or not is_null(value_node):
        return
    passes = {k.value: v for k, v in data_node.value}.get("passes")
    item = passes.value[int(parts[1])] if isinstance(passes, yaml.SequenceNode) else None
    options = item.value[0][1] if isinstance(item, yaml.MappingNode) and item.value else None
    keys = [k.value for k, _ in options.value] if isinstance(options, yaml.MappingNode) else []
    if not keys:
        return  # none to lose: the pass had its defaults already
    where = f"passes.{parts[1]}.{parts[2]}"
    raise UserError(f"{said}: a pass's options are not set to null, which would put all of them "
                    f"({', '.join(keys)}) back to "
                    f"their defaults: drop one with --set {where}.KEY=null, all with --set '{where}={{}}'; to "
                    "leave the pass out, delete its item from the recipe")


def _check_index(node: yaml.SequenceNode, parts: list[str], i: int, said: str) -> None:
    """parts[i] indexes the list `node` (parts[:i]): refused unless it is one of its indices."""
    part = parts[i]
    if not part.isdigit() or int(part) >= len(node.value):
        raise UserError(f"{said}: '{part}' is not an index of that list "
                        f"({_items('.'.join(parts[:i]), len(node.value))})")


def _refuse_leading_zero(parts: list[str], said: str) -> None:
    """`--set passes.01.svd.ratio=...` was read as passes.1: refused, so that an item has one spelling
    (two --sets of one path are refused by theirs, `refuse_repeated`) and a slip for passes.0 or
    passes.10 is not taken for passes.1. A `ranks` pattern (one name) is not an index."""
    named = parts[0] == "passes" and len(parts) == 5 and parts[3] in NAME_KEYED
    for part in parts[:4] if named else parts:
        if part.isdigit() and len(part) > 1 and part.startswith("0"):
            raise UserError(f"{said}: '{part}' is not an index (an index is written without a leading zero: "
                            f"{int(part)})")


def _refuse_new_list(parts: list[str], i: int, said: str, null: yaml.Node | None = None) -> None:
    """`--set calibration.prompts.0=...` where the recipe has no calibration.prompts (or has it null,
    `null`: that node): an index into a list the recipe lacks (it would be made a mapping keyed '0'):
    name the list to give whole."""
    if parts[i + 1].isdigit():
        there = ".".join(parts[:i + 1])
        lacks = f"the recipe has no {there} to take item {parts[i + 1]} of"
        if null is not None:
            by = null.start_mark.name if null.start_mark.name.startswith("--set") else ""
            lacks = f"{there} is null{f' ({by})' if by else ''}, so it has no item {parts[i + 1]}"
        raise UserError(f"{said}: {lacks}; give the whole list, e.g. --set '{there}=[...]'")


def refuse_repeated(overrides, path: str) -> None:
    """Two --sets where the later one replaces what the earlier gave: the same path (`--set
    passes.2.svd.ratio=0.3 --set passes.2.svd.ratio=0.4` kept the last), one above it (`--set
    calibration.seed=1 --set calibration=null` dropped the first), or one below it into a value the
    earlier one wrote (`--set 'calibration={seed: 1}' --set calibration.seed=2`): refused, naming
    both, rather than one of them silently lost. Two --sets that add to each other (`--set
    'calibration={seed: 1}' --set calibration.timesteps=4`) are not, nor one key given the same value twice
    (`--set calibration.seed=1 --set calibration.seed=1`, as a script building its --sets may: R1 stop 52;
    `_same_value`). Items without '=' are left to the recipe's own check."""
    seen = []  # (path's keys, the --set's text)
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            continue
        parts = _split(key.strip())
        for before, text in seen:
            if parts[:len(before)] == before and not _holds(text.partition("=")[2], parts[len(before):]):
                continue  # below an earlier --set, into a key its value does not hold: they add up
            if before[:len(parts)] != parts and parts[:len(before)] != before:
                continue  # apart
            if parts == before and _same_value(text.partition("=")[2], value):
                continue  # the same value again: nothing is lost
            what = "this key too" if parts == before else ("a key below this one" if len(parts) < len(before)
                                                           else "this key in its value")
            raise UserError(f"{path} (--set {item}): --set {text} set {what}, and only the last one would hold: "
                            "give each key once")
        seen.append((parts, item))


def _same_value(text: str, other: str) -> bool:
    """Whether two --sets' YAML values read as the same value of the same type (`0.4` and ` 0.40`, `true` and
    `True` are; `1` and `1.0`, `1` and `'1'` are not); the same text where either is not YAML."""
    try:
        return repr(yaml.load(text, Loader=RecipeLoader)) == repr(yaml.load(other, Loader=RecipeLoader))
    except yaml.YAMLError:
        return text.strip() == other.strip()


def _holds(value_text: str, parts: list[str]) -> bool:
    """Whether the YAML `value_text` (an earlier --set's value) holds the key path `parts` ([]: itself)."""
    try:
        node = yaml.compose(value_text, Loader=RecipeLoader)
    except yaml.YAMLError:
        return False  # not YAML: its own check (recipe.set_override) refuses it, saying so
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            found = [node.value[int(part)]]
        else:
            found = []
        if not found:
            return False
        node = found[0]
    return True


def _own(node: yaml.Node) -> yaml.Node:
    """A copy of a list or mapping on a --set's path, so that the --set changes this place alone: a
    YAML alias (`- distill: *d`) shares its node with its anchor, and writing into it in place would
    change every pass that shares it. One level deep (the next step of the path copies the next),
    marks kept: errors still name the file's lines."""
    if not isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        return node
    own = copy.copy(node)
    own.value = list(node.value)
    return own


def _items(name: str, n: int) -> str:
    """'passes has 5 items: 0–4': the indices a --set may give a list."""
    if not n:
        return f"{name} is empty"
    return f"{name} has {n} item{'s' if n > 1 else ''}: " + ("0" if n == 1 else f"0–{n - 1}")


def _set_key(node: yaml.MappingNode, key: yaml.ScalarNode, value: yaml.Node, first: bool) -> None:
    """Set a key of a mapping where it is; a new one goes last, or `first` (a name-keyed map: the
    first pattern matching a layer gives its rank, so a --set one is put before the file's)."""
    at = [n for n, (k, _) in enumerate(node.value) if k.value == key.value]
    if at:
        key.replaced = True  # a key the recipe has, given another value (not one the --set added)
        node.value[at[0]] = (key, value)
    else:
        node.value.insert(0 if first else len(node.value), (key, value))


def _split(dotted: str) -> list[str]:
    """The keys of a dotted path; after passes.N.PASS.ranks the rest is one name."""
    parts = dotted.split(".")
    if len(parts) > 5 and parts[0] == "passes" and parts[3] in NAME_KEYED:
        return parts[:4] + [".".join(parts[4:])]
    return parts


def _pass_name(item: yaml.Node) -> str | None:
    """The name of a `passes` item (`- svd` or `- svd: {...}`), or None if it is neither."""
    if isinstance(item, yaml.ScalarNode):
        return item.value
    if isinstance(item, yaml.MappingNode) and len(item.value) == 1:
        return item.value[0][0].value
    return None


def _check_pass_index(data_node: yaml.MappingNode, parts: list[str], said: str) -> None:
    """`--set passes.2.distill.steps=3` where passes.2 is an svd pass: name the pass that is there
    and the indices of the passes with that name. A bare `- svd` item is made a mapping to set into."""
    passes = {k.value: v for k, v in data_node.value}.get("passes")
    if (len(parts) < 3 or parts[0] != "passes" or not isinstance(passes, yaml.SequenceNode)
            or not parts[1].isdigit() or int(parts[1]) >= len(passes.value)):
        return
    index, item = int(parts[1]), passes.value[int(parts[1])]
    name = _pass_name(item)
    if name == parts[2] and isinstance(item, yaml.ScalarNode):  # `- importance`: give it options
        options = yaml.MappingNode("tag:yaml.org,2002:map", [], item.start_mark, item.end_mark)
        passes.value[index] = yaml.MappingNode("tag:yaml.org,2002:map", [(item, options)],
                                               item.start_mark, item.end_mark)
    if name is None or name not in PASSES or name == parts[2]:
        return
    a = "an" if name[0] in "aeiou" or name == "svd" else "a"
    if parts[2] not in PASSES:
        raise UserError(f"{said}: passes.{index} is {a} {name} pass; "
                        + _option_hint(passes, index, name, parts[2:]))
    same = [f"passes.{i}" for i, it in enumerate(passes.value) if _pass_name(it) == parts[2]]
    others = f"{parts[2]} passes: {', '.join(same)}" if same else f"the recipe has no {parts[2]} pass"
    raise UserError(f"{said}: passes.{index} is {a} {name} pass ({others})")


def _option_hint(passes: yaml.SequenceNode, index: int, name: str, rest: list[str]) -> str:
    """How to spell `--set passes.N.OPTION...`, which lacks the pass name: with it, where this pass
    has that option; else the passes that have it (`--set passes.1.ratio` on a remove_blocks pass is
    meant for an svd pass: its remove_blocks.ratio would be an unknown key too)."""
    if _has_option(name, rest[0]):
        return f"its options are set as passes.{index}.{name}.{'.'.join(rest)}"
    have = [f"passes.{i}.{_pass_name(it)}.{'.'.join(rest)}" for i, it in enumerate(passes.value)
            if _pass_name(it) in PASSES and _has_option(_pass_name(it), rest[0])]
    if not have:
        return f"no pass of the recipe has an option '{rest[0]}'"
    return f"it has no option '{rest[0]}' (set {' or '.join(have)})"


def _has_option(name: str, key: str) -> bool:
    """Whether pass `name`'s options (its config's fields) include `key`."""
    return key in {f.name for f in dataclasses.fields(config_class(name))}


def _refuse_pass_name(data_node: yaml.MappingNode, parts: list[str], value_text: str, said: str) -> None:
    """`--set svd.ratio=0.4` where the recipe has no top-level `svd` but svd passes: they are set by
    their index in `passes`, which the error spells out."""
    top = {k.value: v for k, v in data_node.value}
    passes = top.get("passes")
    if parts[0] in top or not isinstance(passes, yaml.SequenceNode):
        return
    where = [f"passes.{i}.{'.'.join(parts)}" for i, item in enumerate(passes.value)
             if isinstance(item, yaml.MappingNode) and any(k.value == parts[0] for k, _ in item.value)]
    if where:
        raise UserError(f"{said}: a pass's options are set by its index in the passes list: "
                        f"--set {where[0]}={value_text}" + (f" (or {', '.join(where[1:])})" if where[1:] else ""))


def key_nodes(node: yaml.Node | None, prefix: str = "", seen: set[int] | None = None) -> dict[str, yaml.Node]:
    """The node that says where each key under `node` is, by dotted path (`ranks.modulation`,
    `targets.1`): a mapping entry's key, a list's item (marked with its --set if one gave it), and
    a name a `--set ...=null` took out of its mapping (recipe_set_null.drop: count.single), at that --set."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias (even a recursive one) is walked once
        return {}
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        entries = [(k.value, k, v) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        entries = [(str(i), v, v) for i, v in enumerate(node.value)]
    else:
        return {}
    out = {f"{prefix}{name}": at for name, at in getattr(node, "dropped", {}).items()}  # a key given again stays
    for name, at, child in entries:
        out[f"{prefix}{name}"] = at
        out.update(key_nodes(child, f"{prefix}{name}.", seen))
    return out


def nearest(where: dict, key: str | None):
    """The entry of `where` for a dotted `key`, or for the nearest key above it (ranks.a.b -> ranks)."""
    while key and key not in where:
        key = key.rpartition(".")[0]
    return where.get(key) if key else None


def remark(node: yaml.Node, mark: yaml.Mark) -> None:
    """Every node of the tree under `node` positioned at `mark` (the --set's)."""
    node.start_mark = node.end_mark = mark
    children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
    for child in children:
        for n in child if isinstance(child, tuple) else (child,):
            remark(n, mark)
