"""compress.recipe_set: where a --set goes in a recipe's tree, and what it says where it cannot go."""

from pathlib import Path

import pytest

from compress.errors import UserError
from compress.recipe import load_recipe, parse_recipe

RECIPE = """\
model: pixart
teacher: toy:pixart
passes:
  - svd: {targets: [attention, mlp], ignore: []}
  - svd: {targets: [modulation]}
  - distill: {steps: 2}
"""


@pytest.mark.parametrize("override, words", [
    ("passes.9.svd.ratio=0.4", "'9' is not an index of that list (passes has 3 items: 0–2)"),
    ("passes.x.svd.ratio=0.4", "'x' is not an index of that list (passes has 3 items: 0–2)"),
    ("passes.0.svd.targets.2=mlp", "'2' is not an index of that list (passes.0.svd.targets has 2 items: 0–1)"),
    ("passes.1.svd.targets.1=mlp", "'1' is not an index of that list (passes.1.svd.targets has 1 item: 0)"),
    ("passes.0.svd.ignore.0=mlp", "'0' is not an index of that list (passes.0.svd.ignore is empty)"),
])
def test_an_index_past_a_list_says_the_indices_it_has(override, words):
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == f"r.yaml (--set {override}): {words}"




@pytest.mark.parametrize("override, words", [
    ("passes.9.svd.ratio=null", "'9' is not an index of that list (passes has 3 items: 0–2)"),
    ("svd.ratio=null", "a pass's options are set by its index in the passes list: --set passes.0.svd.ratio=null "
                       "(or passes.1.svd.ratio)"),
    ("passes.2.svd.ratio=null", "passes.2 is a distill pass (svd passes: passes.0, passes.1)"),
])
def test_a_path_error_of_a_set_null_names_the_recipe_and_the_whole_set(override, words):
    """Path errors said '--set passes.5.svd.ratio: ...' (no recipe, no =VALUE), value errors
    's.yaml (--set passes.0.svd.rato=0.4): ...': one format, the latter, for a null dropped too."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == f"r.yaml (--set {override}): {words}"


@pytest.mark.parametrize("override", ["passes.01.svd.ratio=0.4", "passes.00.svd.ratio=null",
                                      "passes.0.svd.targets.01=mlp"])
def test_an_index_with_a_leading_zero_is_refused(override):
    """`--set passes.01.svd.ratio=0.4` was read as passes.1 (so said 'passes.1 is an svd pass' of
    passes.01, or set passes.1): one spelling per item; a slip for 0 or 10 is not taken for 1."""
    index = next(p for p in override.partition("=")[0].split(".") if p.startswith("0") and len(p) > 1)
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == (f"r.yaml (--set {override}): '{index}' is not an index (an index is written "
                            f"without a leading zero: {int(index)})")


@pytest.mark.parametrize("sets, what", [
    (["passes.0.svd.ratio=0.3", "passes.0.svd.ratio=0.4"], "this key too"),
    (["calibration.seed=1", "calibration=null"], "a key below this one"),
    (["calibration.seed=1", "calibration={timesteps: 2}"], "a key below this one"),
    (["passes.0.svd.ratio=0.3", "passes.0.svd=null"], "a key below this one"),
    (["calibration={seed: 1}", "calibration.seed=2"], "this key in its value"),
    (["passes.0.svd.ranks.re:a.b=4", "passes.0.svd.ranks.re:a.b=null"], "this key too"),
    (["passes.0.svd.targets=[mlp, attention]", "passes.0.svd.targets.1=modulation"], "this key in its value"),
])
def test_a_key_set_twice_is_refused_naming_both_sets(sets, what):
    """`--set passes.2.svd.ratio=0.3 --set passes.2.svd.ratio=0.4` kept the last, and `--set
    calibration.seed=1 --set calibration=null` dropped the first, silently."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", sets)
    assert str(e.value) == (f"r.yaml (--set {sets[1]}): --set {sets[0]} set {what}, and only the last one "
                            "would hold: give each key once")


def test_sets_that_add_to_each_other_still_go_through():
    r = parse_recipe(RECIPE, "r.yaml", ["calibration={seed: 1}", "calibration.timesteps=4",
                                        "passes.0.svd.ranks.re:a=4", "passes.0.svd.ranks.re:a.b=8",
                                        "passes.0.svd.ratio=0.3", "passes.1.svd.ratio=0.4"])
    assert (r.calibration.seed, r.calibration.timesteps) == (1, 4)
    assert r.passes[0].config.ranks == {"re:a.b": 8, "re:a": 4}
    assert [p.config.ratio for p in r.passes[:2]] == [0.3, 0.4]

