"""compress.passes.svd_checks: the svd pass's recipe checks, before any compute and when blocks stream."""

import re

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_checks import stamp_factorized
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
    stamp_factorized(meta, "line 5")
    with pytest.raises(UserError, match=r"transformer_blocks\.0\.ff\.net\.0\.proj, .* are already factorized "
                                        r"\(by the svd pass at line 5\)"):
        SVDPass(SVDConfig(targets=["re:ff\\.net"], **cfg)).check(meta, adapter)
    SVDPass(SVDConfig(targets=["mlp"], **cfg)).run(model, context(model, tmp_path))
    name = "transformer_blocks.1.ff.net.2"
    with pytest.raises(UserError, match=f"{re.escape(name)} is already factorized "
                                        r"\(by an earlier svd pass\); .* svd.ignore"):
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
    f = footprint(parse_recipe(text, str(tmp_path / "r.yaml")), "toy:flux", model.config, 0, toy=False)
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
    f = footprint(parse_recipe(text, str(tmp_path / "r.yaml")), "toy:pixart", model.config, 0, toy=False)
    assert (f["block_copies"], f["probe_bytes"]) == (1, 0)
