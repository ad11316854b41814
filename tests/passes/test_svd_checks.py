"""compress.passes.svd_checks: the svd pass's recipe checks, before any compute and when blocks stream."""

import re

import pytest
import yaml

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_checks import check_values
from tests.conftest import tiny_flux, tiny_pixart
from tests.passes.svd_helpers import context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cfg, message", [
    ({"targets": ["re:no_such_layer"]}, "re:no_such_layer"),
    ({"targets": ["attention"], "ignore": ["bogus"]}, "bogus"),
    ({"targets": ["cross_attention"]}, "cross_attention"),  # Flux has none
    ({"ranks": {"transformer_blocks.0.attn.to_q": 99}}, "outside 1..16"),
    ({"ratio": 1.5}, "ratio"),
    ({"ratio": 0.0}, "ratio"),
    ({"method": "qr"}, "method"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5}}, "mlp"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5, "mlp": 0.5, "modulation": 0.3}},
     "svd.ratios: role(s) modulation match no target (targeted roles: attention, mlp)"),
    ({"allocation": "global", "ratio": 0.02, "multiple": 2}, "svd.ratio 0.02 is below what global"),
    ({"allocation": "global", "trust_region": 0.5}, "trust_region must be ≥ 1"),
    ({"compensate_batches": 0}, "compensate_batches must be an integer ≥ 1"),
    ({"compensate_search": "bisect"}, "compensate_search must be one of walk, ladder"),
    ({"compensate_toward": "student"}, "compensate_toward must be one of teacher, input"),
    ({"compensate_batches": 1.5}, "compensate_batches must be an integer ≥ 1"),
    ({"asymmetric": "yes"}, "asymmetric must be true, false or auto"),
    ({"asymmetric": True, "method": "asvd"}, "asymmetric: true needs method: whitened"),
    ({"compensate": True, "fisher": "none"}, "compensate: true needs method: whitened and the prediction's Fisher"),
    ({"compensate": True, "fisher": "block"}, "fisher: block, where it would do nothing"),
    ({"compensate": True, "method": "svd"}, "this pass has method: svd"),
    ({"asymmetric": True, "activations": "teacher"}, "activations: student"),
    ({"asymmetric_damping": 0}, "asymmetric_damping must be > 0"),
    ({"sequential": "yes"}, "sequential must be true, false or auto"),
    ({"sequential": True, "activations": "teacher"}, "sequential: true needs activations: student"),
    ({"fisher_memory_gb": 0.0}, "fisher_memory_gb must be > 0"),
    ({"center": ["re:["]}, "svd.center: bad regex 're:['"),
    ({"center": [3]}, "svd.center: patterns must be strings"),
    ({"center": ["bogus"]}, "svd.center: pattern 'bogus' matches no linear layer"),
    ({"targets": "attention"}, "svd.targets must be a list of patterns"),
    ({"ranks": {"re:(": 4}}, "svd.ranks: bad regex"),
    ({"allocation": "per_role", "ratios": {"attention": "half", "mlp": 0.5}}, "svd.ratios.attention must be a number"),
    ({"allocation": "per_role", "ratios": {"attention": True, "mlp": 0.5}}, "svd.ratios.attention must be a number"),
    ({"allocation": "per_role", "ratios": {"atention": 0.5, "mlp": 0.5}}, "unknown role 'atention'; did you mean 'attention'"),
    ({"allocation": "per_role"}, "svd.ratios (role -> kept-parameter ratio) is required"),
    ({"ratios": {"attention": 0.5}}, "svd.ratios is only read by allocation: per_role (this pass has allocation: uniform)"),
    ({"allocation": "global", "ratios": {"attention": 0.5}}, "this pass has allocation: global"),
    ({"energy": 0.5}, "svd.energy is only read by allocation: energy (this pass has allocation: uniform)"),
    ({"allocation": "energy", "energy": 1.5}, "svd.energy must be in (0, 1]"),
    ({"fisher_probes": 0}, "svd.fisher_probes must be an integer ≥ 1"),
    ({"fisher_probes": -2}, "svd.fisher_probes must be an integer ≥ 1"),
    ({"sensitivity_batches": 0}, "svd.sensitivity_batches must be an integer ≥ 1"),
    ({"modulation_grid": -1}, "svd.modulation_grid must be an integer ≥ 0"),
    ({"alpha": -0.5}, "svd.alpha (asvd's scaling exponent) must be ≥ 0"),
    ({"fisher_damping": -1e-3}, "svd.fisher_damping must be > 0"),
    ({"fisher_damping": 0.0}, "svd.fisher_damping must be > 0"),
    ({"method": "asdv"}, "did you mean 'asvd'"),
])
def test_bad_config_is_user_error(cfg, message):
    model = tiny_flux()
    with pytest.raises(UserError, match=re.escape(message)):
        SVDPass(SVDConfig(**cfg)).check(model, get_adapter(model))


