"""Strict recipes: every mistake is a one-line UserError naming file:line and the key."""

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from compress.errors import UserError
from compress.recipe import RecipeLoader, dump_recipe, load_recipe, parse_recipe
from compress.recipe_yaml import MARKS_HEADER

GOOD = """\
version: 1
model: pixart
teacher: toy:pixart
calibration:
  num_prompts: 4
  timesteps: 2
passes:
  - importance: {buckets: 3}
  - distill:
      steps: 10
      lr: 0.001
export:
  dtype: float32
"""


def test_good_recipe_round_trips():
    r = parse_recipe(GOOD, "good.yaml")
    assert [p.name for p in r.passes] == ["importance", "distill"]
    assert r.passes[1].config.steps == 10 and r.passes[1].config.lr == 0.001
    assert r.passes[1].line == 9 and r.calibration.num_prompts == 4
    again = parse_recipe(dump_recipe(r), "again.yaml")
    assert again.raw == r.raw


def test_overrides():
    r = parse_recipe(GOOD, "g.yaml", ["passes.1.distill.steps=3", "calibration.seed=7",
                                      "export.dtype=bfloat16"])
    assert r.passes[1].config.steps == 3 and r.calibration.seed == 7
    assert r.export.dtype == "bfloat16"


def _replace(old, new):
    assert old in GOOD
    return GOOD.replace(old, new)


