"""compress.passes.svd_targets: which layers the svd pass targets, their shapes, fixed ranks and
statistics (the output-Gram path, one Gram per embedding)."""

import pytest

from compress.arch import get_adapter
from compress.passes import svd_targets
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_targets import shape_spec
from tests.conftest import tiny_pixart
from tests.passes.svd_helpers import run_svd
from tests.passes.test_removed_blocks import _errors  # (the upfront check's error, plan's) on toy:flux's teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flux_output_gram_path(tmp_path, monkeypatch):
    monkeypatch.setattr(svd_targets, "OUTPUT_GRAM_MIN_IN", 32)  # tiny single proj_out: in 48, out 16
    _, report, _ = run_svd("flux", tmp_path, targets=["re:single_transformer_blocks\\.\\d+\\.proj_out"])
    assert len(report["layers"]) == 3
    for rec in report["layers"].values():
        assert rec["rank"] != "dense" and rec["loss_ratio"] <= 1.001


def test_plan_exact_for_uniform_later_for_global():
    model = tiny_pixart()
    adapter = get_adapter(model)
    plan = SVDPass(SVDConfig(multiple=2)).plan(model, adapter)
    assert plan["params_after"] < plan["params_before"]
    assert plan["ranks"]["transformer_blocks.0.ff.net.0.proj"] == 6  # 0.5·64·16/80 = 6.4 -> multiple of 2
    plan = SVDPass(SVDConfig(allocation="global")).plan(model, adapter)
    assert plan["params_after"] == "decided after calibration"


def test_a_layer_without_bias_is_counted_without_one():
    """Budgets and plans count each target's own parameters: a layer without bias has none to keep."""
    from compress.alloc import DENSE

    model = tiny_pixart()
    model.get_submodule("transformer_blocks.0.attn1.to_q").bias = None
    adapter = get_adapter(model)
    targets = [i for i in adapter.linears(model) if i.role == "attention"]
    plan = SVDPass(SVDConfig(targets=["attention"], multiple=2)).plan(model, adapter)
    assert plan["params_before"] == sum(p.numel() for i in targets
                                        for p in model.get_submodule(i.name).parameters())
    assert shape_spec(targets[0]).params(3) == 3 * (targets[0].in_features + targets[0].out_features)
    assert shape_spec(targets[0]).params(DENSE) == targets[0].in_features * targets[0].out_features


def test_embedding_targets_each_get_their_own_gram(tmp_path):
    model, report, _ = run_svd("flux", tmp_path, targets=["embedding"])
    assert "time_text_embed.text_embedder.linear_1" in report["layers"]
    assert all(r.get("loss_ratio", 1.0) <= 1.001 for r in report["layers"].values())


CACHED = dict(targets=["attention", "mlp"], multiple=2,
              ranks={"transformer_blocks.0.attn1.to_q": 2, "attention": 4, "transformer_blocks.0.attn1.to_k": 3})