@pytest.mark.parametrize("cfg, message", [
    ({"allocation": "per_role", "ratios": {"attention": 0.5, "mlp": 0.5}, "ratio": 0.1},
     "svd.ratio is only read by allocation: uniform or global (this pass has allocation: per_role)"),
    ({"allocation": "energy", "ratio": 0.1}, "svd.ratio is only read by allocation: uniform or global"),
    ({"sensitivity": True}, "svd.sensitivity is only read by allocation: global (this pass has allocation: uniform)"),
    ({"sensitivity": False, "allocation": "energy"}, "svd.sensitivity is only read by allocation: global"),
    ({"trust_region": 4.0}, "svd.trust_region is only read by allocation: global"),
    ({"trust_region": None}, "svd.trust_region is only read by allocation: global"),
    ({"sensitivity_batches": 4}, "svd.sensitivity_batches is only read by allocation: global"),
])
def test_a_key_its_allocation_does_not_read_is_refused(cfg, message):
    """ratio under per_role or energy, and global's keys under another allocation, were accepted and
    ignored (the plan as without them), as ratios and energy elsewhere are refused."""
    model = tiny_flux()
    with pytest.raises(UserError, match=re.escape(message)):
        SVDPass(SVDConfig(**cfg)).check(model, get_adapter(model))


@pytest.mark.parametrize("cfg", [
    {"allocation": "energy", "ratio": 0.5, "sensitivity_batches": 2, "trust_region": 2.0, "energy": 0.9},
    {"allocation": "global", "ratio": 0.6, "multiple": 2, "sensitivity": False, "trust_region": None, "sensitivity_batches": 3},
    {"ratio": 0.3},
])
def test_a_key_at_its_default_or_read_by_its_allocation_stays_allowed(cfg):
    model = tiny_flux()
    SVDPass(SVDConfig(**cfg)).check(model, get_adapter(model))


def _written(keys, **cfg) -> SVDConfig:
    """An SVDConfig as the recipe loader makes it: `_given` holds the keys the recipe wrote."""
    c = SVDConfig(**cfg)
    c.__dict__["_given"] = set(keys) | set(cfg)
    return c


@pytest.mark.parametrize("cfg, message", [
    ({"allocation": "energy", "ratio": 0.5}, "svd.ratio is only read by allocation: uniform or global (this pass has "
                                             "allocation: energy); remove it or set allocation: uniform or global"),
    ({"allocation": "energy", "trust_region": 2.0}, "svd.trust_region is only read by allocation: global"),
    ({"allocation": "uniform", "sensitivity_batches": 2}, "svd.sensitivity_batches is only read by allocation: global"),
    ({"allocation": "global", "energy": 0.99}, "svd.energy is only read by allocation: energy"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5, "mlp": 0.5}, "ratio": 0.5}, "svd.ratio is only read"),
])
def test_a_key_the_recipe_writes_that_its_allocation_does_not_read_is_refused_at_its_default(cfg, message):
    """allocation: energy with ratio: 0.5 written (the default) was accepted and ignored: only a value
    other than the default was refused."""
    with pytest.raises(UserError, match=re.escape(message)) as e:
        check_values(_written((), **cfg))
    assert e.value.key == next(k for k in cfg if k not in ("allocation", "ratios"))


def test_the_same_values_left_to_their_defaults_stay_allowed():
    check_values(_written((), allocation="energy"))
    check_values(_written((), allocation="energy", sensitivity=None, ratios=None))  # null: as left out (--set K=null)
    check_values(SVDConfig(allocation="energy", ratio=0.5, trust_region=2.0))  # made otherwise: values tell


def test_a_saved_recipe_writing_every_key_is_read_by_its_values():
    """An output's recipe.yaml writes every key, defaults filled in (recipe.to_plain): its ratio: 0.5
    under energy is no key the user wrote, so it is refused only at another value."""
    import dataclasses

    every = [f.name for f in dataclasses.fields(SVDConfig)]
    check_values(_written(every, allocation="energy", energy=0.9))
    with pytest.raises(UserError, match="svd.ratio is only read by allocation: uniform or global"):
        check_values(_written(every, allocation="energy", ratio=0.4))


def test_a_saved_recipe_loads_again():
    """The dump of a resolved energy recipe (an output's recipe.yaml: every key, ratio: 0.5 among them)
    loads again, with a --set too, and its svd pass checks."""
    from compress.recipe import dump_recipe, parse_recipe

    text = "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: energy, energy: 0.9}\n"
    saved = dump_recipe(parse_recipe(text, "r.yaml"))
    assert "ratio: 0.5" in saved and "trust_region: 2.0" in saved
    recipe = parse_recipe(saved, "out/recipe.yaml", ["passes.0.svd.multiple=8"])
    model = tiny_flux()
    SVDPass(recipe.passes[0].config).check(model, get_adapter(model))