SVD = "model: pixart\nteacher: x\npasses:\n  - svd:\n      ratio: 0.5\n"
PER_ROLE = SVD.replace("ratio: 0.5", "allocation: per_role")  # ratio is read by uniform / global only
BAD = [  # (recipe text, expected message fragment)
    ("", "empty"),
    ("model: [pixart\n", "malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
    (_replace("version: 1\n", "version: 2\n"), "version 2 is not supported"),
    (_replace("model: pixart", "model: pixar"), "did you mean 'pixart'"),
    (_replace("model: pixart", "model: 3"), "must be one of"),
    (_replace("teacher: toy:pixart\n", ""), "missing required key 'teacher'"),
    (_replace("model: pixart\n", ""), "missing required key 'model'"),
    (_replace("passes:", "pases:"), "did you mean 'passes'"),
    (GOOD.split("passes:")[0], "no 'passes' list"),
    (_replace("  - importance: {buckets: 3}\n  - distill:\n      steps: 10\n      lr: 0.001\n",
              "  []\n"), "non-empty list"),
    (_replace("importance:", "importanse:"), "did you mean 'importance'"),
    (_replace("importance: {buckets: 3}", "foo"), "unknown pass 'foo'"),
    (_replace("{buckets: 3}", "{buckts: 3}"), "did you mean 'buckets'"),
    (_replace("{buckets: 3}", "{buckets: three}"), "must be an integer"),
    (_replace("{buckets: 3}", "{buckets: 3.5}"), "must be an integer"),
    (_replace("{buckets: 3}", "{buckets: true}"), "must be an integer"),
    (_replace("{buckets: 3}", "[3]"), "must be a mapping of options"),
    (_replace("      steps: 10", "      steps: [10]"), "must be an integer"),
    (_replace("      lr: 0.001", "      lr: fast"), "must be a number"),
    (_replace("      lr: 0.001", "      lr: 0.001\n      lr: 0.002"), "duplicate key 'lr'"),
    (_replace("  num_prompts: 4", "  num_prompt: 4"), "did you mean 'num_prompts'"),
    (_replace("  num_prompts: 4", "  num_prompts: 0"), "num_prompts must be at least 1"),
    (_replace("  num_prompts: 4", "  num_prompts: 4\n  seed: 1\n  num_prompts: 5"), "r.yaml:7: duplicate key 'num_prompts'"),
    (_replace("model: pixart\n", "model: pixart\nmodel: flux\n"), "r.yaml:3: duplicate key 'model' (first at line 2)"),
    (GOOD + "passes:\n  - importance\n", "r.yaml:14: duplicate key 'passes' (first at line 7)"),
    (GOOD + "? [a]\n: 1\n", "r.yaml:14: a key must be a plain name"),
    (_replace("{buckets: 3}", "{? [buckets] : 3}"), "r.yaml:8: a key must be a plain name"),
    (_replace("  - importance: {buckets: 3}", "  - ? {importance: 1}\n    : {}"), "r.yaml:8: a key must be a plain name"),
    (_replace("  timesteps: 2", "  timesteps: -2"), "timesteps must be at least 1"),
    (_replace("calibration:\n  num_prompts: 4\n  timesteps: 2\n", "calibration: 5\n"),
     "calibration must be a mapping"),
    (_replace("  dtype: float32", "  dtype: float8"), "must be one of"),
    (_replace("  dtype: float32", "  dtyp: float32"), "did you mean 'dtype'"),
    (_replace("version: 1\n", "version: 1\nextra: 2\n"), "unknown key 'extra'"),
    (_replace("  - importance: {buckets: 3}\n", "  - importance: {}\n    distill: {}\n"),
     "one-key mapping"),
    (_replace("  - importance: {buckets: 3}\n", "  - 7\n"), "unknown pass '7'"),
    (_replace("teacher: toy:pixart", "teacher: [a, b]"), "teacher must be a string"),
    ("model: pixart\nteacher: x\npasses: {svd: 1}\n", "non-empty list"),
    ("model: pixart\nteacher: x\npasses:\n  - svd: {fisher_memory_gb: lots}\n",
     "r.yaml:4: svd.fisher_memory_gb must be a number or 'auto'"),
    ("model: pixart\nteacher: !!python/name:os.system ''\npasses: [importance]\n", "teacher"),
    (SVD + "      center: ['re:[']\n", "r.yaml:6: svd.center: bad regex 're:['"),
    (SVD + "      center: [3]\n", "r.yaml:6: svd.center: patterns must be strings"),
    (PER_ROLE + "      ratios: {attention: half}\n", "r.yaml:6: svd.ratios.attention must be a number in (0, 1]"),
    (SVD + "      ratios: {attention: 0.3}\n", "r.yaml:6: svd.ratios is only read by allocation: per_role"),
    (SVD + "      energy: 0.9\n", "r.yaml:6: svd.energy is only read by allocation: energy"),
    (SVD + "      fisher_probes: 0\n", "r.yaml:6: svd.fisher_probes must be an integer ≥ 1"),
    ("model: pixart\nteacher: x\npasses:\n  - remove_blocks: {count: 1, buckets: 0}\n",
     "r.yaml:4: remove_blocks: buckets must be a positive integer"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_recipes(text, message):
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    msg = str(e.value)
    assert message in msg
    assert msg.startswith("r.yaml") and "\n" not in msg


def test_error_names_the_line():
    text = _replace("{buckets: 3}", "{buckts: 3}")
    with pytest.raises(UserError, match=r"^r\.yaml:8: unknown key 'buckts'"):
        parse_recipe(text, "r.yaml")


def test_bad_override():
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.0\): expected KEY\.PATH=VALUE"):
        parse_recipe(GOOD, "r.yaml", ["passes.0"])
    with pytest.raises(UserError, match="not an index"):
        parse_recipe(GOOD, "r.yaml", ["passes.9.svd.ratio=1"])


def test_an_override_by_pass_name_is_told_the_pass_index():
    """`--set distill.steps=3` reads naturally but passes are a list: the error gives the indexed
    key of every pass of that name; a top-level key is still set as it is written."""
    with pytest.raises(UserError, match=r"--set passes\.1\.distill\.steps=3$"):
        parse_recipe(GOOD, "r.yaml", ["distill.steps=3"])
    twice = GOOD.replace("  - importance: {buckets: 3}\n", "  - distill: {steps: 1}\n")
    with pytest.raises(UserError, match=r"--set passes\.0\.distill\.lr=1 \(or passes\.1\.distill\.lr\)$"):
        parse_recipe(twice, "r.yaml", ["distill.lr=1"])
    with pytest.raises(UserError, match="unknown key 'svd'"):  # no svd pass: the plain unknown-key error
        parse_recipe(GOOD, "r.yaml", ["svd.ratio=0.5"])


def test_overrides_add_keys_and_their_errors_name_the_override():
    """--set may add keys the file lacks, also inside a new mapping (a traceback before: the
    added nodes had no position); a bad value names the --set that gave it, not a file line."""
    r = parse_recipe(GOOD, "r.yaml", ["passes.1.distill.warmup_steps=2", "calibration.height=64"])
    assert r.passes[1].config.warmup_steps == 2 and r.calibration.height == 64
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.1\.distill\.stepz=3\): unknown key 'stepz'"):
        parse_recipe(GOOD, "r.yaml", ["passes.1.distill.stepz=3"])
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.0\.importance\.new\.deep=1\): unknown key 'new'"):
        parse_recipe(GOOD, "r.yaml", ["passes.0.importance.new.deep=1"])
    with pytest.raises(UserError, match=r"^r\.yaml \(--set calibration\.height=8\): calibration\.height must be "
                                        "at least 16"):
        parse_recipe(GOOD, "r.yaml", ["calibration.height=8"])  # a range check names the --set too


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.yaml: No such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_recipe_is_safe_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent("""\
        model: !!python/object/apply:os.system ["echo pwned"]
        teacher: toy:pixart
        passes: [importance]
        """))
    with pytest.raises(UserError):
        load_recipe(p)


def test_dumped_recipe_inlines_the_prompt_file(tmp_path, monkeypatch):
    """An output folder's recipe.yaml must not depend on where its prompt file was (eval re-reads it):
    the runner passes the prompts its pipeline source read."""
    from compress.calib_pipeline import read_prompts

    (tmp_path / "recipes" / "prompts").mkdir(parents=True)
    (tmp_path / "recipes" / "prompts" / "p.txt").write_text("a red fox\n\na blue car\na green tree\n")
    text = GOOD.replace("  num_prompts: 4\n", "  num_prompts: 2\n  prompt_file: prompts/p.txt\n")
    recipe = parse_recipe(text, str(tmp_path / "recipes" / "r.yaml"))
    assert "prompt_file: prompts/p.txt" in dump_recipe(recipe)  # not a pipeline source: as written
    dumped = dump_recipe(recipe, read_prompts(recipe.calibration, tmp_path / "recipes"))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: a relative prompt_file would not be found
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert again.calibration.prompt_file is None
    assert read_prompts(again.calibration) == ["a red fox", "a blue car"]
    assert dump_recipe(again) == dumped  # a dump round-trips


