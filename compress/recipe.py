"""YAML -> typed, validated Recipe. Errors name file:line, the bad key, and a suggestion.

Pass options are validated against each pass's config dataclass: its fields are the recipe keys.
A passes item read as a pass and its PassSpec are recipe_passes'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import yaml

from compress.devices import device_refused
from compress.errors import BadValue, UserError, decode_utf8, did_you_mean
from compress.io_source import READS
from compress.passes import PASSES, config_class
from compress.recipe_convert import MERGE_HINT, _Loc, _check_keys, _key_locs, build_dataclass, convert
from compress.recipe_folder import read_recipe, refuse_folder, refuse_not_file
from compress.recipe_passes import PassSpec, _pass_name
from compress.recipe_set import key_nodes, place, refuse_repeated, remark
from compress.recipe_set_null import drop, no_value, takes_null
from compress.recipe_yaml import NULL, RecipeLoader, is_null, read_marks
from compress.recipe_yaml_errors import character_words, yaml_error_words

FAMILIES = ("pixart", "flux")
DTYPES = ("float32", "float16", "bfloat16")


HELDOUT = 64  # calibration.heldout's default for the toy and synthetic sources


# calibration.seed's largest: torch's CPU generator reads 32 bits of a seed (manual_seed(s) and s + 2**32
# draw alike), so a larger one would draw a smaller one's inputs (eval's --seed: cli_checks.SEED_LIMIT, the same)
SEED_MAX = 2**32 - 1
# an output's saved recipe (its recipe.yaml) is read as it ran (load_recipe's saved=True): a dit-compress before
# 79b9244 took seeds to 2**63-1, torch drawing with their low 32 bits (SavedCalibration)
SAVED_SEED_MAX = 2**63 - 1

TOP_KEYS = ("version", "model", "teacher", "teacher_config", "stream", "compute_dtype", "device", "calibration",
            "export", "passes")


@dataclass
class CalibrationConfig:
    """Where calibration inputs come from: prompts x timesteps x classifier-free-guidance branches."""

    source: Literal["auto", "toy", "pipeline", "synthetic"] = "auto"  # auto: toy for toy: teachers
    num_prompts: int = 10  # toy, synthetic: num_prompts × timesteps inputs drawn; pipeline: the first
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
    timesteps: int = 8  # pipeline: sampler steps kept per prompt, spread over the schedule; toy,
    # synthetic: each input at its own noise level, drawn uniformly
    cfg_branches: bool = True  # also the unconditional (empty prompt) branch
    batch_size: int = 32  # rows per calibration batch (pipeline records are shuffled and joined)
    seed: int = 0
    # held-out inputs for teacher-relative errors (null: 64; a pipeline source holds out its last
    # prompts, 20% of them, or with a number enough of them to give that many inputs)
    heldout: int | None = None
    # keep each block's calibration inputs and outputs on disk, one file per batch, instead of all
    # batches in memory (big models at high resolution: ~28 MB per Flux 1024² sample in bf16)
    spill_activations: bool = False
    seed_max: ClassVar[int] = SEED_MAX  # not a field: a recipe's, SavedCalibration's larger
    SEED_WORDS: ClassVar[str] = (f"2**32-1 ({SEED_MAX}: torch's generator reads 32 bits of a seed, so a larger one "
                                 "draws a smaller one's inputs)")

    def where(self, key: str, value=None, because: tuple = ()) -> str:
        """'PATH:LINE: ' of calibration.`key` (of `calibration:` where the recipe leaves the key out)
        in the recipe `parse_recipe` read this config from (recipe_where.recipe_where: a --set value is
        named as its --set; `value`: the one the error is about); '' for a config made otherwise.
        `because`: other calibration keys the error's check read, whose --sets a line of the file
        is named with (an error a --set caused names it)."""
        recipe = self.__dict__.get("_recipe")  # set by parse_recipe; not a field (asdict, ==)
        if recipe is None:
            return ""
        from compress.recipe_where import recipe_where

        dotted = f"calibration.{key}"
        if dotted not in recipe.keys and "calibration" in recipe.keys:
            return recipe_where(recipe, "calibration") + ": "
        at = recipe_where(recipe, dotted, value)
        sets = sorted({loc.override for k in because if (loc := recipe.keys.get(f"calibration.{k}"))
                       and loc.override})
        return at + (f" (with {', '.join(sets)})" if sets and "(--set" not in at else "") + ": "

    def given(self, key: str) -> bool:
        """Whether the recipe (or a --set) gave calibration.`key`, not a saved recipe's default filled
        in (marked '# default'); True for a config made otherwise, whose every value counts as meant."""
        recipe = self.__dict__.get("_recipe")
        return recipe is None or (f"calibration.{key}" in recipe.keys and key in self.__dict__.get("_given", {key}))

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
        if not 0 <= self.seed <= self.seed_max:
            shown = repr(self.seed) if len(repr(self.seed)) <= 40 else repr(self.seed)[:37] + "..."
            raise BadValue("seed", f"calibration.seed must be an integer from 0 to {self.SEED_WORDS}, not {shown}")


@dataclass
class SavedCalibration(CalibrationConfig):
    """The calibration of an output's saved recipe (its recipe.yaml), read as it ran: an older dit-compress
    took a seed to 2**63-1 (torch drew with its low 32 bits), which eval reads, not refuses."""
    seed_max: ClassVar[int] = SAVED_SEED_MAX
    SEED_WORDS: ClassVar[str] = f"2**63-1 ({SAVED_SEED_MAX}) in a saved recipe"


@dataclass
class ExportConfig:
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass
class Recipe:
    model: Literal["pixart", "flux"]
    teacher: str
    passes: list[PassSpec]
    version: int = 1
    # the diffusers config (a folder or a JSON file) of a single-file teacher, as --teacher-config,
    # which replaces it; relative: from the current folder, as `teacher` (recipe_teacher_config.teacher_config_of)
    teacher_config: str | None = None
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


# ---- passes -------------------------------------------------------------------------------------
def _pass_spec(node: yaml.Node, path: str, index: int) -> PassSpec:
    loc = _Loc(path, node)
    name, opts = _pass_name(node, loc, index)
    try:  # its config's module alone (passes.CONFIGS): no torch
        config = build_dataclass(opts, config_class(name), path, f"passes[{index}].{name}", keys=name)
    except UserError as e:
        raise UserError(f"{e}{_drop_hint(e, opts, f'passes.{index}.{name}')}") from None
    keys = _key_locs(opts, path)
    # the option keys (ranks.modulation) a --set gave, to that --set, and those it added (not a key of
    # the file given another value, which stands where the file has it), for the pass's notes; not
    # fields (asdict, ==)
    config.__dict__["_set_keys"] = {k: at.override for k, at in keys.items() if at.override}
    config.__dict__["_set_added"] = {k for k, n in key_nodes(opts).items() if not getattr(n, "replaced", False)}
    return PassSpec(name, config, loc.line, loc, keys)


def _drop_hint(error: UserError, opts: yaml.Node | None, dotted: str) -> str:
    """' (--set passes.2.svd.ratio=null removes it)': how to remove, from the command line, the key
    of the file a pass's check (a BadValue, the error's context) says to remove; none for a key that
    takes null (trust_region), which such a --set writes rather than removes."""
    bad = error.__context__
    if not isinstance(bad, BadValue) or "remove it" not in str(bad) or bad.key not in key_nodes(opts):
        return ""
    if takes_null(f"{dotted}.{bad.key}", Recipe, TOP_KEYS):
        return ""
    return f" (--set {dotted}.{bad.key}=null removes it)"


# ---- entry points -----------------------------------------------------------------------------
def _compose(text: str, path: str) -> yaml.Node:
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        line, words = yaml_error_words(e, text)
        raise UserError(f"{path}{'' if line is None else f':{line}'}: malformed YAML{words}") from None
    if node is None:
        raise UserError(f"{path}: the recipe is empty")
    return node


def set_override(data_node: yaml.MappingNode, dotted: str, value_text: str, path: str) -> None:
    """Apply `--set a.b.c=value` (list items by index: passes.1.svd.ratio=0.4) to the node tree.
    Every node it adds is marked `--set a.b.c=value`, which errors about it name."""
    mark = yaml.Mark(f"--set {dotted}={value_text}", 0, 0, 0, None, None)
    _check_top_key(data_node, dotted, path, mark)
    try:
        value_node = yaml.compose(value_text, Loader=RecipeLoader)
    except yaml.YAMLError as e:  # a control character: no problem, two lines of PyYAML's
        problem = character_words(e, value_text) if isinstance(e, yaml.reader.ReaderError) else \
            getattr(e, "problem", None) or e
        raise UserError(f"{path} ({mark.name}): the value is not valid YAML ({problem}); quote it if it is text") \
            from None
    if value_node is None:  # `--set seed=` (an unset shell variable): was null, so silently the default
        raise UserError(f"{path} ({mark.name}): {no_value(dotted, takes_null(dotted, Recipe, TOP_KEYS))}")
    if is_null(value_node) and not takes_null(dotted, Recipe, TOP_KEYS):  # a key null is no value of
        drop(data_node, dotted, value_text, path)  # (ratio=null): out of the recipe, its default holds
        return
    remark(value_node, mark)
    _check_keys(value_node, path, dotted=dotted)
    place(data_node, dotted, value_text, value_node, mark, path)


def _check_top_key(data_node: yaml.MappingNode, dotted: str, path: str, mark: yaml.Mark) -> None:
    """`--set pases.1.svd.ratio=0.3`: a path below a top-level key the recipe knows not (nor its file
    holds) is refused as that key, with the key meant ('unknown key 'pases'; did you mean 'passes'?'),
    before the path is placed: placing it first said that the recipe had no pases list to index, whose
    advice (`--set 'pases=[...]'`) only led to this refusal. A pass's name (`svd.ratio`) is left to
    recipe_set's words, which name its index."""
    first, dotted_below = dotted.split(".", 1)[0], "." in dotted
    if not dotted_below or first in TOP_KEYS or first in PASSES or first in [k.value for k, _ in data_node.value]:
        return
    hint = MERGE_HINT if first == "<<" else did_you_mean(first, TOP_KEYS)
    raise UserError(f"{path} ({mark.name}): unknown key '{first}'{hint}")