def test_notes_and_plan_reuse_the_targets_check_resolved(monkeypatch):
    """notes (and plan) resolved the targets and ranks again right after check; the same results."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    expected = (SVDPass(SVDConfig(**CACHED)).notes(model, adapter), SVDPass(SVDConfig(**CACHED)).plan(model, adapter))
    calls, linears = [], adapter.linears
    monkeypatch.setattr(adapter, "linears", lambda m: calls.append(m) or linears(m))
    step = SVDPass(SVDConfig(**CACHED))
    step.check(model, adapter)
    assert (step.notes(model, adapter), step.plan(model, adapter)) == expected
    assert len(calls) == 1
    assert [k for k, *_ in expected[0]] == ["ranks.transformer_blocks.0.attn1.to_k"]  # shadowed by attention
    assert expected[0][0][2] == ("targets", "ignore", "ranks.transformer_blocks.0.attn1.to_q", "ranks.attention")


def test_what_check_resolved_is_redone_when_the_model_changes():
    """Another model, a removed block, a dropped bias or factorized layers: the pass answers as a
    fresh one would."""
    from compress.errors import UserError

    model, other = tiny_pixart(num_layers=3), tiny_pixart(num_layers=2)
    adapter = get_adapter(model)
    step = SVDPass(SVDConfig(**CACHED))
    fresh = lambda m: SVDPass(SVDConfig(**CACHED)).plan(m, adapter)
    step.check(model, adapter)
    assert step.plan(other, adapter) == fresh(other) != fresh(model)
    adapter.remove_blocks(model, {"blocks": [2]})
    assert step.plan(model, adapter) == fresh(model)
    assert not any(t.startswith("transformer_blocks.2.") for t in step.plan(model, adapter)["targets"])
    model.get_submodule("transformer_blocks.1.attn1.to_q").bias = None
    assert step.plan(model, adapter) == fresh(model)
    step.apply_planned(model, adapter)
    with pytest.raises(UserError, match="already factorized"):
        step.check(model, adapter)


# ---- re: patterns naming blocks by an index an earlier removal changed ---------------------------
@pytest.mark.parametrize("key", ["targets", "ignore"])
def test_a_regex_naming_a_block_past_those_left_says_what_became_of_it(key):
    """A regex naming teacher block 3 after a removal said only 'matches no linear layer'; a module
    name said which block that is now, as the regex now does (plan and a run's upfront check)."""
    pattern = r"re:single_transformer_blocks\.3\.proj_out"
    svd = (f"{{targets: ['{pattern}']}}" if key == "targets" else
           f"{{targets: [attention], ignore: ['{pattern}']}}")
    checked, planned = _errors(f"  - remove_blocks: {{blocks: {{single: [0]}}}}\n  - svd: {svd}\n")
    said = (f"r.yaml:6: svd.{key}: pattern {pattern!r} matches no linear layer of the model: an earlier pass "
            "removed blocks of group 'single'; the 3 left are single_transformer_blocks.0..2, renumbered from 0 "
            "in teacher order, so teacher block 3 is single_transformer_blocks.2 now (the pass at line 5 removed "
            "blocks")
    assert planned == checked and checked.startswith(said)


def test_a_regex_naming_a_removed_block_past_those_left_says_it_was_removed():
    checked, _ = _errors("  - remove_blocks: {blocks: {single: [3]}}\n"
                         "  - svd: {targets: ['re:single_transformer_blocks\\.[3]\\.']}\n")
    assert ("matches no linear layer of the model: teacher block 3 of group 'single' was removed by an earlier "
            "pass; the 3 left are single_transformer_blocks.0..2") in checked


def test_a_regex_naming_no_block_the_teacher_had_is_not_blamed_on_the_removal():
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n"
                               "  - svd: {targets: ['re:single_transformer_blocks\\.9\\.']}\n")
    assert checked == planned and "removed" not in checked and checked.endswith("regexes start with 're:')")


def test_in_a_run_a_regex_past_the_blocks_left_reads_the_runs_block_map(tmp_path):
    from compress.errors import UserError
    from compress.passes.base import RunContext
    from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
    from tests.conftest import tiny_flux

    teacher, student = tiny_flux(num_single_layers=4), tiny_flux(num_single_layers=4)
    ctx = RunContext(adapter=get_adapter(student), family="flux", teacher=teacher, run_dir=tmp_path)
    RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [1]})).run(student, ctx)
    with pytest.raises(UserError, match=r"pattern 're:single_transformer_blocks\\\\.3\\\\.' matches no linear layer "
                                        r"of the model: .* so teacher block 3 is single_transformer_blocks\.2 now$"):
        SVDPass(SVDConfig(targets=[r"re:single_transformer_blocks\.3\."])).run(student, ctx)


def _regex_notes(removal: str, patterns: list[str]) -> list[tuple[str, str]]:
    """renumbered_pattern_notes of svd.targets `patterns` on plan's meta model after `removal` (of
    the single blocks of a Flux teacher with 4), as the svd pass's notes give them."""
    from compress.passes.removed_blocks import planned_blocks
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_checks import checked_in_order
    from tests.conftest import tiny_flux
    from tests.test_runner_checks import FLUX

    recipe = parse_recipe(FLUX.format(passes=f"  - remove_blocks: {removal}\n  - svd: {{targets: [attention]}}\n"),
                          "r.yaml")
    teacher = tiny_flux(num_single_layers=4)
    adapter = get_adapter(teacher)
    for p, _ in checked_in_order(build_passes(recipe), recipe.passes, teacher, adapter):
        if isinstance(p, SVDPass):
            return svd_targets.renumbered_pattern_notes([(f"targets.{n}", t) for n, t in enumerate(patterns)],
                                                        adapter.linears(teacher), planned_blocks(teacher, adapter))