@pytest.mark.parametrize("value", ["[0.3", "\t", "*a", "a\n---\nb"])
def test_override_that_is_not_yaml(value):
    """A --set value that YAML cannot read is a one-line error naming the --set (a traceback before)."""
    with pytest.raises(UserError) as e:
        parse_recipe(GOOD, "r.yaml", [f"passes.1.distill.lr={value}"])
    assert str(e.value).startswith(f"r.yaml (--set passes.1.distill.lr={value}): the value is not valid YAML")


def test_override_of_a_bad_value_names_the_override():
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.1\.distill\.lr=0\): distill: lr must be > 0"):
        parse_recipe(GOOD, "r.yaml", ["passes.1.distill.lr=0"])
    with pytest.raises(UserError, match=r"^r\.yaml \(--set calibration=\{seed: 1, seed: 2\}\): duplicate key 'seed'$"):
        parse_recipe(GOOD, "r.yaml", ["calibration={seed: 1, seed: 2}"])


def test_range_errors_name_the_key_line():
    """A pass's value checks run at load and point at the bad key, not at the pass's first line."""
    text = _replace("      lr: 0.001", "      lr: 0.001\n      warmup_steps: -1")
    with pytest.raises(UserError, match=r"^r\.yaml:12: distill: warmup_steps must be ≥ 0, got -1$"):
        parse_recipe(text, "r.yaml")
    text = _replace("  timesteps: 2", "  timesteps: 0")
    with pytest.raises(UserError, match=r"^r\.yaml:6: calibration\.timesteps must be at least 1"):
        parse_recipe(text, "r.yaml")


def test_recursive_alias_is_checked_once():
    with pytest.raises(UserError, match="r.yaml"):
        parse_recipe(GOOD + "export: &e {dtype: *e}\n", "r.yaml")


def test_recipe_that_is_not_utf8(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(GOOD.replace("teacher: toy:pixart", "teacher: caf\xe9").encode("latin-1"))
    with pytest.raises(UserError, match=r"r\.yaml:3: not UTF-8 text \(byte 0xe9\); save the recipe as UTF-8"):
        load_recipe(p)


@pytest.mark.parametrize("override, key", [("passes.1.distill.lr=.inf", r"distill\.lr"),
                                           ("passes.1.distill.lambda_out=.inf", r"distill\.lambda_out"),
                                           ("calibration.guidance_scale=.nan", "calibration.guidance_scale")])
def test_values_that_are_not_finite_are_refused(override, key):
    """YAML reads .nan and .inf as floats; they pass `≥ 0` style checks and fail only mid-run."""
    with pytest.raises(UserError, match=rf"\(--set {override.split('=')[0]}=\.\w+\): {key} must be a finite number"):
        parse_recipe(GOOD, "r.yaml", [override])


def test_numbers_with_an_exponent_are_numbers():
    """YAML 1.1 reads 1e-4 (no dot, or no sign in the exponent) as a string, which a number key then
    refused; recipes and --set values read it as YAML 1.2 does."""
    text = _replace("      lr: 0.001", "      lr: 1e-4")
    r = parse_recipe(text, "r.yaml", ["calibration.guidance_scale=5E+0", "passes.1.distill.mask_massive=2e1"])
    assert r.passes[1].config.lr == 1e-4 and r.calibration.guidance_scale == 5.0
    assert r.passes[1].config.mask_massive == 20.0  # a nullable number too
    assert yaml.load("[1e-4, 5E+3, -2e3, 1.0e4, .5e1, 1e4x, e4]", Loader=RecipeLoader) == [
        1e-4, 5e3, -2e3, 1e4, 5.0, "1e4x", "e4"]
    assert yaml.safe_load("1e-4") == "1e-4"  # other loaders are left as they are


def test_a_value_of_neither_type_is_quoted():
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.1\.distill\.max_steps_this_run=abc\): "
                                        r"distill\.max_steps_this_run must be an integer or null, "
                                        r"not 'abc'$"):
        parse_recipe(GOOD, "r.yaml", ["passes.1.distill.max_steps_this_run=abc"])
    with pytest.raises(UserError, match=r"mask_massive must be a number or null, not a list$"):
        parse_recipe(GOOD, "r.yaml", ["passes.1.distill.mask_massive=[1]"])
    with pytest.raises(UserError, match=r"svd\.targets must be a list, not 'attention'$"):
        parse_recipe(SVD, "r.yaml", ["passes.0.svd.targets=attention"])  # not "a list of Any"
    with pytest.raises(UserError, match=r"svd\.ratios must be a mapping or null, not 8$"):
        parse_recipe(SVD, "r.yaml", ["passes.0.svd.ratios=8"])


@pytest.mark.parametrize("override, message", [
    ("passes.0.distill.steps=3", "passes.0 is an importance pass (distill passes: passes.1)"),
    ("passes.1.svd.ratio=0.5", "passes.1 is a distill pass (the recipe has no svd pass)"),
    ("passes.1.steps=3", "passes.1 is a distill pass; its options are set as passes.1.distill.steps"),
    ("passes.0.distill={steps: 3}", "passes.0 is an importance pass (distill passes: passes.1)"),
])
def test_an_override_of_another_pass_says_which_pass_is_there(override, message):
    """A wrong pass index blamed a fine recipe line ('must be a one-key mapping')."""
    with pytest.raises(UserError) as e:
        parse_recipe(GOOD, "r.yaml", [override])
    assert str(e.value) == f"--set {override.split('=')[0]}: {message}"


