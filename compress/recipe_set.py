"""Where a `--set a.b.c=value` goes in a recipe's YAML node tree (recipe.set_override composes and
checks the value first): list items by index (passes.1.svd.ratio=0.4); mappings and keys the file
lacks are added, marked with the `--set` so errors about them name it."""

from __future__ import annotations

import yaml

from compress.errors import UserError


def place(data_node: yaml.MappingNode, dotted: str, value_text: str, value_node: yaml.Node,
          mark: yaml.Mark) -> None:
    """Put `value_node` at the dotted path of the tree under `data_node`."""
    node, parts = data_node, dotted.split(".")
    _refuse_pass_name(data_node, parts, dotted, value_text)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, yaml.SequenceNode):
            if not part.isdigit() or int(part) >= len(node.value):
                raise UserError(f"--set {dotted}: '{part}' is not an index of that list")
            if last:
                node.value[int(part)] = value_node
                return
            node = node.value[int(part)]
            continue
        if not isinstance(node, yaml.MappingNode):
            raise UserError(f"--set {dotted}: '{'.'.join(parts[:i])}' is not a mapping")
        match = [(k, v) for k, v in node.value if k.value == part]
        if last:
            node.value = [(k, v) for k, v in node.value if k.value != part]
            node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark), value_node))
            return
        if not match:
            child = yaml.MappingNode("tag:yaml.org,2002:map", [], mark, mark)
            node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark), child))
            node = child
        else:
            node = match[0][1]


def _refuse_pass_name(data_node: yaml.MappingNode, parts: list[str], dotted: str, value_text: str) -> None:
    """`--set svd.ratio=0.4` where the recipe has no top-level `svd` but svd passes: they are set by
    their index in `passes`, which the error spells out."""
    top = {k.value: v for k, v in data_node.value}
    passes = top.get("passes")
    if parts[0] in top or not isinstance(passes, yaml.SequenceNode):
        return
    where = [f"passes.{i}.{'.'.join(parts)}" for i, item in enumerate(passes.value)
             if isinstance(item, yaml.MappingNode) and any(k.value == parts[0] for k, _ in item.value)]
    if where:
        raise UserError(f"--set {dotted}: a pass's options are set by its index in the passes list: "
                        f"--set {where[0]}={value_text}" + (f" (or {', '.join(where[1:])})" if where[1:] else ""))


def remark(node: yaml.Node, mark: yaml.Mark) -> None:
    """Every node of the tree under `node` positioned at `mark` (the --set's)."""
    node.start_mark = node.end_mark = mark
    children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
    for child in children:
        for n in child if isinstance(child, tuple) else (child,):
            remark(n, mark)
