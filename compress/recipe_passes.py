"""A recipe's passes list, item by item: `PassSpec` (a pass's name, its validated config, and where it
and its options are, for errors) and a pass item read as a name or a one-key mapping (`_pass_name`),
refused in words where it is null, holds several keys (an option indented as deep as the pass's name,
two passes in one item) or names no known pass (a ':' without its space, a slip of a name). No pass
module is imported: a pass's options are its config class's (passes.CONFIGS). The recipe's other keys
are recipe's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from compress.errors import UserError, did_you_mean
from compress.passes import PASSES, config_class
from compress.recipe_convert import MERGE_HINT, _Loc, concerned, with_sets
from compress.recipe_set import nearest
from compress.recipe_yaml import is_null, rest_of_line


@dataclass
class PassSpec:
    name: str
    config: Any
    line: int
    loc: _Loc = field(compare=False, repr=False)  # where the pass is
    keys: dict = field(default_factory=dict, compare=False, repr=False)  # where its options are

    # where the recipe's own keys are (Recipe.keys; parse_recipe sets it): `where`'s `because`
    recipe_keys: dict = field(default_factory=dict, compare=False, repr=False)

    def where(self, error: Exception, *because: str) -> str:
        """Where an error about this pass points: the line (or --set) of the key a BadValue names
        (svd targets.1, ranks.modulation); else the pass's line. At a line of the file, the --sets
        that changed the keys the error concerns are named too (`concerned`), and those of the recipe
        keys `because` (stream) the error is about: the file's line alone would not say what made it
        wrong."""
        found = nearest(self.keys, getattr(error, "key", None))
        others = [self.recipe_keys[k] for k in because if k in self.recipe_keys]
        return with_sets(found if found is not None else self.loc, [*concerned(self.keys, error), *others])


def _pass_name(node: yaml.Node, loc: _Loc, index: int) -> tuple[str, yaml.Node | None]:
    """(name, options node) of the pass item `node`, a known pass's (no pass module imported)."""
    if is_null(node):  # "- " or a --set passes.N=null
        raise loc.err(f"passes[{index}] is null: a pass is a name or a one-key mapping like '- svd: {{ratio: 0.5}}' "
                      "(to leave a pass out, delete its item from the recipe)")
    if isinstance(node, yaml.ScalarNode):  # "- svd" with all defaults
        name, opts = node.value, None
    elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        name, opts = node.value[0][0].value, node.value[0][1]
    elif isinstance(node, yaml.MappingNode) and (stray := _stray_key(node, loc.path, index)):
        raise stray
    else:
        raise loc.err(f"passes[{index}] must be a pass name or a one-key mapping like "
                      "'- svd: {ratio: 0.5}'")
    if name not in PASSES:
        hint = MERGE_HINT if name == "<<" else _unspaced_pass(name, node) or did_you_mean(name, PASSES)
        raise loc.err(f"unknown pass '{name}'{hint} (passes: {', '.join(PASSES)})")
    return name, opts


def _stray_key(node: yaml.MappingNode, path: str, index: int) -> UserError | None:
    """The error of a pass item of several keys where one is a pass's name: an option of it indented
    as deep as the name (`- svd:` above `    ratio: 0.5`: 'ratio' (line 10) is an svd option; indent it
    under 'svd:'), or two passes in one item ('- {svd: {}, distill: {}}': give each its own '- ' item).
    At the line of the key that does not belong; None where no key is a pass's (the item's own words)."""
    keys = [key for key, _ in node.value]  # plain scalars (_check_keys)
    names = [key.value for key in keys]
    listed = f"{ {2: 'two', 3: 'three'}.get(len(names), len(names))} keys, {', '.join(names[:-1])} and {names[-1]}"
    passes = [key for key in keys if key.value in PASSES]
    if not passes:
        return None
    if len(passes) > 1:
        return _Loc(path, passes[1]).err(f"passes[{index}] has {listed}: give each pass its own '- ' item")
    name, stray = passes[0].value, next(key for key in keys if key is not passes[0])
    at = _Loc(path, stray)
    line = f" (line {at.line})" if at.line and not at.override else ""
    options = [f.name for f in dataclasses.fields(config_class(name))]
    article = "an" if name[0] in "aeious" else "a"  # an svd (ess-vee-dee), an importance; a distill
    if stray.value in options:
        said = f"'{stray.value}'{line} is {article} {name} option; indent it under '{name}:'"
    else:
        said = (f"'{stray.value}'{line} is neither a pass nor {article} {name} option; a pass's options go "
                f"indented under its name{did_you_mean(stray.value, options)}")
    return at.err(f"passes[{index}] has {listed}: {said}")


def _unspaced_pass(name: str, node: yaml.Node) -> str:
    """' (write 'svd: {ratio: 0.5}', a space after ':')' for the pass `name` a ':' without its space joined
    to its options (`- svd:{ratio: 0.5}` is YAML's key 'svd:{ratio'), from the item's line where the
    file holds it; else ''."""
    before, colon, after = name.partition(":")
    if not colon or before not in PASSES:
        return ""
    key = node.value[0][0] if isinstance(node, yaml.MappingNode) else node
    written = rest_of_line(key.start_mark) or name
    return f" (write '{before}: {written.partition(':')[2].strip()}', a space after ':')"
