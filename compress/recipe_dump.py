"""The resolved recipe written back as YAML, an output's recipe.yaml (`dump_recipe`): the keys the
defaults filled in marked '# default' (`filled_keys`), the --set it holds named in a header, and a pipeline
source's prompts written inline (`inline_prompts`), so that the dump read back is the recipe as run."""

from __future__ import annotations

import dataclasses

import yaml

from compress.recipe import Recipe, to_plain
from compress.recipe_convert import field_default
from compress.recipe_yaml import MARKS_HEADER, RecipeDumper, with_marks


def dump_recipe(recipe: Recipe, prompts: list[str] | None = None) -> str:
    """The resolved recipe as YAML. `prompts`: the calibration prompts a pipeline source read (from
    `prompts` and `prompt_file`, cut to num_prompts where the recipe sets it), written inline so an
    output folder's recipe.yaml does not depend on where that file was (`inline_prompts`)."""
    plain, filled = to_plain(recipe), filled_keys(recipe)
    if prompts is not None:
        filled = inline_prompts(plain["calibration"], filled, prompts)
    text = with_marks(yaml.dump(plain, Dumper=RecipeDumper, sort_keys=False), filled)
    return f"{MARKS_HEADER}\n{_sets_header(recipe)}{text}"


def inline_prompts(calibration: dict, filled: set[str], prompts: list[str]) -> set[str]:
    """A dump's plain `calibration` given the `prompts` its pipeline source read, in place: `prompts`
    are those, `prompt_file` null (marked '# default': the file's lines are among the prompts) and
    `num_prompts` as the recipe had it (marked where the recipe left it out), so that the dump run
    again reads the same prompts (all of them: they are num_prompts' first where it is set) and a
    prompt added to it is used. The `filled` keys (marked) that follow."""
    calibration["prompts"], calibration["prompt_file"] = list(prompts), None
    return (filled - {"calibration.prompts"}) | {"calibration.prompt_file"}


def filled_keys(recipe: Recipe) -> set[str]:
    """The dotted keys of `recipe` the defaults filled in: at their default and not written by the
    recipe (nor marked so in the saved recipe it was read from: `_given`); in a config made otherwise,
    and in a pass whose checks judge it by its values (an older saved recipe's svd pass, without marks:
    svd_values.judged_by_value), every key at its default, so that the dump read back is judged alike."""
    from compress.passes.svd_values import judged_by_value

    written = ("version", "teacher_config", "stream", "compute_dtype", "device")  # the top level's with a default
    top = {f.name: f for f in dataclasses.fields(Recipe) if f.name in written}
    filled = _filled(recipe, top, "", recipe.__dict__.get("_given", ()))
    for prefix, config in (("calibration.", recipe.calibration), ("export.", recipe.export),
                           *((f"passes.{i}.{p.name}.", p.config) for i, p in enumerate(recipe.passes))):
        given = () if judged_by_value(config) else config.__dict__["_given"]
        filled |= _filled(config, {f.name: f for f in dataclasses.fields(config)}, prefix, given)
    return filled


def _filled(obj, fields: dict, prefix: str, given) -> set[str]:
    """`filled_keys` among `fields` of `obj` (a Recipe or a config dataclass): those at their default
    and not among the keys `given`."""
    return {prefix + name for name, f in fields.items()
            if name not in given and getattr(obj, name) == field_default(f)}


def set_overrides(recipe: Recipe) -> list[str]:
    """The `--set a.b=v` given on the command line, in the order their keys come in the recipe."""
    locs = list(recipe.keys.values()) + [at for spec in recipe.passes for at in spec.keys.values()]
    return list(dict.fromkeys(at.override for at in locs if at.override))


def _sets_header(recipe: Recipe) -> str:
    """YAML comments naming the --set a dumped recipe already holds: a ranks pattern one added sits
    first, so a rerun of the dump that warns of a shadowed pattern has the reason in front of it."""
    sets = set_overrides(recipe)
    if not sets:
        return ""
    lines = ["# the recipe as run; these --set are applied below:"] + [f"#   {s}" for s in sets]
    if any(".ranks." in s.split("=", 1)[0] for s in sets):
        lines.append("# (a ranks pattern a --set added comes first, so it wins over the file's patterns)")
    return "\n".join(lines) + "\n"