@pytest.mark.parametrize("override, there", [
    ("calibration.prompts.0=null", "calibration.prompts"),
    ("calibration.prompts.0=a cat", "calibration.prompts"),
    ("passes.2.distill.prompts.1=x", "passes.2.distill.prompts"),
])
def test_an_index_into_a_list_the_recipe_lacks_asks_for_the_whole_list(override, there):
    """The recipe has no calibration.prompts: `--set calibration.prompts.0=...` made a mapping keyed
    '0' and the recipe's check then said 'must be a list of a string, not a mapping'."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    index = override.partition("=")[0].rpartition(".")[2]
    assert str(e.value) == (f"r.yaml (--set {override}): the recipe has no {there} to take item "
                            f"{index} of; give the whole list, e.g. --set '{there}=[...]'")


@pytest.mark.parametrize("override, key, meant", [
    ("pases.1.svd.ratio=0.3", "pases", "; did you mean 'passes'?"),
    ("pases.1.svd.ratio=null", "pases", "; did you mean 'passes'?"),
    ("calibratoin.prompts.0=a cat", "calibratoin", "; did you mean 'calibration'?"),
    ("zzz.0=1", "zzz", ""),
])
def test_an_index_below_an_unknown_top_level_key_names_the_key_meant_first(override, key, meant):
    """`--set pases.1.svd.ratio=0.3` said 'the recipe has no pases to take item 1 of; give the whole list,
    e.g. --set 'pases=[...]'', and that --set then 'unknown key 'pases'; did you mean 'passes'?'. The
    unknown key is said first, as the recipe's check says it; a pass's name keeps its own words."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == f"r.yaml (--set {override}): unknown key '{key}'{meant}"
    with pytest.raises(UserError, match=r"^r\.yaml \(--set svd.ratio=0\.3\): a pass's options are set by its index"):
        parse_recipe(RECIPE, "r.yaml", ["svd.ratio=0.3"])

ALIASED = """\
model: pixart
teacher: toy:pixart
passes:
  - svd: {targets: &t [attention], multiple: 8}
  - distill: &d {steps: 200, batch_size: 4}
  - svd: {targets: [mlp], ignore: *t, multiple: 8}
  - distill: *d
"""


def test_a_set_into_an_aliased_node_changes_that_place_alone():
    """`- distill: *d` shares its node with `&d`: a --set into one pass wrote into both (steps 10 on
    each distill pass, silently). The --set's path is copied; the file's lines stay its errors' lines."""
    r = parse_recipe(ALIASED, "r.yaml", ["passes.3.distill.steps=10", "passes.0.svd.targets.0=cross_attention"])
    assert [p.config.steps for p in r.passes[1::2]] == [200, 10]
    assert r.passes[0].config.targets == ["cross_attention"] and r.passes[2].config.ignore == ["attention"]
    assert r.passes[3].keys["batch_size"].where() == "r.yaml:5"  # the anchor's line, copied along
    r = parse_recipe(ALIASED, "r.yaml", ["passes.2.svd.ignore.0=mlp"])
    assert r.passes[0].config.targets == ["attention"] and r.passes[2].config.ignore == ["mlp"]
    assert parse_recipe(ALIASED, "r.yaml").passes[3].config.steps == 200


def test_an_option_set_without_its_pass_name_points_at_the_passes_that_have_it():
    """`--set passes.0.ratio=0.4` on a remove_blocks pass pointed at passes.0.remove_blocks.ratio,
    itself an unknown key: the passes that have a `ratio` are named instead."""
    text = RECIPE.replace("passes:\n", "passes:\n  - remove_blocks: {count: 1}\n")
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.0.ratio=0.4"])
    assert str(e.value) == ("r.yaml (--set passes.0.ratio=0.4): passes.0 is a remove_blocks pass; it has no option 'ratio' "
                            "(set passes.1.svd.ratio or passes.2.svd.ratio)")
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.0.bogus=1"])
    assert str(e.value) == "r.yaml (--set passes.0.bogus=1): passes.0 is a remove_blocks pass; no pass of the recipe has an option 'bogus'"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", ["passes.1.ratio=0.4"])
    assert str(e.value) == "r.yaml (--set passes.1.ratio=0.4): passes.1 is an svd pass; its options are set as passes.1.svd.ratio"