def test_a_regex_naming_a_renumbered_block_is_noted_as_a_module_name_is():
    """re:single_transformer_blocks\\.1\\. after teacher block 0 was removed silently took teacher
    block 2; the module name single_transformer_blocks.1.proj_out was noted."""
    regex, name = r"re:single_transformer_blocks\.1\.", "single_transformer_blocks.1.proj_out"
    notes = _regex_notes("{blocks: {single: [0]}}", [name, regex])
    words = ("single_transformer_blocks.1 here is teacher block 2: blocks are renumbered from 0 after the removal at "
             "line 5 (teacher block 1 is single_transformer_blocks.0 here)")
    assert notes == [("targets.0", f"svd.targets: pattern {name!r}: {words}", ()),  # its pattern alone read
                     ("targets.1", f"svd.targets: pattern {regex!r}: {words}", ())]


def test_a_regex_naming_several_renumbered_blocks_names_the_others():
    notes = _regex_notes("{blocks: {single: [1]}}", [r"re:single_transformer_blocks\.[1-3]\.attn"])
    assert notes[0][1].endswith("(teacher block 1 was removed); it names 2 more blocks by an index a removal "
                                "changed: single_transformer_blocks.2, single_transformer_blocks.3")


def test_a_regex_after_a_removal_chosen_at_run_time_is_of_the_blocks_left():
    notes = _regex_notes("{count: {single: 1}}", [r"re:single_transformer_blocks\.1\.attn\.to_q"])
    assert notes == [("targets.0", r"svd.targets: pattern 're:single_transformer_blocks\\.1\\.attn\\.to_q': "
                      "single_transformer_blocks.1 here is block 1 of those left after the removal at line 5, which "
                      "picks them at run time (renumbered from 0 in teacher order): not necessarily teacher block 1", ())]


@pytest.mark.parametrize("removal, pattern", [
    ("{blocks: {single: [3]}}", r"re:single_transformer_blocks\.1\."),  # block 1 is still teacher block 1
    ("{blocks: {double: [0]}}", r"re:single_transformer_blocks\.1\."),  # another group's
    ("{blocks: {single: [0]}}", r"re:single_transformer_blocks\.\d+\.attn"),  # every block: none by index
    ("{blocks: {single: [0]}}", r"re:single_transformer_blocks\.[0-3]\.proj_out"),  # every teacher block
    ("{blocks: {single: [0]}}", "re:to_q"),
    ("{blocks: {single: [0]}}", "attention"),
])
def test_a_regex_naming_no_block_by_a_changed_index_is_not_noted(removal, pattern):
    assert _regex_notes(removal, [pattern]) == []


def test_a_role_the_model_has_no_layer_of_is_said_so_never_suggested_as_itself():
    """T1 stop 53: PixArt's targets copied to Flux, [attention, cross_attention, mlp], said "pattern
    'cross_attention' matches no linear layer of the model; did you mean 'cross_attention'?" (the roles were
    among the candidates). Now a role the model lacks is said so, Flux's cross-attention by its joint attention."""
    from compress.errors import BadValue
    from tests.conftest import tiny_flux

    flux = get_adapter(tiny_flux()).linears(tiny_flux())
    with pytest.raises(BadValue) as e:
        svd_targets.resolve_targets(flux, ["attention", "cross_attention", "mlp"], [])
    said = str(e.value)
    assert "did you mean" not in said
    assert ("svd.targets: pattern 'cross_attention' matches no linear layer of the model: Flux has no "
            "cross_attention linears: its text enters through the joint attention (role attention: attn.add_q_proj, "
            "add_k_proj, add_v_proj, to_add_out); drop it (its roles: attention, mlp, modulation, embedding, "
            "output)") in said
    pixart = get_adapter(tiny_pixart()).linears(tiny_pixart())
    no_mlp = [i for i in pixart if i.role != "mlp"]
    with pytest.raises(BadValue, match=r"pattern 'mlp' matches no linear layer of the model: the model has no mlp "
                                       r"linears \(its roles: attention, cross_attention, modulation, embedding, "
                                       r"output\)$"):
        svd_targets.resolve_targets(no_mlp, ["mlp"], [])
    with pytest.raises(BadValue, match="pattern 'mlpp' matches no linear layer of the model; did you mean 'mlp'"):
        svd_targets.resolve_targets(pixart, ["mlpp"], [])  # a typo still told its role