def test_a_check_against_the_model_names_only_the_sets_of_the_keys_it_read():
    """A model check (svd.ratios for the targeted roles) named every --set of the pass at the file's
    line, svd.multiple's too; it reads ratios, targets and ignore."""
    from compress.recipe import parse_recipe

    text = ("model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      allocation: per_role\n"
            "      ratios: {attention: 0.5, mlp: 0.5}\n")
    recipe = parse_recipe(text, "r.yaml", ["passes.0.svd.multiple=8", "passes.0.svd.targets=[attention]"])
    model = tiny_flux()
    with pytest.raises(UserError) as e:
        SVDPass(recipe.passes[0].config).check(model, get_adapter(model))
    assert recipe.passes[0].where(e.value) == "r.yaml:6 (with --set passes.0.svd.targets=[attention])"


def test_zero_modulation_grid_and_alpha_stay_allowed():
    """0 keeps its documented meaning: modulation Grams on the calibration's own timesteps; alpha 0: plain
    scaling-free asvd."""
    model = tiny_flux()
    SVDPass(SVDConfig(modulation_grid=0, alpha=0.0, method="asvd")).check(model, get_adapter(model))


def test_centering_a_layer_without_bias_is_user_error():
    model = tiny_pixart()
    name = "transformer_blocks.0.attn1.to_q"
    model.get_submodule(name).bias = None  # where would the mean error go?
    with pytest.raises(UserError, match="to_q has no bias"):
        SVDPass(SVDConfig(center=["attention"])).check(model, get_adapter(model))
    SVDPass(SVDConfig(center=["mlp"])).check(model, get_adapter(model))  # other layers are fine


def test_whole_model_work_is_refused_when_blocks_stream(tmp_path):
    """The prediction's Fisher and global's sensitivities need whole forwards; the block Fisher
    does not."""
    from compress.calib_store import BlockLoader

    class Streaming(BlockLoader):
        resident = False

    model = tiny_pixart()
    cfg = dict(multiple=2, modulation_grid=4, progress=False)
    with pytest.raises(UserError, match="svd.fisher: block .* or none"):
        SVDPass(SVDConfig(**cfg), Streaming()).run(model, context(model, tmp_path))
    with pytest.raises(UserError, match="svd.sensitivity: false"):
        SVDPass(SVDConfig(fisher="block", allocation="global", **cfg), Streaming()).run(model, context(model, tmp_path))
    SVDPass(SVDConfig(fisher="block", **cfg), Streaming()).run(model, context(model, tmp_path))
    assert any(isinstance(m, LowRankLinear) for m in model.modules())