def test_an_override_sets_an_option_of_a_pass_given_by_name_alone():
    text = _replace("  - importance: {buckets: 3}", "  - importance")
    assert parse_recipe(text, "r.yaml", ["passes.0.importance.buckets=2"]).passes[0].config.buckets == 2


def test_an_override_names_a_layer_with_dots():
    """Under `ranks` the rest of the path is one layer name (a rank for 'adaln_single' of
    {'linear': 16} before); a new pattern goes first, where it gives its layers their rank."""
    text = SVD + "      ranks: {modulation: 8, attention: 4}\n"
    r = parse_recipe(text, "r.yaml", ["passes.0.svd.ranks.adaln_single.linear=16",
                                      "passes.0.svd.ranks.attention=2"])
    assert r.passes[0].config.ranks == {"adaln_single.linear": 16, "modulation": 8, "attention": 2}
    assert list(r.passes[0].config.ranks) == ["adaln_single.linear", "modulation", "attention"]
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.0\.svd\.ranks\.re:blocks\.1\.attn=0\): "
                                        r"svd\.ranks: rank 0 for 're:blocks\.1\.attn' must be"):
        parse_recipe(text, "r.yaml", ["passes.0.svd.ranks.re:blocks.1.attn=0"])


def test_a_bad_rank_set_on_the_command_line_names_the_override():
    """The file's `ranks` line was blamed for a rank the --set gave."""
    text = SVD + "      ranks: {modulation: 8}\n"
    with pytest.raises(UserError, match=r"^r\.yaml \(--set passes\.0\.svd\.ranks\.attention=0\): svd\.ranks"):
        parse_recipe(text, "r.yaml", ["passes.0.svd.ranks.attention=0"])
    with pytest.raises(UserError, match=r"^r\.yaml:7: svd\.ranks: rank 0 for 'mlp'"):
        parse_recipe(text.replace("modulation: 8}", "modulation: 8,\n              mlp: 0}"), "r.yaml")


def _both(tmp_path, key: str, value: str):
    """The recipe GOOD with calibration.`key` = `value`, once written in the file and once by --set:
    [(recipe or the UserError's message)] for each."""
    out = []
    path = tmp_path / "r.yaml"
    path.write_text(_replace("  timesteps: 2\n", f"  timesteps: 2\n  {key}: {value}\n"))
    for overrides in ([], [f"calibration.{key}={value}"]):
        if overrides:
            path.write_text(GOOD)
        try:
            out.append(load_recipe(path, overrides))
        except UserError as e:
            out.append(str(e))
    return out


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("TRUE", True), ("false", False),
                                         ("FALSE", False)])
def test_booleans_are_yaml_1_2s(tmp_path, text, value):
    for r in _both(tmp_path, "cfg_branches", text):
        assert r.calibration.cfg_branches is value


@pytest.mark.parametrize("text, spelled", [("yes", "true"), ("on", "true"), ("On", "true"), ("no", "false"),
                                           ("off", "false"), ("y", "true")])
def test_yaml_1_1_booleans_are_words_and_the_error_says_how_to_spell_them(tmp_path, text, spelled):
    """YAML 1.1 read yes/on/no/off as booleans while 1e-4 was read as YAML 1.2 does: one schema now."""
    file_error, set_error = _both(tmp_path, "cfg_branches", text)
    message = f"calibration.cfg_branches must be true or false, not '{text}' (write {spelled}: "
    assert file_error.startswith(f"{tmp_path}/r.yaml:7: {message}")
    assert set_error.startswith(f"{tmp_path}/r.yaml (--set calibration.cfg_branches={text}): {message}")


@pytest.mark.parametrize("text, value", [("0o17", 15), ("0x1F", 31), ("+12", 12), ("1000", 1000)])
def test_integers_are_yaml_1_2s(tmp_path, text, value):
    """0o17 was refused, 017 read as YAML 1.1's octal 15 (now refused: test_a_leading_zero_...)."""
    for r in _both(tmp_path, "sample_steps", text):
        assert r.calibration.sample_steps == value


@pytest.mark.parametrize("key, text, hint", [
    ("sample_steps", "1_000", "(write 1000: a YAML 1.2 number has no '_' or ',')"),
    ("sample_steps", "0b101", "(write 5: YAML 1.2 has no 0b binary numbers)"),
    ("heldout", "1,000", "(write 1000: a YAML 1.2 number has no '_' or ',')"),
    ("guidance_scale", "4_500.5", "(write 4500.5: a YAML 1.2 number has no '_' or ',')"),
    ("batch_size", "1e11", "(an integer is written without a dot or exponent: 100000000000)"),
])
def test_yaml_1_1_numbers_are_words_and_the_error_says_how_to_spell_them(tmp_path, key, text, hint):
    for message in _both(tmp_path, key, text):
        assert isinstance(message, str) and message.endswith(hint) and "\n" not in message
        assert f"calibration.{key} must be " in message