def _checked_root(text: str, path: str, overrides: list[str]) -> tuple[yaml.MappingNode, dict]:
    """The recipe's root mapping (its --sets applied) and {top-level key: (key node, value node)}: its
    YAML, keys and passes list checked, no pass module imported (parse_recipe's first checks)."""
    root = _compose(text, path)
    if not isinstance(root, yaml.MappingNode):
        raise _Loc(path, root).err("a recipe must be a mapping with model, teacher and passes")
    _check_keys(root, path)
    read_marks(root, text)  # a saved recipe's '# default' marks: keys the defaults filled in, not written
    refuse_repeated(overrides, path)  # two --sets of one key: not the last silently kept
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"{path} (--set {item}): expected KEY.PATH=VALUE")
        set_override(root, key.strip(), value, path)
    top = {k.value: (k, v) for k, v in root.value}
    for key, (k, _) in top.items():
        if key not in TOP_KEYS:
            hint = MERGE_HINT if key == "<<" else _section_hint(k) or did_you_mean(key, TOP_KEYS)
            raise _Loc(path, k).err(f"unknown key '{key}'{hint}")
    if "passes" not in top:
        raise _Loc(path, root).err("the recipe has no 'passes' list")
    passes_node = top["passes"][1]
    if not isinstance(passes_node, yaml.SequenceNode) or not passes_node.value:
        raise _Loc(path, passes_node).err(f"'passes' must be a non-empty list{_dash_hint(passes_node)}")
    return root, top