def test_a_second_svd_pass_over_factorized_layers_is_refused_naming_them(tmp_path):
    """Factorizing a LowRankLinear again dropped its fused GELU (FusedGELU has none to fuse again)
    and recorded its dense size as kept: refused, before compute where the first pass's ranks are
    fixed (plan's meta model), else when the second pass starts."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    cfg = {"multiple": 2, "modulation_grid": 4, "progress": False}
    planned = SVDPass(SVDConfig(targets=["mlp"], **cfg))
    meta = tiny_pixart()
    planned.apply_planned(meta, adapter)
    with pytest.raises(UserError, match=r"transformer_blocks\.0\.ff\.net\.0\.proj, .* are already factorized"):
        SVDPass(SVDConfig(targets=["re:ff\\.net"], **cfg)).check(meta, adapter)
    SVDPass(SVDConfig(targets=["mlp"], **cfg)).run(model, context(model, tmp_path))
    name = "transformer_blocks.1.ff.net.2"
    with pytest.raises(UserError, match=f"{re.escape(name)} is already factorized .* svd.ignore"):
        SVDPass(SVDConfig(targets=[name], **cfg)).run(model, context(model, tmp_path))
    assert model.get_submodule("transformer_blocks.0.ff.net.0.proj").activation == "gelu_tanh"
    SVDPass(SVDConfig(targets=["attention"], **cfg)).check(model, adapter)  # the others stay allowed


@pytest.mark.parametrize("key, given, message", [
    ("asymmetric", "yes", "svd.asymmetric must be true, false or auto, not 'yes' (write true: in YAML 1.2 only "
                          "true and false are booleans)"),
    ("sequential", "off", "svd.sequential must be true, false or auto, not 'off' (write false: "),
    ("sequential", "Auto", "svd.sequential must be true, false or auto, not 'Auto'; did you mean 'auto'?"),
])
def test_a_true_false_or_auto_key_spelled_the_yaml_1_1_way_says_how_to_write_it(key, given, message):
    """svd.asymmetric: yes was refused without a hint (other booleans have one: recipe_yaml.spelling_hint)."""
    from compress.recipe import parse_recipe

    with pytest.raises(UserError, match="^" + re.escape(f"r.yaml:4: {message}")):
        parse_recipe(f"model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {{{key}: {given}}}\n", "r.yaml")


def test_a_number_is_not_true_false_or_auto():
    """1 == True: `in (True, False, "auto")` let 1 through, where it then meant auto."""
    with pytest.raises(UserError, match=re.escape("svd.asymmetric must be true, false or auto, not 1")):
        SVDConfig(asymmetric=1).validate()


def _unchanged(**cfg):
    from compress.arch.base import LinearInfo
    from compress.passes.svd_notes import unchanged_note

    targets = [LinearInfo(f"blocks.0.{p}", "attention", p, "double", 0, 64, 64, "x") for p in ("q", "k")]
    return unchanged_note(SVDConfig(**cfg), targets)


def test_ratio_one_is_named_the_cause_of_an_svd_pass_that_changes_nothing_not_rounding():
    """ratio 1.0, multiple 1: said 'ranks rounded up to a multiple of 1 save no parameters'."""
    key, said, reads = _unchanged(ratio=1.0, multiple=1)
    assert key == "ratio" and "rounded" not in said, said
    assert reads == ("targets", "ignore", "allocation", "ratio", "ranks")  # not multiple: a --set of it is not named
    assert said == ("svd: svd.ratio 1.0 keeps every parameter, so every one of its 2 targets stays dense and "
                    "this pass changes nothing; lower svd.ratio")
    assert _unchanged(ratio=1.0, multiple=16)[0] == "ratio"  # rounding is not why either


def test_rounding_is_named_the_cause_only_where_unrounded_ranks_would_save():
    key, said, reads = _unchanged(ratio=0.9, multiple=64)
    assert key == "multiple" and "rounded up to a multiple of 64 save no parameters" in said, said
    assert "ratio" in reads
    key, said, reads = _unchanged(ranks={"re:.*": 40}, multiple=1)
    assert key == "ranks" and "svd.ranks are at or above" in said, said
    assert reads == ("targets", "ignore")  # every target's rank explicit: not ratio, allocation nor multiple


@pytest.mark.parametrize("ranks, hinted", [("{modulation:8}", True), ("{'re:norm:8': 0}", False),
                                           ("{modulation: null}", False)])
def test_a_ranks_flow_map_without_a_space_after_the_colon_is_hinted(ranks, hinted):
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    said = str(e.value)
    if hinted:  # refused as the YAML is read (recipe_yaml, 33e2dda), before the svd keys are checked
        assert said == ("r.yaml:5: malformed YAML (no space after ':' in 'modulation:8', which YAML reads as the key "
                        "'modulation:8' without a value; write 'modulation: 8')"), said
    else:
        assert "must be an integer" in said and "with a space" not in said, said


@pytest.mark.parametrize("ranks, sets", [("{'modulation:8'}", ()), ("{modulation:8: null}", ()),
                                         ("\n        modulation:8: ~", ()),
                                         ("{modulation: 8}", ("passes.0.svd.ranks={'modulation:8'}",))])
def test_a_ranks_key_with_a_colon_past_the_yaml_check_is_still_hinted(ranks, sets):
    """recipe_yaml refuses only a plain key with nothing after it ({modulation:8}); a quoted key, an
    explicit null (block or flow) or a --set of either reaches svd_checks, whose hint names the space."""
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(sets))
    where = f"r.yaml (--set {sets[0]})" if sets else f"r.yaml:{5 + ranks.count(chr(10))}"
    assert str(e.value) == (f"{where}: svd.ranks: rank null for 'modulation:8' must be an integer ≥ 1 (YAML reads "
                            "'modulation:8' as one key without a value: write 'modulation: 8', with a space)")



@pytest.mark.parametrize("ranks, sets, hint", [
    ("{'re:norm:8'}", (), "quote the pattern alone, then its rank: 're:norm': 8"),
    ("{'re:[ab]:8'}", (), "quote the pattern alone, then its rank: 're:[ab]': 8"),
    ("{re:linear:8: null}", (), "quote the pattern alone, then its rank: 're:linear': 8"),
    ("{'modulation: 8'}", (), "quote the pattern alone, then its rank: 'modulation': 8"),
    ("{modulation: 8}", ("passes.0.svd.ranks={'re:(?:attn1|attn2):8'}",),
     "quote the pattern alone, then its rank: 're:(?:attn1|attn2)': 8"),
    ("{'re:8'}", (), None),
])
def test_a_quoted_or_regex_ranks_key_is_hinted_to_quote_the_pattern_alone(ranks, sets, hint):
    """'re:[ab]:8' was told to write 're:[ab]: 8' (one key again where quoted, a YAML error in a flow
    mapping unquoted), 'modulation: 8' to write 'modulation: 8' (what it wrote), 're:8' to write 're: 8'
    ('re' is no pattern: the key is the regex 8, without a rank)."""
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(sets))
    pattern = yaml.safe_load(sets[0].partition("=")[2] if sets else ranks).popitem()[0]
    said = f"svd.ranks: rank null for '{pattern}' must be an integer ≥ 1"
    assert str(e.value).endswith(said + (f" (YAML reads '{pattern}' as one key without a value: {hint})" if hint else ""))


MODULATION = {"targets": ["modulation"], "ignore": ["norm_out.linear"], "multiple": 1, "modulation_grid": 4,
              "progress": False}  # norm_out.linear's trust range stops below its break-even rank


def _planned_then_checked(first: dict, second: dict | None = None):
    """A budgeted svd pass `first` planned on a meta tiny Flux (its ranks decided after calibration:
    left dense there), then pass `second` (default: the same targets again) checked -> its notes."""
    meta = tiny_flux()
    adapter = get_adapter(meta)
    SVDPass(SVDConfig(**{**MODULATION, **first})).apply_planned(meta, adapter)
    later = SVDPass(SVDConfig(**{**MODULATION, **(second or {})}))
    later.check(meta, adapter)
    return later.notes(meta, adapter)


@pytest.mark.parametrize("first, words", [
    # the trust range (ceil(r0/1.5)..floor(1.5·r0)) stops below the break-even rank: factorized
    ({"allocation": "global", "ratio": 0.5, "trust_region": 1.5},
     r"are already factorized \(by an earlier svd pass: its global allocation gives them ranks that save "
     r"parameters whatever calibration finds\); leave them out with svd\.ignore"),
    # each may go dense, but a budget of half their parameters cannot keep them all dense
    ({"allocation": "global", "ratio": 0.5},
     r"are already factorized, some of them at least \(by an earlier svd pass: its global allocation, keeping "
     r"0\.5 of its targets' parameters, cannot leave them all dense; which it factorizes, it decides after "
     r"calibration\)"),
    ({"allocation": "global", "ratio": 0.5, "trust_region": None}, "some of them at least"),
])
def test_targets_an_earlier_global_pass_surely_factorizes_are_refused_before_compute(first, words):
    """Only the ranks of fixed allocations were placed on plan's meta model: a second pass over the
    targets of a global one passed every check, and the run stopped when it started, after hours of
    the first pass's calibration and Fisher sweeps on Flux."""
    with pytest.raises(UserError, match=r"^svd: transformer_blocks\.0\.norm1\.linear, .* " + words):
        _planned_then_checked(first)