def test_a_string_key_keeps_yaml_1_1_booleans_and_numbers_as_written(tmp_path):
    """Prompts `yes` and `1_000` were read as True and 1000, and refused as not strings."""
    for r in _both(tmp_path, "prompts", "[yes, off, 1_000, 0b1, 2001-12-14]"):
        assert r.calibration.prompts == ["yes", "off", "1_000", "0b1", "2001-12-14"]
    assert yaml.load("[on, 1_000, 0o17, 1e-4, .inf, ~, Null, '']", Loader=RecipeLoader)[:6] == [
        "on", "1_000", 15, 1e-4, float("inf"), None]


def test_a_null_section_in_any_yaml_1_2_spelling_is_its_defaults():
    for text in ("Null", "NULL", "~", "null", ""):
        r = parse_recipe(GOOD.split("calibration:")[0] + f"calibration: {text}\npasses: [importance]\n", "r.yaml")
        assert r.calibration.num_prompts == 10


def test_a_dumped_recipe_quotes_strings_either_yaml_reads_as_numbers_or_booleans():
    """A prompt '1e-4' was dumped bare (YAML 1.1 reads it as text) and read back as a number."""
    text = _replace("  timesteps: 2\n", "  timesteps: 2\n  prompts: ['1e-4', '0o17', 'yes', '1_000', .5x]\n")
    r = parse_recipe(text, "r.yaml")
    dumped = dump_recipe(r)
    assert parse_recipe(dumped, "again.yaml").raw == r.raw
    assert yaml.safe_load(dumped)["calibration"]["prompts"] == ["1e-4", "0o17", "yes", "1_000", ".5x"]


def test_a_recipe_records_where_each_of_its_keys_was_given():
    """The file's line, or the --set (recipe_where.recipe_where reads them; passes have PassSpec.keys)."""
    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\ncalibration:\n  seed: 3\npasses: [svd]\n", "r.yaml",
                          ["calibration.timesteps=4"])
    assert recipe.keys["teacher"].where() == "r.yaml:2" and recipe.keys["calibration.seed"].where() == "r.yaml:4"
    assert recipe.keys["calibration.timesteps"].where() == "r.yaml (--set calibration.timesteps=4)"
    assert "calibration.batch_size" not in recipe.keys  # a default


@pytest.mark.parametrize("text, hint", [
    ("010", "'010' has a leading zero (YAML 1.1 read it as octal 8: write 10, or 0o10 for octal)"),
    ("-017", "'-017' has a leading zero (YAML 1.1 read it as octal -15: write -17)"),
    ("09", "'09' has a leading zero (write 9)"),
    ("!!int 010", "'010' has a leading zero (YAML 1.1 read it as octal 8: write 10, or 0o10 for octal)"),
])
def test_a_leading_zero_is_refused_not_read_as_decimal(tmp_path, text, hint):
    """seed: 010 read as 10 where YAML 1.1 (the loader before) read 8, silently."""
    file_error, set_error = _both(tmp_path, "seed", text)
    assert file_error == f"{tmp_path}/r.yaml:7: calibration.seed: {hint}"
    assert set_error == f"{tmp_path}/r.yaml (--set calibration.seed={text}): calibration.seed: {hint}"
    union = _both(tmp_path, "height", text)[0]  # int | None: the hint still says how to write it
    assert union.startswith(f"{tmp_path}/r.yaml:7: calibration.height must be ")
    assert union.endswith(hint[hint.index("("):])


def test_floats_and_zero_with_a_leading_zero_are_read():
    r = parse_recipe(_replace("  timesteps: 2\n", "  timesteps: 2\n  guidance_scale: 04.5\n  seed: 0\n"), "r.yaml")
    assert (r.calibration.guidance_scale, r.calibration.seed) == (4.5, 0)
    assert yaml.load("[0, -0, 0.5, 00.5, 010.5, 0o10]", Loader=RecipeLoader) == [0, 0, 0.5, 0.5, 10.5, 8]


@pytest.mark.parametrize("key, text, message", [
    ("cfg_branches", "!!bool maybe", "calibration.cfg_branches: 'maybe' is not a YAML 1.2 boolean"),
    ("cfg_branches", "!!bool yes", "calibration.cfg_branches: 'yes' is not a YAML 1.2 boolean "
                                   "(write true: in YAML 1.2 only true and false are booleans)"),
    ("guidance_scale", "!!float abc", "calibration.guidance_scale: 'abc' is not a YAML 1.2 number"),
    ("guidance_scale", "!!float 1_000", "calibration.guidance_scale: '1_000' is not a YAML 1.2 number "
                                        "(write 1000: a YAML 1.2 number has no '_' or ',')"),
    ("sample_steps", "!!int 0b11", "calibration.sample_steps: '0b11' is not a YAML 1.2 integer "
                                   "(write 3: YAML 1.2 has no 0b binary numbers)"),
    ("seed", "!!null abc", "calibration.seed: 'abc' is not a YAML 1.2 null (null, Null, NULL, ~ or nothing)"),
    ("seed", "!!timestamp abc", "calibration.seed: 'abc' is not a YAML timestamp (YYYY-MM-DD, or with a time)"),
    ("seed", "!!timestamp 2024-13-45", "calibration.seed: '2024-13-45' is not a YAML timestamp"),
    ("seed", "!!python/object:os.system x", "calibration.seed: could not determine a constructor for the tag"),
    ("seed", "!!binary abc", "calibration.seed: failed to decode base64 data"),
])
def test_explicit_tags_are_held_to_the_core_schema_in_one_line(tmp_path, key, text, message):
    """!!bool maybe raised KeyError, !!float abc ValueError, !!timestamp abc AttributeError (tracebacks);
    !!bool yes was True and !!null abc None, against "only true and false are booleans"."""
    file_error, set_error = _both(tmp_path, key, text)
    assert file_error.startswith(f"{tmp_path}/r.yaml:7: {message}") and "\n" not in file_error
    assert set_error.startswith(f"{tmp_path}/r.yaml (--set calibration.{key}={text}): {message}")