TOY_FLUX = Path(__file__).parents[1] / "recipes" / "toy-flux.yaml"
PER_ROLE = ["passes.2.svd.allocation=per_role", "passes.2.svd.ratios.attention=0.5", "passes.2.svd.ratios.mlp=0.3"]


def test_a_set_null_drops_the_files_key_so_the_shipped_recipe_can_go_per_role():
    """No --set removed a key of the file: the shipped toy-flux's `ratio: 0.6` refused allocation
    per_role ('remove it'), and `ratio=null` was 'must be a number, not None'. A null for a key that
    takes none drops the key (its default holds); the refusal says so."""
    from compress.plan import make_plan

    with pytest.raises(UserError) as e:
        load_recipe(TOY_FLUX, PER_ROLE)
    assert str(e.value).endswith("remove it or set allocation: uniform or global "
                                 "(--set passes.2.svd.ratio=null removes it)")
    recipe = load_recipe(TOY_FLUX, [*PER_ROLE, "passes.2.svd.ratio=null"])
    svd = recipe.passes[2].config
    assert (svd.allocation, svd.ratio, svd.ratios) == ("per_role", 0.5, {"attention": 0.5, "mlp": 0.3})
    assert "ratio" not in recipe.passes[2].keys and "ratio" not in svd._set_keys
    plan = make_plan(recipe)
    assert plan["decided_later"] == [] and plan["params_after_planned"] < plan["params_before"]
    default = make_plan(load_recipe(TOY_FLUX, ["passes.2.svd.ratio=null"]))  # global at the default 0.5
    assert default["decided_later"][0]["budget_params"] < make_plan(load_recipe(TOY_FLUX))["decided_later"][0]["budget_params"]


@pytest.mark.parametrize("override, read, value", [
    ("passes.0.svd.multiple=null", lambda r: r.passes[0].config.multiple, 16),  # an int: dropped, default
    ("passes.0.svd.multiple=~", lambda r: r.passes[0].config.multiple, 16),
    ("passes.0.svd.trust_region=null", lambda r: r.passes[0].config.trust_region, None),  # null: any
    ("passes.1.svd.ranks.modulation=null", lambda r: r.passes[1].config.ranks, {"re:.*": 4}),  # the pattern
    ("passes.2.remove_blocks.count=null", None, None),
    ("calibration.seed=null", lambda r: (r.calibration.seed, r.calibration.given("seed")), (0, False)),
    ("passes.2.distill.steps=null", lambda r: r.passes[2].config.steps, 500),
    ("passes.2.distill.steps=null", lambda r: r.passes[2].config.batch_size, 4),  # the rest stays
])
def test_a_set_null_drops_a_key_that_takes_no_null_and_sets_one_that_does(override, read, value):
    text = ("model: pixart\nteacher: toy:pixart\ncalibration: {seed: 3}\npasses:\n"
            "  - svd: {targets: [mlp], allocation: global, multiple: 8, trust_region: 3.0}\n"
            "  - svd: {targets: [modulation], ranks: {modulation: 8, 're:.*': 4}}\n"
            "  - distill: {steps: 2, batch_size: 4}\n")
    if read is None:  # remove_blocks' count takes null: set, as before
        text = text.replace("  - distill", "  - remove_blocks: {count: 1}\n  - distill")
        assert parse_recipe(text, "r.yaml", [override]).passes[2].config.count is None
        return
    assert read(parse_recipe(text, "r.yaml", [override])) == value


def test_a_set_null_refuses_what_it_did_where_it_drops_nothing_it_knows():
    """An unknown key, a list item, a quoted 'null' are placed as before: the recipe's checks name them;
    a key the recipe lacks leaves it as it is; a dropped key of an aliased node goes from that place alone."""
    with pytest.raises(UserError, match=r"unknown key 'multple' in passes\[0\]\.svd; did you mean 'multiple'"):
        parse_recipe(RECIPE, "r.yaml", ["passes.0.svd.multple=null"])
    with pytest.raises(UserError, match=r"targets\.0=null\): svd\.targets: patterns must be strings .*, got None"):
        parse_recipe(RECIPE, "r.yaml", ["passes.0.svd.targets.0=null"])
    with pytest.raises(UserError) as e:  # was kept, silently: a list's item is never dropped
        parse_recipe(RECIPE, "r.yaml", ["passes.2=null"])
    assert str(e.value) == ("r.yaml (--set passes.2=null): passes[2] is null: a pass is a name or a one-key mapping "
                            "like '- svd: {ratio: 0.5}' (to leave a pass out, delete its item from the recipe)")
    with pytest.raises(UserError, match=r"distill\.steps must be an integer, not 'null'"):
        parse_recipe(RECIPE, "r.yaml", ["passes.2.distill.steps='null'"])
    assert parse_recipe(RECIPE, "r.yaml", ["passes.1.svd.ratio=null"]) == parse_recipe(RECIPE, "r.yaml")
    r = parse_recipe(ALIASED, "r.yaml", ["passes.1.distill.batch_size=null"])
    assert [p.config.batch_size for p in r.passes[1::2]] == [32, 4]