@pytest.mark.parametrize("first", [
    {"allocation": "energy"},  # each target's rank follows its spectrum
    {"allocation": "global", "ratio": 1.0},  # a budget of every parameter may keep them all dense
])
def test_targets_an_earlier_budgeted_pass_may_factorize_are_warned(first):
    notes = _planned_then_checked(first)
    assert [key for key, *_ in notes] == ["targets"] and notes[0][2] == ("ignore",)
    assert re.match(rf"svd: transformer_blocks\.0\.norm1\.linear, .* are factorized by an earlier svd pass if "
                    rf"its {first['allocation']} allocation, decided after calibration, gives them ranks that save "
                    r"parameters; then the run stops when this pass starts", notes[0][1]), notes


def test_a_second_pass_over_some_of_a_global_pass_s_targets_is_warned_not_refused():
    """The budget factorizes some of the first pass's targets, not necessarily the one named again."""
    notes = _planned_then_checked({"allocation": "global", "ratio": 0.5},
                                  {"targets": ["transformer_blocks.0.norm1.linear"]})
    assert len(notes) == 1 and notes[0][1].startswith("svd: transformer_blocks.0.norm1.linear is factorized by")


@pytest.mark.parametrize("first", [
    {"allocation": "global", "ratio": 0.5, "multiple": 16},  # no rank in multiples of 16 saves: dense
    {"allocation": "energy", "multiple": 16},
    {"allocation": "global", "ratio": 0.5, "targets": ["attention"], "ignore": []},  # other targets
])
def test_targets_an_earlier_budgeted_pass_leaves_dense_are_allowed(first):
    assert _planned_then_checked(first) == []