SECTIONS = {"calibration": CalibrationConfig, "export": ExportConfig}  # the top-level keys that hold keys


def _section_hint(key: yaml.ScalarNode) -> str:
    """"; 'timesteps' is a calibration key: indent it under calibration:" for an unknown top-level key
    that is a section's (written at column 0 under `calibration:`); how to --set it where a --set gave
    it; '' for any other key."""
    section = next((name for name, cls in SECTIONS.items()
                    if key.value in (f.name for f in dataclasses.fields(cls))), None)
    if section is None:
        return ""
    said = f"; '{key.value}' is {'an' if section[0] in 'aeiou' else 'a'} {section} key: "
    return said + (f"--set {section}.{key.value}=..." if _Loc("", key).override else f"indent it under {section}:")


def _dash_hint(node: yaml.Node) -> str:
    """": write '- svd' (a space after '-')" where the passes list's items lack the space after their
    dash (`  -svd`: YAML's text '-svd', or with options a mapping of the key '-svd:'); else ''."""
    first = node.value[0][0] if isinstance(node, yaml.MappingNode) and node.value else node
    text = first.value if isinstance(first, yaml.ScalarNode) and first.style is None else ""
    if not text.startswith("-") or not text[1:2].strip():
        return ""
    return f", not '{text.split()[0]}': write '- {text[1:].split()[0]}' (a space after '-')"