@pytest.mark.parametrize("override, words", [
    ("teacher=null", "teacher is required, so null cannot remove it: give the teacher to compress"),
    ("model=null", "model is required, so null cannot remove it: give pixart or flux"),
])
def test_a_set_null_on_a_required_key_names_the_set(override, words):
    """A required key has no default to fall back to: it was dropped, and the error said the recipe
    lacks it at the file's first line (version: 1), naming no --set. Null is placed and refused, saying
    that a required key is not removed by null (it said only "model must be one of ..., not null")."""
    with pytest.raises(UserError) as e:
        load_recipe(TOY_FLUX, [override])
    assert str(e.value) == f"{TOY_FLUX} (--set {override}): {words}"


DROP = ", or {key}=null to drop the key so its default holds"


@pytest.mark.parametrize("override, hint", [
    ("calibration.seed=", DROP),  # was seed 0, the default ('seed: 0  # default' in the output's recipe.yaml)
    ("passes.0.svd.ratio=", DROP),
    ("export.dtype=", DROP),
    ("passes.0.svd.targets=", DROP),
    ("passes.0.svd.multiple=  ", DROP),
    ("passes.0.svd.multiple=# none", DROP),
    ("passes.0.svd.trust_region=", ""),  # takes null: null is a value, not its default
    ("model=", ""),  # required: null is refused
    ("passes.1.svd.ranks.modulation=", DROP),
])
def test_a_set_with_nothing_after_the_equals_sign_is_refused(override, hint):
    """`--set calibration.seed=` (as from an unset shell variable) was read as null, which drops a key
    that takes no null: plan and run went on at the default, silently. It is refused in one line, which
    names KEY=null where null drops the key (and not where null is a value, or refused)."""
    key = override.partition("=")[0]
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE, "r.yaml", [override])
    assert str(e.value) == (f"r.yaml (--set {override}): no value after '='; write {key}=VALUE"
                            + hint.format(key=key))


def test_a_pass_item_set_to_null_is_refused_as_null(tmp_path):
    """`--set passes.1=null` said "unknown pass 'null'" (docs/COMMANDS.md says a list's item given null is
    refused; the words now say it is null and how to leave a pass out)."""
    text = "model: pixart\npasses:\n  - svd: {targets: [mlp]}\n  - svd\n"
    with pytest.raises(UserError, match=r"\(--set passes\.1=null\): passes\[1\] is null: a pass is a name"):
        parse_recipe(text, str(tmp_path / "r.yaml"), ["passes.1=null"])
    with pytest.raises(UserError, match=r"r\.yaml:4: passes\[1\] is null"):
        parse_recipe("model: pixart\npasses:\n  - svd\n  -\n", str(tmp_path / "r.yaml"))


def test_the_refusal_of_a_key_that_takes_null_offers_no_set_to_remove_it():
    """`trust_region: 3` under allocation energy is refused ('remove it'); `--set ...trust_region=null`
    writes null there (trust_region takes null: no bound), which is refused as well, so the refusal
    must not offer it as the way to remove the key (it did)."""
    text = "model: pixart\nteacher: x\npasses:\n  - svd:\n      allocation: energy\n      trust_region: 3\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    assert str(e.value).endswith("remove it or set allocation: global"), str(e.value)
    with pytest.raises(UserError) as e:  # what the old hint offered: still refused
        parse_recipe(text, "r.yaml", ["passes.0.svd.trust_region=null"])
    assert "svd.trust_region is only read by allocation: global" in str(e.value)


def test_a_required_key_written_null_in_the_file_names_its_line(tmp_path):
    """`teacher: ~` in the file: the same words, at its line."""
    with pytest.raises(UserError) as e:
        parse_recipe("model: pixart\nteacher: ~\npasses: [svd]\n", "r.yaml")
    assert str(e.value) == "r.yaml:2: teacher is required, so null cannot remove it: give the teacher to compress"