def test_what_the_check_says_a_global_pass_surely_factorizes_it_does(tmp_path):
    """The check's reading of the allocation against a run of it on the tiny Flux: every target
    `sure` is factorized; of `some`, at least one."""
    from compress.passes.svd_planned import PLANNED_BY

    for first in ({"allocation": "global", "ratio": 0.5, "trust_region": 1.5},
                  {"allocation": "global", "ratio": 0.5}):
        meta, model = tiny_flux(), tiny_flux()
        adapter = get_adapter(model)
        config = SVDConfig(**{**MODULATION, **first, "fisher": "none"})
        SVDPass(config).apply_planned(meta, adapter)
        marks = {i.name: getattr(meta.get_submodule(i.name), PLANNED_BY) for i in adapter.linears(meta)
                 if hasattr(meta.get_submodule(i.name), PLANNED_BY)}
        SVDPass(config).run(model, context(model, tmp_path))
        factorized = {n for n in marks if isinstance(model.get_submodule(n), LowRankLinear)}
        sure = {n for n, (_, is_sure) in marks.items() if is_sure}
        assert sure <= factorized and factorized, (first, sure, factorized)
        assert sure or next(iter(marks.values()))[0].some


@pytest.mark.parametrize("center, pattern", [("[mlp]", "mlp"), ("[attention, 're:ff\\.net\\.2']", "re:ff\\.net\\.2")])
def test_a_center_pattern_naming_no_target_is_refused_at_its_line(center, pattern):
    """svd.center: [mlp] on a pass over attention centred nothing and planned as if it did."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    text = f"model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {{targets: [attention], center: {center}}}\n"
    with pytest.raises(UserError) as e:
        make_plan(parse_recipe(text, "r.yaml"))
    said = str(e.value)
    assert said.startswith(f"r.yaml:4: svd.center: pattern {pattern!r} names transformer_blocks.0.ff.net."), said
    assert said.endswith(", which this pass does not factorize (not in svd.targets, or left out by svd.ignore); "
                         "add them to svd.targets or remove the pattern from svd.center"), said


def test_a_center_pattern_of_ignored_targets_is_refused_and_the_default_stays_allowed():
    model = tiny_pixart()
    adapter = get_adapter(model)
    with pytest.raises(UserError, match="svd.center: pattern 'transformer_blocks.0.ff.net.2' names "
                                        "transformer_blocks.0.ff.net.2, which this pass does not factorize .* add it"):
        SVDPass(SVDConfig(targets=["mlp"], ignore=["transformer_blocks.0.ff.net.2"],
                          center=["transformer_blocks.0.ff.net.2"])).check(model, adapter)
    SVDPass(SVDConfig(targets=["attention"])).check(model, adapter)  # [modulation], the default: not the recipe's
    SVDPass(SVDConfig(targets=["attention", "mlp"], center=["mlp"])).check(model, adapter)


@pytest.mark.parametrize("allocation", ["energy", "global"])  # global below ratio 1: refused (too small a budget)
def test_a_budgeted_pass_no_rank_of_whose_multiple_saves_is_warned_before_compute(allocation, tmp_path, capsys):
    """No rank in multiples of 16 saves parameters on the tiny Flux's modulation linears: whatever the
    allocation finds, the pass changes nothing, which plan can say (and the run says once)."""
    cfg = {**MODULATION, "allocation": allocation, "multiple": 16, "fisher": "none",
           **({"ratio": 1.0, "sensitivity": False} if allocation == "global" else {})}
    meta = tiny_flux()
    svd = SVDPass(SVDConfig(**cfg))
    svd.check(meta, get_adapter(meta))
    notes = svd.notes(meta, get_adapter(meta))
    assert notes == [("multiple", f"svd: every one of its {len(svd.resolved.targets(meta, get_adapter(meta))[1])} "
                                  "targets stays dense (ranks in multiples of 16 save no parameters at these widths, "
                                  f"whatever the {allocation} allocation finds), so this pass changes nothing; lower "
                                  "svd.multiple", ("targets", "ignore", "allocation", "ranks"))]
    model = tiny_flux()
    SVDPass(SVDConfig(**cfg)).run(model, context(model, tmp_path))
    assert "warning" not in capsys.readouterr().err  # the plan's note said it
    assert SVDPass(SVDConfig(**{**cfg, "multiple": 1})).notes(meta, get_adapter(meta)) == []



@pytest.mark.parametrize("model, targets, words", [
    ("flux", "[modulation]", "the modulation linears read the conditioning"),
    ("pixart", "[modulation]", "the modulation linears read the conditioning"),  # adaln_single.linear: top level
    ("pixart", "[transformer_blocks.0.attn2.to_k, transformer_blocks.0.attn2.to_v]", "read the caption"),
    ("pixart", "[output]", "top-level layers are calibrated before or after the blocks"),
])
def test_sequential_true_on_targets_never_rerun_within_a_block_is_refused_at_its_line(tmp_path, model, targets,
                                                                                     words):
    """`sequential: true` on a pass of modulation linears alone (or other targets reading a model-wide
    input) sequenced nothing, yet the plan's memory estimate counted a dense block copy and a one-row
    probe: refused at its line, as `asymmetric: true` on targets it cannot fit is."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    text = (f"model: {model}\nteacher: toy:{model}\ncalibration: {{num_prompts: 2, timesteps: 1}}\npasses:\n"
            f"  - svd:\n      targets: {targets}\n      fisher: block\n      sequential: true\n")
    with pytest.raises(UserError, match=rf"r\.yaml:8: svd\.sequential: true, but none of this pass's \d+ targets "
                                        rf"is calibrated within its block, .*{words}.*; leave svd\.sequential out"):
        make_plan(parse_recipe(text, str(tmp_path / "r.yaml")))


