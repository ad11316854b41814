"""docs/RECIPES.md, the recipe key reference, lists every key the recipe parser accepts, no key it
refuses, and each key's default as the code has it.

The accepted keys come from the parser itself: a section's keys are the "(known: ...)" list that
`recipe_convert.build_dataclass` gives when it refuses an unknown key there (calibration, export,
each pass of `passes.PASSES`); the top level's are the candidates (the `Recipe` dataclass's fields and the names
`parse_recipe` holds as constants, its `known` tuple among them) that `parse_recipe` does not refuse as
an unknown key. The document's keys are the first cells of its tables, under a `##` / `###` heading
naming the section (`Top level`, `calibration`, `export`, `importance`, ...).
"""

import dataclasses
import re
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from compress.errors import UserError
from compress.passes import PASSES, pass_class
from compress.recipe import CalibrationConfig, ExportConfig, Recipe, RecipeLoader, parse_recipe

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RECIPES.md"
MINIMAL = {"model": "pixart", "teacher": "toy:pixart", "passes": ["importance"]}
PROBE = "zz_not_a_recipe_key"
REQUIRED = object()  # a field without a default


def _parse(data: dict):
    return parse_recipe(yaml.safe_dump(data, sort_keys=False), "probe.yaml")


def _unknown(data: dict, key: str) -> bool:
    """Whether parse_recipe refuses `key` of `data` as an unknown key (any other error, such as a
    value of the wrong type for a probe's null, means the key itself was accepted)."""
    try:
        _parse(data)
    except UserError as e:
        return f"unknown key '{key}'" in str(e)
    return False


def _known(data: dict) -> set[str]:
    """The keys the parser lists as known when it refuses the PROBE key somewhere in `data`."""
    with pytest.raises(UserError) as e:
        _parse(data)
    found = re.search(rf"unknown key '{PROBE}' in .*\(known: ([^)]*)\)", str(e.value))
    assert found, f"the parser no longer lists the known keys when it refuses one: {e.value}"
    return set(found.group(1).split(", "))


def _top_level() -> set[str]:
    candidates = {f.name for f in dataclasses.fields(Recipe)}
    for const in parse_recipe.__code__.co_consts:  # the `known` tuple the parser checks keys against
        if isinstance(const, tuple):
            candidates |= {c for c in const if isinstance(c, str) and c.isidentifier()}
    accepted = {k for k in candidates if not _unknown({**MINIMAL, k: MINIMAL.get(k)}, k)}
    assert _unknown({**MINIMAL, PROBE: None}, PROBE), "the top level no longer refuses an unknown key"
    return accepted


def accepted_keys() -> dict[str, set[str]]:
    """Section ('top', 'calibration', 'export', a pass name) -> the keys the code accepts there."""
    keys = {"top": _top_level(),
            "calibration": _known({**MINIMAL, "calibration": {PROBE: 1}}),
            "export": _known({**MINIMAL, "export": {PROBE: 1}})}
    for name in PASSES:
        keys[name] = _known({**MINIMAL, "passes": [{name: {PROBE: 1}}]})
    return keys


def config_classes() -> dict[str, type]:
    return {"top": Recipe, "calibration": CalibrationConfig, "export": ExportConfig,
            **{name: pass_class(name).config_cls for name in PASSES}}


def code_default(cls: type, key: str):
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def doc_rows() -> list[tuple[str, str, list[str], int]]:
    """(section, key, cells, line) of every table row of the document."""
    rows, section = [], None
    for n, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        heading = re.match(r"#{2,3} (.+)", line)
        if heading:
            title = heading.group(1).strip().strip("`")
            section = "top" if title == "Top level" else title
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
        if len(cells) >= 6 and (key := re.fullmatch(r"`(\w+)`", cells[1])):
            rows.append((section, key.group(1), cells[1:-1], n))
    return rows


def documented_keys() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section, key, _, _ in doc_rows():
        out.setdefault(section, []).append(key)
    return out


def _yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # as a recipe reads it: YAML 1.2, 1e-4 is a number


def _same(doc_value, code_value) -> bool:
    if isinstance(doc_value, bool) != isinstance(code_value, bool):
        return False
    return doc_value == code_value


def effective_defaults() -> dict[tuple[str, str], list]:
    """What a `null` default is read as, for the keys whose row says `null → x[, y ...]`: each value
    in the order the row gives them."""
    from compress.passes.remove_blocks import RemoveBlocksConfig
    from compress.passes.remove_blocks_learned import value

    learned = RemoveBlocksConfig(count=1, criterion="learned")
    low_rank = RemoveBlocksConfig(count=1, criterion="learned", learn_rank=8)
    logits_only = RemoveBlocksConfig(count=1, criterion="learned", learn_lr=0.0)
    return {
        ("calibration", "heldout"): [CalibrationConfig().heldout_inputs],
        ("remove_blocks", "learn_steps"): [value(learned, "learn_steps")],
        ("remove_blocks", "learn_lr"): [value(learned, "learn_lr"), value(low_rank, "learn_lr")],
        ("remove_blocks", "logit_lr"): [value(learned, "logit_lr")],
        ("remove_blocks", "estimator"): [value(learned, "estimator"), value(logits_only, "estimator")],
    }