NAMED = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {count: {blocks: 1}}\n"
         "  - svd: {targets: [mlp], ratio: 0.5}\n  - svd: {targets: [modulation], ranks: {modulation: 8, 're:.*': 4}}\n"
         "  - svd: {targets: [attention], ranks: {}}\n")


@pytest.mark.parametrize("override, words", [
    ("passes.2.svd.ranks.modulaton=null", "passes.2.svd.ranks has no key 'modulaton' to remove (its keys: "
                                          "modulation, re:.*; did you mean 'modulation'?)"),
    ("passes.2.svd.ranks.modulation:8=null", "passes.2.svd.ranks has no key 'modulation:8' to remove (its keys: "
                                             "modulation, re:.*; did you mean 'modulation'?)"),
    ("passes.2.svd.ranks.adaln_single.linear=~", "passes.2.svd.ranks has no key 'adaln_single.linear' to remove "
                                                 "(its keys: modulation, re:.*)"),
    ("passes.3.svd.ranks.modulation=null", "passes.3.svd.ranks has no key 'modulation' to remove (it is empty)"),
    ("passes.1.svd.ranks.modulation=null", "passes.1.svd has no ranks, so no key 'modulation' to remove"),
    ("passes.0.remove_blocks.count.blcoks=null", "passes.0.remove_blocks.count has no key 'blcoks' to remove "
                                                 "(its keys: blocks; did you mean 'blocks'?)"),
    ("passes.0.remove_blocks.fraction.blocks=null", "passes.0.remove_blocks has no fraction, so no key 'blocks' "
                                                    "to remove"),
])
def test_a_set_null_of_a_name_the_recipe_lacks_names_the_keys_it_has(override, words):
    """`--set passes.2.svd.ranks.modulaton=null` (misspelt) removed nothing, silently: plan and run went on
    with the rank the user meant to remove. A ranks pattern (a count group) has no default to hold, so
    one the recipe lacks is refused, naming the keys there; an option the recipe lacks still is not."""
    with pytest.raises(UserError) as e:
        parse_recipe(NAMED, "r.yaml", [override])
    assert str(e.value) == f"r.yaml (--set {override}): {words}"


def test_a_set_null_of_a_name_the_recipe_has_or_an_option_it_lacks_still_goes_through():
    r = parse_recipe(NAMED, "r.yaml", ["passes.2.svd.ranks.modulation=null", "passes.2.svd.energy=null",
                                       "passes.0.remove_blocks.count.blocks=null", "calibration.seed=null"])
    assert r.passes[2].config.ranks == {"re:.*": 4} and r.passes[0].config.count == {}
    assert parse_recipe(NAMED, "r.yaml", ["passes.1.svd.multiple=null"]) == parse_recipe(NAMED, "r.yaml")
    with pytest.raises(UserError) as e:  # a scalar count has no groups
        parse_recipe(NAMED.replace("{blocks: 1}", "1"), "r.yaml", ["passes.0.remove_blocks.count.blocks=null"])
    assert str(e.value) == ("r.yaml (--set passes.0.remove_blocks.count.blocks=null): passes.0.remove_blocks.count is "
                            "not a mapping, so it has no key 'blocks' to remove")


def test_a_name_a_set_null_took_out_stays_in_the_keys_at_its_set():
    """`--set passes.0.remove_blocks.count.blocks=null` left no trace: what was said of count (its
    group gone) pointed at the file's line, which holds count: {blocks: 1}, naming no --set; and a dump
    of the recipe did not list it among the --sets applied. A --set giving the name again after it is
    refused (test_a_key_set_twice_is_refused_naming_both_sets)."""
    from compress.recipe_dump import set_overrides

    gone = ["passes.0.remove_blocks.count.blocks=null", "passes.2.svd.ranks.modulation=null"]
    r = parse_recipe(NAMED, "r.yaml", gone)
    assert r.passes[0].keys["count.blocks"].where() == f"r.yaml (--set {gone[0]})"
    assert r.passes[2].keys["ranks.modulation"].where() == f"r.yaml (--set {gone[1]})"
    assert set_overrides(r) == [f"--set {g}" for g in gone]
    with pytest.raises(UserError, match=r"--set passes\.0\.remove_blocks\.count\.blocks=null set this key too"):
        parse_recipe(NAMED, "r.yaml", [gone[0], "passes.0.remove_blocks.count.blocks=2"])


