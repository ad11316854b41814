"""YAML -> typed, validated Recipe. Errors name file:line, the bad key, and a suggestion.

Pass options are validated against each pass's config dataclass: its fields are the recipe keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from compress.errors import BadValue, UserError, did_you_mean, read_utf8
from compress.passes import PASSES, pass_class
from compress.recipe_set import key_nodes, nearest, place, remark
from compress.recipe_yaml import MAP, NULL, RecipeDumper, RecipeLoader, collection_tag, type_hint

FAMILIES = ("pixart", "flux")
DTYPES = ("float32", "float16", "bfloat16")


HELDOUT = 64  # calibration.heldout's default for the toy and synthetic sources


SEED_MAX = 2**63 - 1

# an unknown key '<<': YAML 1.1's merge key, which YAML 1.2 (how recipes are read) does not have
MERGE_HINT = ("; recipes are read as YAML 1.2, which has no merge key: write the keys out "
              "(or use --set)")


@dataclass
class CalibrationConfig:
    """Where calibration inputs come from: prompts x timesteps x classifier-free-guidance branches."""

    source: Literal["auto", "toy", "pipeline", "synthetic"] = "auto"  # auto: toy for toy: teachers
    num_prompts: int = 10  # toy, synthetic: prompts drawn (the ten digit classes); pipeline: the first
    # num_prompts of `prompts` and prompt_file's lines where the recipe sets it, else all of them
    prompts: list[str] = field(default_factory=list)  # pipeline source: the prompts
    prompt_file: str | None = None  # pipeline source: one prompt per line (relative to the recipe)
    pipeline: str | None = None  # pipeline source: base pipeline (default: the teacher's)
    sample_steps: int = 20  # pipeline source: sampler steps; `timesteps` of them are kept
    prompts_per_call: int = 1  # pipeline source: prompts sampled together (one batch; streamed
    # weights are read once per step of each call)
    guidance_scale: float = 4.5  # pipeline source: CFG scale (both branches are captured)
    height: int | None = None  # pipeline source: image size sampled (null: the pipeline's default,
    width: int | None = None  # 1024² for PixArt-Σ-1024 and Flux.1-dev; PixArt-Σ's pipeline bins it
    # to the nearest aspect ratio its resolution was trained on, so there it picks the aspect ratio)
    timesteps: int = 8  # how many timesteps per prompt, spread over the schedule
    cfg_branches: bool = True  # also the unconditional (empty prompt) branch
    batch_size: int = 32  # rows per calibration batch (pipeline records are shuffled and joined)
    seed: int = 0
    # held-out inputs for teacher-relative errors (null: 64; a pipeline source holds out its last
    # prompts, 20% of them, or with a number enough of them to give that many inputs)
    heldout: int | None = None
    # keep each block's calibration inputs and outputs on disk, one file per batch, instead of all
    # batches in memory (big models at high resolution: ~28 MB per Flux 1024² sample in bf16)
    spill_activations: bool = False

    def where(self, key: str, value=None, because: tuple = ()) -> str:
        """'PATH:LINE: ' of calibration.`key` (of `calibration:` where the recipe leaves the key out)
        in the recipe `parse_recipe` read this config from (io_source.recipe_where: a --set value is
        named as its --set; `value`: the one the error is about); '' for a config made otherwise.
        `because`: other calibration keys the error's check read, whose --sets a line of the file
        is named with (an error a --set caused names it)."""
        recipe = self.__dict__.get("_recipe")  # set by parse_recipe; not a field (asdict, ==)
        if recipe is None:
            return ""
        from compress.io_source import recipe_where

        dotted = f"calibration.{key}"
        if dotted not in recipe.keys and "calibration" in recipe.keys:
            return recipe_where(recipe, "calibration") + ": "
        at = recipe_where(recipe, dotted, value)
        sets = sorted({loc.override for k in because if (loc := recipe.keys.get(f"calibration.{k}"))
                       and loc.override})
        return at + (f" (with {', '.join(sets)})" if sets and "(--set" not in at else "") + ": "

    def given(self, key: str) -> bool:
        """Whether the recipe (or a --set) gave calibration.`key`; True for a config made otherwise,
        whose every value counts as meant."""
        recipe = self.__dict__.get("_recipe")
        return recipe is None or f"calibration.{key}" in recipe.keys

    @property
    def heldout_inputs(self) -> int:
        """Held-out inputs of the toy and synthetic sources."""
        return HELDOUT if self.heldout is None else self.heldout

    def validate(self):
        try:
            self._validate()
        except BadValue as e:  # each check reads its key alone: an error names no other key's --set
            e.reads = ()
            raise

    def _validate(self):
        for name in ("num_prompts", "timesteps", "batch_size", "heldout", "sample_steps", "prompts_per_call"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadValue(name, f"calibration.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("height", "width"):
            if getattr(self, name) is not None and getattr(self, name) < 16:
                raise BadValue(name, f"calibration.{name} must be at least 16 pixels (or null: the "
                                     f"pipeline's default), not {getattr(self, name)}")
        if not 0 <= self.seed <= SEED_MAX:  # torch seeds with a 64-bit integer
            shown = repr(self.seed) if len(repr(self.seed)) <= 40 else repr(self.seed)[:37] + "..."
            raise BadValue("seed", f"calibration.seed must be an integer from 0 to 2**63-1, not {shown}")


@dataclass
class ExportConfig:
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


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


@dataclass
class Recipe:
    model: Literal["pixart", "flux"]
    teacher: str
    passes: list[PassSpec]
    version: int = 1
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # read block weights just in time from the teacher checkpoint (one block resident: models bigger
    # than memory); svd without whole-model work, importance/remove_blocks by the cosine proxy or
    # explicit indices (runner_stream)
    stream: bool = False
    # the dtype teacher and student are loaded and run in (calibration, passes, held-out errors);
    # bfloat16 halves what a streamed block holds. Factorization math is float64 regardless.
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # where teacher, student and calibration run: auto (cuda when torch sees a GPU, else cpu), cpu,
    # cuda or cuda:N (streamed runs read each block to the CPU, then compute there too)
    device: str = "auto"
    path: str = "<recipe>"
    raw: dict = field(default_factory=dict)  # the resolved plain data (written to the output)
    # where each key was given, by dotted path (calibration.prompt_file): its file line or --set
    keys: dict = field(default_factory=dict, compare=False, repr=False)


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
    """`at`'s where, and where that is a line of the file, '(with --set ...)' naming the --sets among
    `locs` (the keys whose values the error's check read): an error a --set caused names it."""
    if at.override:
        return at.where()
    sets = sorted({loc.override for loc in locs if loc.override})
    return at.where() + (f" (with {', '.join(sets)})" if sets else "")


def concerned(keys: dict, error: Exception) -> list:
    """The places among `keys` (dotted key -> _Loc) of the keys `error` concerns: the key a BadValue
    names and those its check says it read (`reads`, svd_checks._bad), each with the keys under and
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


def _compose(text: str, path: str) -> yaml.Node:
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if node is None:
        raise UserError(f"{path}: the recipe is empty")
    return node


def _construct(node: yaml.Node):
    loader = RecipeLoader("")
    return loader.construct_object(node, deep=True)


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
            raise loc.err(f"{what}: {getattr(e, 'problem', None) or e}") from None
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
        raise loc.err(f"{what} must be {_type_name(tp)}")
    try:
        value = _construct(node)
    except yaml.YAMLError as e:
        raise loc.err(f"{what}: {getattr(e, 'problem', None) or e}") from None
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        hint = did_you_mean(str(value), [str(a) for a in typing.get_args(tp)])
        raise loc.err(f"{what} must be one of {_type_name(tp)}, not {value!r}{hint}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise loc.err(f"{what} must be {_type_name(tp)}, not {value!r}{type_hint(node, tp)}")


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


def _shown(node: yaml.Node) -> str:
    """A value as an error quotes it: a scalar as written, else its kind."""
    if isinstance(node, yaml.ScalarNode):
        try:
            return repr(_construct(node))
        except yaml.YAMLError:
            return repr(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def build_dataclass(node: yaml.Node, cls, path: str, what: str):
    loc = _Loc(path, node)
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == NULL):
        if node is not None:
            convert(node, type(None), path, what)  # !!null abc is refused, not read as null
        node = yaml.MappingNode(MAP, [], node.start_mark if node else None)
    if not isinstance(node, yaml.MappingNode):
        raise loc.err(f"{what} must be a mapping of options")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in ("path", "raw")}
    values, key_at = {}, {}
    for key_node, value_node in node.value:  # keys: unique strings (_check_keys)
        key = key_node.value
        if key not in fields:
            hint = MERGE_HINT if key == "<<" else did_you_mean(key, fields)
            raise _Loc(path, key_node).err(f"unknown key '{key}' in {what}{hint} "
                                           f"(known: {', '.join(fields)})")
        try:
            values[key] = convert(value_node, hints[key], path, f"{what}.{key}" if what else key)
        except UserError as e:  # a field's metadata may say what to write (remove_blocks.blocks)
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
            raise _Loc(path, key_at.get(key, node)).err(f"{what + '.' if what else ''}{key} must be a "
                                                        f"finite number, got {value}")
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


# ---- passes -------------------------------------------------------------------------------------
def _pass_spec(node: yaml.Node, path: str, index: int) -> PassSpec:
    loc = _Loc(path, node)
    if isinstance(node, yaml.ScalarNode):  # "- svd" with all defaults
        name, opts = node.value, None
    elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        name, opts = node.value[0][0].value, node.value[0][1]
    else:
        raise loc.err(f"passes[{index}] must be a pass name or a one-key mapping like "
                      "'- svd: {ratio: 0.5}'")
    if name not in PASSES:
        hint = MERGE_HINT if name == "<<" else did_you_mean(name, PASSES)
        raise loc.err(f"unknown pass '{name}'{hint} (passes: {', '.join(PASSES)})")
    cls = pass_class(name)
    config = build_dataclass(opts, cls.config_cls, path, f"passes[{index}].{name}")
    keys = _key_locs(opts, path)
    # the option keys (ranks.modulation) a --set gave, to that --set, and those it added (not a key of
    # the file given another value, which stands where the file has it), for the pass's notes; not
    # fields (asdict, ==)
    config.__dict__["_set_keys"] = {k: at.override for k, at in keys.items() if at.override}
    config.__dict__["_set_added"] = {k for k, n in key_nodes(opts).items() if not getattr(n, "replaced", False)}
    return PassSpec(name, config, loc.line, loc, keys)


# ---- entry points -----------------------------------------------------------------------------
def set_override(data_node: yaml.MappingNode, dotted: str, value_text: str, path: str) -> None:
    """Apply `--set a.b.c=value` (list items by index: passes.1.svd.ratio=0.4) to the node tree.
    Every node it adds is marked `--set a.b.c=value`, which errors about it name."""
    mark = yaml.Mark(f"--set {dotted}={value_text}", 0, 0, 0, None, None)
    try:
        value_node = yaml.compose(value_text, Loader=RecipeLoader) or yaml.ScalarNode(
            "tag:yaml.org,2002:null", "null")
    except yaml.YAMLError as e:
        raise UserError(f"{path} ({mark.name}): the value is not valid YAML "
                        f"({getattr(e, 'problem', None) or e}); quote it if it is text") from None
    remark(value_node, mark)
    _check_keys(value_node, path, dotted=dotted)
    place(data_node, dotted, value_text, value_node, mark)


def parse_recipe(text: str, path: str = "<recipe>", overrides: list[str] = ()) -> Recipe:
    root = _compose(text, path)
    if not isinstance(root, yaml.MappingNode):
        raise _Loc(path, root).err("a recipe must be a mapping with model, teacher and passes")
    _check_keys(root, path)
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"{path} (--set {item}): expected KEY.PATH=VALUE")
        set_override(root, key.strip(), value, path)
    top = {k.value: (k, v) for k, v in root.value}
    known = ("version", "model", "teacher", "stream", "compute_dtype", "device", "calibration", "export",
             "passes")
    for key, (k, _) in top.items():
        if key not in known:
            hint = MERGE_HINT if key == "<<" else did_you_mean(key, known)
            raise _Loc(path, k).err(f"unknown key '{key}'{hint}")
    if "passes" not in top:
        raise _Loc(path, root).err("the recipe has no 'passes' list")
    passes_node = top["passes"][1]
    if not isinstance(passes_node, yaml.SequenceNode) or not passes_node.value:
        raise _Loc(path, passes_node).err("'passes' must be a non-empty list")
    specs = [_pass_spec(n, path, i) for i, n in enumerate(passes_node.value)]
    hints = {"version": int, "model": Literal["pixart", "flux"], "teacher": str, "stream": bool,
             "compute_dtype": Literal["float32", "float16", "bfloat16"], "device": str}
    values = {}
    for k, v in root.value:
        if k.value == "passes":
            continue
        if k.value in hints:
            values[k.value] = convert(v, hints[k.value], path, k.value)
        if k.value == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", values["device"]):
            raise _Loc(path, v).err(f"device must be auto, cpu, cuda or cuda:N; got {values['device']!r}")
        elif k.value == "calibration":
            values["calibration"] = build_dataclass(v, CalibrationConfig, path, "calibration")
        elif k.value == "export":
            values["export"] = build_dataclass(v, ExportConfig, path, "export")
    for required in ("model", "teacher"):
        if required not in values:
            raise _Loc(path, root).err(f"the recipe is missing required key '{required}'")
    if values.get("version", 1) != 1:
        raise _Loc(path, top["version"][0]).err(f"recipe version {values['version']} is not supported (only 1)")
    recipe = Recipe(passes=specs, path=path, keys=_key_locs(root, path), **values)
    for spec in specs:
        spec.recipe_keys = recipe.keys
    recipe.calibration._recipe = recipe  # its errors name the recipe's lines (CalibrationConfig.where)
    recipe.raw = to_plain(recipe)
    return recipe


def load_recipe(path, overrides: list[str] = ()) -> Recipe:
    text = read_utf8(path, str(path), "save the recipe as UTF-8")
    return parse_recipe(text, str(path), overrides)


def to_plain(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (every default filled in), for the output folder."""
    return {
        "version": recipe.version, "model": recipe.model, "teacher": recipe.teacher,
        "stream": recipe.stream, "compute_dtype": recipe.compute_dtype, "device": recipe.device,
        "calibration": dataclasses.asdict(recipe.calibration),
        "passes": [{p.name: dataclasses.asdict(p.config)} for p in recipe.passes],
        "export": dataclasses.asdict(recipe.export),
    }


def dump_recipe(recipe: Recipe, prompts: list[str] | None = None) -> str:
    """The resolved recipe as YAML. `prompts`: the calibration prompts a pipeline source read (from
    `prompt_file`), written inline so an output folder's recipe.yaml does not depend on where that
    file was."""
    plain = to_plain(recipe)
    if prompts is not None:  # these, all of them, when the dump is run again
        plain["calibration"]["prompts"], plain["calibration"]["prompt_file"] = list(prompts), None
        plain["calibration"]["num_prompts"] = len(prompts)
    return _sets_header(recipe) + yaml.dump(plain, Dumper=RecipeDumper, sort_keys=False)


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