def test_sequential_auto_on_modulation_targets_and_true_beside_a_block_linear_stay_allowed(tmp_path):
    """What the refusal leaves: `auto` on the modulation linears alone (no block copy, no probe counted)
    and `true` with a block linear's role beside them."""
    from compress.calib_footprint import footprint
    from compress.recipe import parse_recipe

    model = tiny_flux()
    for targets, sequential in ((["modulation"], "auto"), (["modulation", "mlp"], True)):
        SVDPass(SVDConfig(targets=targets, fisher="block", sequential=sequential)).check(model, get_adapter(model))
    text = "model: flux\nteacher: toy:flux\npasses:\n  - svd: {targets: [modulation], fisher: block}\n"
    f = footprint(parse_recipe(text, str(tmp_path / "r.yaml")), "toy:flux", model.config, 0)
    assert (f["block_copies"], f["probe_bytes"]) == (1, 0)


def test_sequential_auto_on_the_captions_keys_and_values_alone_sequences_nothing(tmp_path):
    """`auto` (the way out the refusal above names) on caption keys/values alone: they read the caption,
    never re-run within a block, so auto resolves to off and the footprint counts no block copy beside
    the block's own and no probe (it counted both, as `true` did before it was refused)."""
    from compress.calib_footprint import footprint
    from compress.recipe import parse_recipe

    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [transformer_blocks.0.attn2.to_k, "
            "transformer_blocks.0.attn2.to_v], fisher: block}\n")
    model = tiny_pixart()
    f = footprint(parse_recipe(text, str(tmp_path / "r.yaml")), "toy:pixart", model.config, 0)
    assert (f["block_copies"], f["probe_bytes"]) == (1, 0)


ENERGY_EDIT = ("model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: uniform, %s}\n")


def _saved_then_energy(written: str, marks: bool = True) -> str:
    """An output's recipe.yaml of a uniform svd pass writing `written`, edited to allocation: energy;
    without `marks`, as an output saved before the default marks (no header, no '# default')."""
    from compress.recipe import dump_recipe, parse_recipe

    saved = dump_recipe(parse_recipe(ENERGY_EDIT % written, "r.yaml"))
    if not marks:
        saved = re.sub(r"  # default$", "", saved.split("\n", 1)[1], flags=re.M)
    return saved.replace("allocation: uniform", "allocation: energy")


def test_an_older_saved_recipe_without_marks_is_read_by_its_values():
    """Outputs saved before the marks load as they did: every key written, so ratio: 0.5 under energy is
    taken for a default filled in, and only another value is refused."""
    from compress.recipe import parse_recipe

    edited = _saved_then_energy("ratio: 0.5", marks=False)
    assert "# default" not in edited and "ratio: 0.5" in edited
    parse_recipe(edited, "out/recipe.yaml")
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by allocation: uniform"):
        parse_recipe(edited.replace("ratio: 0.5", "ratio: 0.4"), "out/recipe.yaml")


def test_a_saved_recipe_edited_to_energy_is_refused_only_the_ratio_its_recipe_wrote():
    """A saved recipe marks the keys the defaults filled in: its ratio: 0.5 left to the default is
    no key the user wrote (no refusal under energy); one the recipe wrote, at the default value, was
    judged by its value (accepted and ignored) and is refused."""
    from compress.recipe import parse_recipe

    filled = _saved_then_energy("targets: [attention]")
    assert "ratio: 0.5  # default" in filled
    assert parse_recipe(filled, "out/recipe.yaml").passes[0].config.allocation == "energy"
    written = _saved_then_energy("ratio: 0.5")
    assert "ratio: 0.5\n" in written
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by allocation: uniform"):
        parse_recipe(written, "out/recipe.yaml")


EVERY_SAVED = "ratio: 0.5, ratios: null, energy: 0.99, sensitivity: null, sensitivity_batches: 2, progress: true"