def test_every_key_the_code_accepts_is_documented():
    accepted, documented = accepted_keys(), documented_keys()
    missing = {s: sorted(keys - set(documented.get(s, []))) for s, keys in accepted.items()}
    assert {s: k for s, k in missing.items() if k} == {}, "recipe keys missing from docs/RECIPES.md"


def test_every_documented_key_is_accepted_once():
    accepted, documented = accepted_keys(), documented_keys()
    assert set(documented) == set(accepted), "docs/RECIPES.md's sections are not the recipe's"
    stale = {s: sorted(set(keys) - accepted[s]) for s, keys in documented.items()}
    assert {s: k for s, k in stale.items() if k} == {}, "docs/RECIPES.md names keys the code refuses"
    twice = {s: sorted({k for k in keys if keys.count(k) > 1}) for s, keys in documented.items()}
    assert {s: k for s, k in twice.items() if k} == {}, "keys documented twice in one section"
    # `section.key` in the text (svd.ratios, calibration.heldout) names an accepted key too (a file
    # name such as `importance.json` is not a key)
    text = DOC.read_text(encoding="utf-8")
    sections = "|".join(s for s in accepted if s != "top")
    dotted = set(re.findall(rf"`({sections})\.(?!(?:json|png|csv|yaml)`)(\w+)", text))
    assert dotted, "no `section.key` reference found: the pattern no longer reads the document"
    assert sorted((s, k) for s, k in dotted if k not in accepted[s]) == [], "`section.key` naming a refused key"


def test_documented_defaults_are_the_code_defaults():
    classes, effective = config_classes(), effective_defaults()
    wrong, arrows = [], set()
    for section, key, cells, line in doc_rows():
        code = code_default(classes[section], key)
        cell = cells[2]
        if cell == "required":
            ok = code is REQUIRED
        elif cell == "section":
            ok = dataclasses.is_dataclass(code)
        else:
            stated, _, after = cell.partition("→")
            values = re.findall(r"`([^`]*)`", stated)
            ok = len(values) == 1 and _same(_yaml(values[0]), code)
            if after:
                arrows.add((section, key))
                read_as = [_yaml(v) for v in re.findall(r"`([^`]*)`", after)]
                expected = effective.get((section, key))
                ok = ok and code is None and expected is not None and len(read_as) >= len(expected) \
                    and all(_same(a, b) for a, b in zip(read_as, expected))
        if not ok:
            wrong.append(f"line {line}: {section}.{key}: the document says {cell!r}, the code has {code!r}")
    assert wrong == [], "\n".join(wrong)
    assert sorted(set(effective) - arrows) == [], "rows that should say what null is read as (null → x)"


def test_documented_choices_are_the_codes():
    """Every value a Literal-typed key (or one checked against a tuple in the code, its config's
    CHOICES) allows is named in its row's type cell, and no other."""
    classes, choices = config_classes(), {}
    for section, cls in classes.items():
        choices.update({(section, key): allowed for key, allowed in getattr(cls, "CHOICES", {}).items()})
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is Literal:
                choices[(section, f.name)] = typing.get_args(hints[f.name])
    rows = {(s, k): cells[1] for s, k, cells, _ in doc_rows()}
    wrong = {}
    for (section, key), allowed in choices.items():
        named = set(re.findall(r"`([^`]*)`", rows[(section, key)]))
        if set(map(str, allowed)) != named:
            wrong[f"{section}.{key}"] = (sorted(named), sorted(map(str, allowed)))
    assert wrong == {}, "type cells whose choices (named, code's) differ from the code's"



def test_the_documented_booleans_are_the_ones_the_loader_takes():
    """The document said "booleans are `true` / `false` only", yet `cfg_branches: True` loaded (YAML 1.2's
    core schema takes True, TRUE too). Its spellings, taken and refused, are now the loader's."""
    from compress.recipe_yaml import BOOL, PATTERN

    text = " ".join(DOC.read_text(encoding="utf-8").split())
    taken, refused = re.search(r"The booleans are (.*?); (.*?) are not,", text).groups()
    taken, refused = re.findall(r"`([^`]*)`", taken), re.findall(r"`([^`]*)`", refused)
    assert set(taken) == set(PATTERN[BOOL].split("|"))
    for word in taken:
        recipe = parse_recipe(f"model: pixart\nteacher: toy:pixart\ncalibration: {{cfg_branches: {word}}}\n"
                              "passes: [importance]\n", "r.yaml")
        assert recipe.calibration.cfg_branches is (word.lower() == "true")
    for word in refused:
        with pytest.raises(UserError, match="cfg_branches must be true or false"):
            parse_recipe(f"model: pixart\nteacher: toy:pixart\ncalibration: {{cfg_branches: {word}}}\n"
                         "passes: [importance]\n", "r.yaml")