@pytest.mark.parametrize("key, text, value", [
    ("cfg_branches", "!!bool FALSE", False), ("guidance_scale", "!!float 2", 2.0),
    ("guidance_scale", "!!float 2.5e0", 2.5), ("sample_steps", "!!int 0x10", 16), ("heldout", "!!null ~", None),
    ("heldout", "!!null", None), ("prompt_file", "!!str 010", "010"),
])
def test_explicit_tags_of_core_schema_values_are_read(tmp_path, key, text, value):
    for r in _both(tmp_path, key, text):
        assert getattr(r.calibration, key) == value
    assert yaml.load("!!float -.Inf", Loader=RecipeLoader) == float("-inf")


@pytest.mark.parametrize("key, text, message", [
    ("prompts", "!!str [a]", "calibration.prompts: !!str on a list"),
    ("prompts", "!!set [a]", "calibration.prompts: !!set on a list"),
    ("prompts", "!!set {a}", "calibration.prompts: !!set on a mapping"),
    ("prompts", "!custom [a]", "calibration.prompts: !custom on a list"),
])
def test_a_tag_on_a_list_or_mapping_is_refused_in_one_line(tmp_path, key, text, message):
    """prompts: !!str [a] and !!set [a] were read as the list [a], the tag ignored."""
    file_error, set_error = _both(tmp_path, key, text)
    assert file_error.startswith(f"{tmp_path}/r.yaml:7: {message}: ") and "\n" not in file_error
    assert set_error.startswith(f"{tmp_path}/r.yaml (--set calibration.{key}={text}): {message}: ")
    assert file_error.endswith(f"remove {text.split()[0]}")


def test_the_standard_tags_of_lists_and_mappings_are_read():
    r = parse_recipe(_replace("calibration:\n", "calibration: !!map\n  prompts: !!seq [a, b]\n"), "r.yaml")
    assert r.calibration.prompts == ["a", "b"]


@pytest.mark.parametrize("text", ["!!null abc", "!!null {}", "!!null [a]"])
def test_a_section_tagged_null_is_held_to_what_null_is(tmp_path, text):
    """calibration: !!null abc meant "the defaults", silently (build_dataclass read the tag, not the text)."""
    path = tmp_path / "r.yaml"
    path.write_text(f"model: pixart\nteacher: toy:pixart\ncalibration: {text}\npasses:\n  - importance: {{}}\n")
    with pytest.raises(UserError) as in_file:
        load_recipe(path)
    path.write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - importance: {}\n")
    with pytest.raises(UserError) as by_set:
        load_recipe(path, [f"calibration={text}"])
    problem = ("'abc' is not a YAML 1.2 null (null, Null, NULL, ~ or nothing)" if text == "!!null abc"
               else "!!null on a ")
    assert str(in_file.value).startswith(f"{path}:3: calibration: {problem}") and "\n" not in str(in_file.value)
    assert str(by_set.value).startswith(f"{path} (--set calibration={text}): calibration: {problem}")
    for null in ("!!null", "!!null ~", "null", "~"):  # the defaults, as before (nothing after '=' is refused)
        assert load_recipe(path, [f"calibration={null}"]).calibration.prompts == []


@pytest.mark.parametrize("text, where", [
    ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: &s {ratio: 0.5}\n  - svd: {<<: *s, targets: [mlp]}\n",
     r"r\.yaml:5: unknown key '<<' in passes\[1\]\.svd"),
    ("<<: {model: pixart}\nteacher: toy:pixart\npasses: [svd]\n", r"r\.yaml:1: unknown key '<<'"),
    ("model: pixart\nteacher: toy:pixart\npasses:\n  - &s {svd: {ratio: 0.5}}\n  - <<: *s\n",
     r"r\.yaml:5: unknown pass '<<'"),
])
def test_a_yaml_merge_key_says_recipes_are_yaml_1_2(text, where):
    """'unknown key '<<' in passes[1].svd' said nothing of why a YAML merge key is not read."""
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    assert re.match(where, str(e.value)), e.value
    assert "recipes are read as YAML 1.2, which has no merge key: write the keys out (or use --set)" in \
        str(e.value), e.value