CALIBRATED = """\
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 5, seed: 0}
passes:
  - svd: {targets: [attention, mlp], ratio: 0.3}
  - svd:
"""


@pytest.mark.parametrize("recipe, overrides", [
    (CALIBRATED, ["calibration=null", "calibration.seed=1"]),
    (CALIBRATED.replace("{num_prompts: 5, seed: 0}", ""), ["calibration.seed=1"]),
    (CALIBRATED.replace("{num_prompts: 5, seed: 0}", "~"), ["calibration.seed=1"]),
])
def test_a_set_below_a_key_that_is_null_sets_that_key_of_its_default_section(recipe, overrides):
    """`--set calibration=null --set calibration.seed=1` said "'calibration' is not a mapping" (and so
    did a --set into the file's `calibration:`, null): now the later --set sets seed in calibration's
    defaults, as it does where the recipe has no calibration."""
    r = parse_recipe(recipe, "r.yaml", overrides)
    assert (r.calibration.seed, r.calibration.num_prompts) == (1, 10)
    assert r.keys["calibration.seed"].where() == "r.yaml (--set calibration.seed=1)"


def test_a_set_into_a_pass_whose_options_are_null_sets_that_option():
    r = parse_recipe(CALIBRATED, "r.yaml", ["passes.1.svd.ratio=0.4"])
    assert r.passes[1].config.ratio == 0.4 and r.passes[1].config.targets == ["attention", "mlp"]


def test_an_item_of_a_null_list_says_it_is_null():
    with pytest.raises(UserError) as e:
        parse_recipe(CALIBRATED.replace("targets: [attention, mlp]", "targets: null"), "r.yaml",
                     ["passes.0.svd.targets.0=mlp"])
    assert str(e.value) == ("r.yaml (--set passes.0.svd.targets.0=mlp): passes.0.svd.targets is null, so it has no "
                            "item 0; give the whole list, e.g. --set 'passes.0.svd.targets=[...]'")


def test_a_passs_options_set_to_null_are_refused_in_one_line():
    """`--set passes.0.svd=null` planned an svd pass of default options, its targets and ratio silently
    gone: refused, saying how to drop one option, all ({}), or the pass. A pass of no options may."""
    with pytest.raises(UserError) as e:
        parse_recipe(CALIBRATED, "r.yaml", ["passes.0.svd=null"])
    assert str(e.value) == ("r.yaml (--set passes.0.svd=null): a pass's options are not set to null, which would put "
                            "all of them (targets, ratio) back to their defaults: drop one with --set "
                            "passes.0.svd.KEY=null, all with --set 'passes.0.svd={}'; to leave the pass out, delete "
                            "its item from the recipe")
    r = parse_recipe(CALIBRATED, "r.yaml", ["passes.0.svd={}", "passes.0.svd.ratio=0.4"])
    assert r.passes[0].config.ratio == 0.4 and r.passes[0].config.targets == ["attention", "mlp"]
    assert parse_recipe(CALIBRATED, "r.yaml", ["passes.1.svd=~"]) == parse_recipe(CALIBRATED, "r.yaml")


@pytest.mark.parametrize("overrides, words", [
    (["calibration=5", "calibration.seed=1"], "(--set calibration.seed=1): 'calibration' is not a mapping "
                                              "(--set calibration=5 made it 5)"),
    (["calibration={seed: 5}", "calibration.seed.x=1"], "(--set calibration.seed.x=1): 'calibration.seed' is not a "
                                                        "mapping (--set calibration={seed: 5} made it 5)"),
])
def test_a_set_below_a_value_an_earlier_set_made_no_mapping_names_that_set(overrides, words):
    """`--set calibration=5 --set calibration.seed=1` said "'calibration' is not a mapping", naming the
    later --set alone (the file's calibration is a mapping): now it names the earlier one that made it 5."""
    with pytest.raises(UserError) as e:
        parse_recipe(CALIBRATED, "r.yaml", overrides)
    assert str(e.value) == f"r.yaml {words}"


def test_a_set_below_a_value_the_file_made_no_mapping_names_no_set():
    with pytest.raises(UserError) as e:
        parse_recipe(CALIBRATED.replace("{num_prompts: 5, seed: 0}", "5"), "r.yaml", ["calibration.seed=1"])
    assert str(e.value) == "r.yaml (--set calibration.seed=1): 'calibration' is not a mapping"