def test_a_marked_saved_recipe_writing_every_saved_key_is_judged_by_what_it_wrote():
    """In a file under the marks' header, an svd pass writing ratio, ratios, energy, sensitivity,
    sensitivity_batches and progress without marks wrote them: it is no older saved recipe judged by
    value, so its ratio under energy is refused."""
    from compress.recipe import parse_recipe

    saved = _saved_then_energy("targets: [attention]")
    unmarked = re.sub(r"^(    (?:ratio|ratios|energy|sensitivity|sensitivity_batches|progress): .*)  # default$",
                      r"\1", saved, flags=re.M)
    assert "ratio: 0.5\n" in unmarked and "progress: true\n" in unmarked
    with pytest.raises(UserError, match="svd.ratio is only read by allocation: uniform or global"):
        parse_recipe(unmarked, "out/recipe.yaml")


def test_a_recipe_writing_every_saved_key_is_saved_as_it_was_judged():
    """A recipe writing every saved key itself is judged by value (energy: 0.99 under uniform passes);
    its output's recipe.yaml wrote them unmarked, and read back refused that energy. The dump marks
    each at its default, so it loads, and edited to energy its ratio: 0.5 passes as in the recipe."""
    from compress.recipe import dump_recipe, parse_recipe

    dumped = dump_recipe(parse_recipe(ENERGY_EDIT % EVERY_SAVED, "r.yaml"))
    assert "    energy: 0.99  # default\n" in dumped
    parse_recipe(dumped, "out/recipe.yaml")
    parse_recipe(_saved_then_energy(EVERY_SAVED), "out/recipe.yaml")


def _accepted(text: str, sets: list[str]) -> bool:
    from compress.recipe import parse_recipe

    try:
        parse_recipe(text, "r.yaml", sets)
    except UserError:
        return False
    return True


SOURCES = [ENERGY_EDIT % "ratio: 0.5", ENERGY_EDIT % EVERY_SAVED, ENERGY_EDIT % "targets: [attention]",
           "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: energy, energy: 0.9}\n",
           "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: global, ratio: 0.3, trust_region: 2.0}\n"]


def _variants(source: str) -> list[str]:
    """`source`, its output's recipe.yaml (marked), that with a blank first line, with its header
    deleted, and as one saved before the marks (no header, no marks)."""
    from compress.recipe import dump_recipe, parse_recipe

    dumped = dump_recipe(parse_recipe(source, "r.yaml"))
    body = dumped.split("\n", 1)[1]
    return [source, dumped, "\n" + dumped, body, re.sub(r"  # default$", "", body, flags=re.M)]


@pytest.mark.parametrize("source", SOURCES,
                         ids=["uniform-ratio", "every-saved-key", "uniform-targets", "energy", "global"])
def test_a_dump_is_accepted_under_each_allocation_exactly_where_the_recipe_it_came_from_is(source):
    """Whatever a recipe is (written by hand, a saved one, marked or not), the svd checks judge its
    dump as they judge it: under every allocation a --set gives it, one is refused exactly where the
    other is (an older saved recipe's dump was refused as loaded: its every key counted as written)."""
    from compress.recipe import dump_recipe, parse_recipe

    for text in _variants(source):
        dumped = dump_recipe(parse_recipe(text, "r.yaml"))
        for sets in ([], *([f"passes.0.svd.allocation={a}"] for a in ("uniform", "global", "energy", "per_role"))):
            assert _accepted(dumped, sets) == _accepted(text, sets), (text, sets)


def test_an_edited_mark_counts_as_the_users_where_its_value_or_a_set_changed_it():
    """A key still marked '# default' but at another value, or given by a --set, is the user's."""
    from compress.recipe import parse_recipe

    filled = _saved_then_energy("targets: [attention]")
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by"):
        parse_recipe(filled.replace("ratio: 0.5  # default", "ratio: 0.4  # default"), "out/recipe.yaml")
    with pytest.raises(UserError, match=re.escape("out/recipe.yaml (--set passes.0.svd.ratio=0.5): svd.ratio is")):
        parse_recipe(filled, "out/recipe.yaml", ["passes.0.svd.ratio=0.5"])
    parse_recipe(filled.replace("    ratio: 0.5  # default\n", ""), "out/recipe.yaml")  # removed: as left out


def test_a_default_comment_in_a_recipe_without_the_saved_header_means_nothing():
    """Only a file whose first comments hold the saved recipe's line is read for marks."""
    from compress.recipe import parse_recipe

    text = "model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      allocation: energy\n      ratio: 0.5  # default\n"
    with pytest.raises(UserError, match="r.yaml:6: svd.ratio is only read by allocation: uniform or global"):
        parse_recipe(text, "r.yaml")