def test_a_dumped_recipe_without_a_set_has_no_sets_header_and_one_with_sets_names_each_once():
    text = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5}\n"
    first, second = dump_recipe(parse_recipe(text, "r.yaml")).splitlines()[:2]
    assert first == MARKS_HEADER and not second.startswith("#")  # the marks' line alone
    sets = ["passes.0.svd.ratio=0.4", "calibration={num_prompts: 4, timesteps: 2}"]
    dumped = dump_recipe(parse_recipe(text, "r.yaml", sets))
    header = [line for line in dumped.splitlines() if line.startswith("#   --set ")]
    assert sorted(header) == sorted(f"#   --set {s}" for s in sets)  # the mapping's two keys: one line
    assert "comes first" not in dumped  # no ranks pattern was set
    again = parse_recipe(dumped, "again.yaml")
    assert again.passes[0].config.ratio == 0.4 and again.calibration.num_prompts == 4


def test_an_error_a_set_caused_names_it():
    """README: "An error a `--set` caused names it". A --set version was blamed on the recipe's first
    line, and a key of the file that a --set of another key made wrong on its line alone."""
    with pytest.raises(UserError) as e:
        parse_recipe(GOOD, "r.yaml", ["version=2"])
    assert str(e.value) == "r.yaml (--set version=2): recipe version 2 is not supported (only 1)"
    text = PER_ROLE + "      ratios: {attention: 0.3, mlp: 0.5}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.0.svd.allocation=uniform"])
    assert str(e.value).startswith("r.yaml:6 (with --set passes.0.svd.allocation=uniform): svd.ratios is only "
                                   "read by allocation: per_role")
    with pytest.raises(UserError) as e:  # the --set's own key: named as the --set alone
        parse_recipe(text, "r.yaml", ["passes.0.svd.ratios.mlp=2"])
    assert str(e.value).startswith("r.yaml (--set passes.0.svd.ratios.mlp=2): svd.ratios.mlp must be")


@pytest.mark.parametrize("text, sets, said", [
    (SVD.replace("0.5", "5"), ["passes.0.svd.multiple=8"], "r.yaml:5: svd.ratio must be in (0, 1], got 5.0"),
    (PER_ROLE + "      ratios: {attention: 0.3}\n",
     ["passes.0.svd.multiple=8", "passes.0.svd.allocation=uniform"],
     "r.yaml:6 (with --set passes.0.svd.allocation=uniform): svd.ratios is only read by allocation: per_role"),
    (SVD + "      compensate: true\n      fisher: all\n", ["passes.0.svd.method=svd", "passes.0.svd.multiple=8"],
     "r.yaml:6 (with --set passes.0.svd.method=svd): svd.compensate: true needs method: whitened"),
    (GOOD.replace("timesteps: 2", "timesteps: 0"), ["calibration.seed=3"],
     "r.yaml:6: calibration.timesteps must be at least 1, not 0"),
    (GOOD.replace("lr: 0.001", "lr: -1"), ["passes.1.distill.steps=5"], "r.yaml:11: distill: lr must be > 0"),
    (GOOD.replace("lr: 0.001", "mask_massive: 2"), ["passes.1.distill.lambda_feat=0", "passes.1.distill.steps=5"],
     "r.yaml:11 (with --set passes.1.distill.lambda_feat=0): distill: mask_massive masks the feature loss"),
    (GOOD.replace("lr: 0.001", "latents_dir: d"), ["passes.1.distill.data=teacher_samples",
                                                   "passes.1.distill.lr=0.01"],
     "r.yaml:11 (with --set passes.1.distill.data=teacher_samples): distill: latents_dir is read only"),
    (SVD.replace("svd:\n      ratio: 0.5", "remove_blocks:\n      count: 1\n      criterion: learned\n      learn_rank: 4"),
     ["passes.0.remove_blocks.learn_lr=0", "passes.0.remove_blocks.learn_steps=3"],
     "r.yaml:7 (with --set passes.0.remove_blocks.learn_lr=0): remove_blocks: learn_rank shapes the weight update")])
def test_an_error_names_only_the_sets_of_the_keys_its_check_read(text, sets, said):
    """Every --set of the pass was named: the file's ratio: 5 with --set passes.0.svd.multiple=8 said
    'r.yaml:5 (with --set passes.0.svd.multiple=8): svd.ratio must be ...', blaming an unrelated --set."""
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", sets)
    assert str(e.value).startswith(said), str(e.value)


def test_a_dumped_recipe_marks_the_keys_the_defaults_filled_in_and_reads_them_back():
    """An output's recipe.yaml writes every key: '# default' ends the line of each the recipe left out,
    under a first line saying so; read back, those are not written keys (the config's `_given`), the
    resolved recipe (what --resume compares) is the same, and a dump of it is the same file."""
    text = ("model: pixart\nteacher: toy:pixart\nstream: false\ncalibration: {seed: 3}\n"
            "passes:\n  - svd: {ratio: 0.5, targets: [attention]}\n  - importance\n")
    recipe = parse_recipe(text, "r.yaml")
    dumped = dump_recipe(recipe)
    lines = dumped.splitlines()
    assert lines[0] == MARKS_HEADER
    for line in ("version: 1  # default", "stream: false", "device: auto  # default", "  seed: 3",
                 "  timesteps: 8  # default", "    ratio: 0.5", "    targets:", "    center:  # default",
                 "    ranks: {}  # default", "    buckets: 3  # default", "  dtype: float32  # default"):
        assert line in lines, line
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert again.raw == recipe.raw and dump_recipe(again) == dumped
    svd = again.passes[0].config
    assert svd._given == {"ratio", "targets"} and "energy" in svd._filled
    assert again.calibration._given == {"seed"} and again.passes[1].config._given == set()
    assert yaml.safe_load(dumped) == recipe.raw  # a plain YAML reader sees no marks