def parse_recipe(text: str, path: str = "<recipe>", overrides: list[str] = (), saved: bool = False) -> Recipe:
    """`saved`: the recipe an output holds (its recipe.yaml), read as it ran (SavedCalibration's seeds)."""
    root, top = _checked_root(text, path, overrides)
    specs = [_pass_spec(n, path, i) for i, n in enumerate(top["passes"][1].value)]
    hints = {"version": int, "model": Literal["pixart", "flux"], "teacher": str, "teacher_config": str | None,
             "stream": bool, "compute_dtype": Literal["float32", "float16", "bfloat16"], "device": Any}
    values = {}
    for k, v in root.value:
        if k.value == "passes":
            continue
        if k.value in ("model", "teacher") and isinstance(v, yaml.ScalarNode) and v.tag == NULL:
            raise _Loc(path, v).err(f"{k.value} is required, so null cannot remove it: give "
                                    f"{'pixart or flux' if k.value == 'model' else 'the teacher to compress'}")
        if k.value in hints:
            values[k.value] = convert(v, hints[k.value], path, k.value)
        if k.value == "teacher_config" and values["teacher_config"] is not None and not values[k.value].strip():
            raise _Loc(path, v).err(f"teacher_config is empty: give the diffusers config of {READS} (a folder, "
                                    "a pipeline folder or a JSON file such as config.json), or null")
        if k.value == "device" and (refused := device_refused(values["device"])):
            raise _Loc(path, v).err(refused)
        elif k.value == "calibration":
            values["calibration"] = build_dataclass(v, SavedCalibration if saved else CalibrationConfig, path,
                                                    "calibration")
        elif k.value == "export":
            values["export"] = build_dataclass(v, ExportConfig, path, "export")
    for required in ("model", "teacher"):
        if required not in values:
            raise _Loc(path, root).err(f"the recipe is missing required key '{required}'")
    if values.get("version", 1) != 1:
        raise _Loc(path, top["version"][0]).err(f"recipe version {values['version']} is not supported (only 1)")
    recipe = Recipe(passes=specs, path=path, keys=_key_locs(root, path), **values)
    # the top-level keys written (not marked filled in), for a dump's marks; not a field (asdict, ==)
    recipe.__dict__["_given"] = {k for k, (node, _) in top.items() if not getattr(node, "filled", False)}
    for spec in specs:
        spec.recipe_keys = recipe.keys
    recipe.calibration._recipe = recipe  # its errors name the recipe's lines (CalibrationConfig.where)
    recipe.raw = to_plain(recipe)
    return recipe


def load_recipe(path, overrides: list[str] = (), command: str = "plan", saved: bool = False) -> Recipe:
    """The Recipe at `path`; `command` (plan, run, importance) is the one a folder's hint repeats;
    `saved`: an output's own recipe.yaml, read as it ran (eval: a seed past 2**32-1 an older run took).
    None of its checks imports torch (a pass's options are its config class's, passes.CONFIGS: modules
    without torch): a command loads its recipe before torch's and diffusers' start-up (seconds), so a
    recipe that is not there or mistyped, in a pass's options too, is refused in a moment, and uses
    that Recipe after it."""
    return parse_recipe(_recipe_text(path, command), str(path), overrides, saved)


def _recipe_text(path, command: str) -> str:
    refuse_folder(path, command)  # was the OS's "Is a directory"
    refuse_not_file(path)  # /dev/zero was read until memory ran out
    return decode_utf8(read_recipe(path), str(path), "save the recipe as UTF-8")  # a pipe: at most RECIPE_MB


def to_plain(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (every default filled in), for the output folder."""
    return {
        "version": recipe.version, "model": recipe.model, "teacher": recipe.teacher,
        "teacher_config": recipe.teacher_config, "stream": recipe.stream, "compute_dtype": recipe.compute_dtype,
        "device": recipe.device,
        "calibration": dataclasses.asdict(recipe.calibration),
        "passes": [{p.name: dataclasses.asdict(p.config)} for p in recipe.passes],
        "export": dataclasses.asdict(recipe.export),
    }
