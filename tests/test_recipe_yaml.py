"""compress/recipe_yaml.py: how recipes and --set values read YAML 1.2 (booleans, numbers, tags, merge
keys), in the file and by --set."""

import re

import pytest
import yaml

from compress.errors import UserError
from compress.recipe import load_recipe, parse_recipe
from compress.recipe_dump import dump_recipe
from compress.recipe_yaml import RecipeLoader
from tests.recipe_helpers import refusal
from tests.test_recipe import GOOD, _replace

FLUX = """\
model: flux
teacher: toy:flux
calibration: {num_prompts: 2, timesteps: 2}
passes:
  - remove_blocks: COUNT
"""


@pytest.mark.parametrize("written, key, meant", [
    ("{count: {double:1}}", "double:1", "double: 1"),
    ("{count:1}", "count:1", "count: 1"),
    ("{count: {double: 1, single:2}}", "single:2", "single: 2"),
])
def test_a_key_without_a_space_after_its_colon_is_named_with_the_spelling_meant(written, key, meant):
    """count: {double:1} read as the key 'double:1' with the value null: 'count.double:1 must be an
    integer, not null' (or 'unknown key count:1') said nothing of the missing space (a tester's finding)."""
    said = f"no space after ':' in '{key}', which YAML reads as the key '{key}' without a value; write '{meant}'"
    assert refusal(FLUX.replace("COUNT", written)) == f"r.yaml:5: malformed YAML ({said})"
    set_error = refusal(FLUX.replace("COUNT", "{count: 1}"), [f"passes.0.remove_blocks={written}"])
    assert set_error.startswith(f"r.yaml (--set passes.0.remove_blocks={written}): ") and said in set_error


def test_a_text_where_a_mapping_was_wanted_hints_the_space_it_lacks():
    """count: single:1 (or a block mapping's line without its space) is a string: the union's error
    says how to write the mapping meant; a quoted one was meant as text, and gets no hint."""
    error = refusal(FLUX.replace("COUNT", "{count: 1}"), ["passes.0.remove_blocks.count=single:1"])
    assert error.endswith("not 'single:1' (a mapping needs a space after ':': write {single: 1}); count is over "
                          "all blocks or per block group: count: 1, count: {blocks: 1} (PixArt) or "
                          "count: {double: 1, single: 1} (Flux)")
    block = refusal(FLUX.replace("COUNT", "\n      count:\n        double:1"))
    assert block.startswith("r.yaml:7: ") and "not 'double:1' (a mapping needs a space after ':': write {double: 1})" in block
    quoted = refusal(FLUX.replace("COUNT", "{count: 1}"), ["passes.0.remove_blocks.count='single:1'"])
    assert "not 'single:1'; count is over" in quoted


def test_keys_with_a_colon_are_still_read_where_they_are_quoted_or_hold_a_value():
    assert yaml.load("{'a:1': null, b:2: 3, c: d:e, f: http://x}", Loader=RecipeLoader) == {
        "a:1": None, "b:2": 3, "c": "d:e", "f": "http://x"}
    assert yaml.load("teacher: toy:flux", Loader=RecipeLoader) == {"teacher": "toy:flux"}


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
    ("seed", "!!python/object:os.system x", "calibration.seed: the YAML tag !!python/object:os.system is not read"),
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