def test_a_saved_recipes_calibration_keys_marked_default_are_not_given():
    """calibration.num_prompts filled in by its default (marked) is not the recipe's: a pipeline source
    of an edited saved recipe reads all its prompts, as the recipe that left it out did."""
    saved = parse_recipe(dump_recipe(parse_recipe(GOOD.replace("  num_prompts: 4\n", ""), "r.yaml")), "o.yaml")
    assert not saved.calibration.given("num_prompts") and saved.calibration.given("timesteps")
    assert parse_recipe(dump_recipe(parse_recipe(GOOD, "r.yaml")), "o.yaml").calibration.given("num_prompts")


def test_the_prompts_a_dump_inlines_are_not_marked_default(tmp_path):
    """The pipeline source's prompts a dump writes inline are the dump's, not defaults; num_prompts
    stays as the recipe had it (left out: marked, and read back not given: all the prompts, as run)
    and prompt_file: null is marked (tests/test_recipe_dump_resume.py)."""
    from compress.calib_pipeline import read_prompts

    (tmp_path / "p.txt").write_text("a red fox\na blue car\n")
    text = GOOD.replace("  num_prompts: 4\n", "  prompt_file: p.txt\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    dumped = dump_recipe(recipe, read_prompts(recipe.calibration, tmp_path))
    assert "  num_prompts: 10  # default\n" in dumped and "  prompt_file: null  # default\n" in dumped
    assert "  - a blue car\n" in dumped
    assert not parse_recipe(dumped, "o.yaml").calibration.given("num_prompts")


# an output's recipe.yaml saved before the '# default' marks: no header, every svd key written
OLD_SAVED = """\
version: 1
model: pixart
teacher: toy:pixart
calibration:
  num_prompts: 4
  timesteps: 4
passes:
- svd:
    targets:
    - modulation
    ignore: []
    method: whitened
    alpha: 0.5
    allocation: uniform
    ratio: 0.5
    ratios: null
    energy: 0.99
    sensitivity: null
    sensitivity_batches: 2
    trust_region: 2.0
    multiple: 16
    ranks:
      modulation: 8
    center:
    - modulation
    progress: true
"""


def _old_style(dumped: str) -> str:
    """A dumped recipe as an output saved before the marks wrote it: no header, no '# default'."""
    return re.sub(r"  # default$", "", dumped.replace(MARKS_HEADER + "\n", ""), flags=re.M)


def test_the_output_of_a_recipe_saved_before_the_marks_loads_again():
    """Rerunning an older output's recipe.yaml wrote it back under the marks' header without a mark:
    every key counted as written, and its energy: 0.99 under allocation: uniform was refused ('svd.energy
    is only read by allocation: energy') by plan, eval and run of the new output. Its svd pass, judged
    by its values, is dumped with each key at its default marked, so read back it is judged alike."""
    dumped = dump_recipe(parse_recipe(OLD_SAVED, "old/recipe.yaml"))
    lines = dumped.splitlines()
    assert lines[0] == MARKS_HEADER
    for line in ("    energy: 0.99  # default", "    ratio: 0.5  # default", "    trust_region: 2.0  # default",
                 "    allocation: uniform  # default", "  num_prompts: 4", "  seed: 0  # default"):
        assert line in lines, line
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert dump_recipe(again) == dumped and again.raw == parse_recipe(OLD_SAVED, "old/recipe.yaml").raw


@pytest.mark.parametrize("opening", ["\n", "---\n", "\n\n# edited\n---\n", "%YAML 1.2\n---\n"])
def test_a_saved_recipe_with_lines_above_its_header_is_read_for_marks(opening):
    """A blank first line or a '---' above the header made the file read as one without marks: its
    '# default' keys counted as written (num_prompts: a pipeline source read only that many prompts)."""
    dumped = dump_recipe(parse_recipe(GOOD.replace("  num_prompts: 4\n", ""), "r.yaml"))
    saved = parse_recipe(opening + dumped, "o.yaml")
    assert not saved.calibration.given("num_prompts") and saved.calibration.given("timesteps")
    assert dump_recipe(saved) == dumped


def test_the_header_below_a_key_is_no_header():
    text = "model: pixart\n" + MARKS_HEADER + "\nteacher: toy:pixart\ncalibration:\n  num_prompts: 4  # default\n" \
           "passes: [importance]\n"
    assert parse_recipe(text, "r.yaml").calibration.given("num_prompts")


SHIPPED = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipes_output_loads_again_saved_either_way(path):
    """A shipped recipe's output recipe.yaml loads; so does it written as before the marks (no header
    or marks), and the output of a rerun of that: each dump reads back to the same resolved recipe."""
    recipe = load_recipe(path)
    dumped = dump_recipe(recipe)
    for text in (dumped, _old_style(dumped), "\n" + dumped, dumped.split("\n", 1)[1]):
        again = parse_recipe(text, str(path))
        rerun = parse_recipe(dump_recipe(again), str(path))
        assert again.raw == rerun.raw == recipe.raw
