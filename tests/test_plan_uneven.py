"""plan's totals for a removal by count or fraction whose group's blocks differ in size (a teacher that
is a compressed output: some blocks factorized): which blocks go is decided at run time, so the total
is the most any choice can leave (the smallest blocks gone), marked as a bound; equal blocks stay exact."""

import pytest
import torch

from compress.errors import UserError
from compress.io_export import save_compressed
from compress.lowrank import LowRankLinear
from compress.plan import make_plan
from compress.plan_words import print_plan, total_words
from compress.recipe import parse_recipe
from tests.conftest import FLUX_TINY, PIXART_TINY, tiny_flux, tiny_pixart


def _factorized(model, name: str, rank: int = 2):
    old = model.get_submodule(name)
    model.set_submodule(name, LowRankLinear.from_factors(torch.randn(old.out_features, rank),
                                                         torch.randn(rank, old.in_features), old.bias.detach()))
    return model


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{family: (an output whose blocks differ in size, the group that differs)}: PixArt's block 1
    and Flux's single block 1 have a layer factorized (the smallest of their group); PixArt's block 2
    a smaller one, in another role."""
    tmp = tmp_path_factory.mktemp("uneven")
    pixart = _factorized(tiny_pixart(), "transformer_blocks.1.ff.net.2")
    pixart = _factorized(pixart, "transformer_blocks.2.attn1.to_q")
    flux = _factorized(tiny_flux(), "single_transformer_blocks.1.proj_out")
    return {"pixart": (save_compressed(pixart, tmp / "pixart"), "blocks"),
            "flux": (save_compressed(flux, tmp / "flux"), "single")}


def _plan(family: str, teacher, passes: str) -> dict:
    return make_plan(parse_recipe(f"model: {family}\nteacher: {teacher}\ncalibration: {{source: synthetic}}\n"
                                  f"passes:\n{passes}", "r.yaml"))


def _each_choice(family: str, teacher, group: str, n: int, after: str = "") -> list[int]:
    """The planned totals of the same removal with each block of `group` named (exact)."""
    return [_plan(family, teacher, f"  - remove_blocks: {{blocks: {{{group}: [{i}]}}}}\n{after}")
            ["params_after_planned"] for i in range(n)]


@pytest.mark.parametrize("family, removal", [("pixart", "{count: 1, criterion: proxy}"),
                                             ("pixart", "{fraction: 0.4, criterion: scan}"),
                                             ("pixart", "{count: {blocks: 1}, criterion: learned}"),
                                             ("flux", "{count: {single: 1}, criterion: proxy}")])
def test_a_count_over_blocks_that_differ_is_the_most_any_choice_leaves(outputs, family, removal, capsys):
    """plan removed the group's last block as a placeholder, taking blocks of a group to be equal, and
    said the total exactly ('881,168 -> 734,352 (planned)' of an output whose run removed a larger
    block and left 710,800). Now: at most what removing the smallest leaves, said as a bound."""
    teacher, group = outputs[family]
    n = PIXART_TINY["num_layers"] if family == "pixart" else FLUX_TINY["num_single_layers"]
    plan = _plan(family, teacher, f"  - remove_blocks: {removal}\n")
    choices = _each_choice(family, teacher, group, n)
    assert len(set(choices)) > 1  # the blocks differ
    assert plan["params_after_at_most"] == max(choices)
    assert plan["uneven_removals"] == [{"pass": "remove_blocks", "line": 5, "groups": [group]}]
    assert plan["passes"][0]["blocks_differ_in_size"] == [group]
    words = total_words(plan)
    assert words.startswith(f"total parameters: {plan['params_before']:,} -> at most {max(choices):,} (")
    assert (f"remove_blocks (line 5) picks blocks of group '{group}', whose blocks differ in size, at run time: "
            "counted as if the smallest go)") in words
    print_plan(plan)
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    marks = plan["by_role_after_is"]  # the roles in blocks bounds; the top level's (embedding) untouched
    assert rows and all(("≤" in row) == (marks[role] == "at most") for role, row in rows.items())
    assert marks["attention"] == "at most" and marks["embedding"] == "exact"


def test_each_role_s_bound_is_the_most_any_choice_leaves_of_it(outputs):
    """Removing the smallest block (block 1: its mlp factorized) leaves block 2's attention
    factorized: the attention row's bound is what removing block 2 leaves."""
    teacher, group = outputs["pixart"]
    plan = _plan("pixart", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n")
    exact = [_plan("pixart", teacher, f"  - remove_blocks: {{blocks: {{blocks: [{i}]}}}}\n")["by_role_after"]
             for i in range(3)]
    assert plan["by_role_after_at_most"] == {r: max(e[r] for e in exact) for r in exact[0]}
    assert plan["by_role_after_at_most"]["attention"] > plan["by_role_after"]["attention"]


def test_equal_blocks_stay_exact(tmp_path):
    """An output whose blocks are all equal: any choice leaves the same count, said exactly."""
    out = save_compressed(tiny_pixart(), tmp_path / "out")
    plan = _plan("pixart", out, "  - remove_blocks: {count: 1, criterion: proxy}\n")
    assert plan["uneven_removals"] == [] and "blocks_differ_in_size" not in plan["passes"][0]
    assert plan["params_after_at_most"] == plan["params_after_planned"] == _each_choice("pixart", out, "blocks", 3)[0]
    assert total_words(plan).endswith(f"-> {plan['params_after_planned']:,} (planned)")


@pytest.mark.parametrize("after", ["  - svd: {targets: [cross_attention], ranks: {cross_attention: 2}}\n",
                                   "  - remove_blocks: {blocks: {blocks: [0]}}\n"])
def test_the_bound_holds_through_later_passes(outputs, after):
    """A later svd pass shrinks the blocks left, a later explicit removal takes one of the blocks
    that may be left: the bound still holds for every choice the first removal may make."""
    teacher, _ = outputs["pixart"]
    plan = _plan("pixart", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n" + after)
    choices = [_plan("pixart", teacher, f"  - remove_blocks: {{blocks: {{blocks: [{i}]}}}}\n{after}")
               ["params_after_planned"] for i in (range(3) if "svd" in after else (1, 2))]
    assert plan["params_after_at_most"] >= max(choices)
    assert "at most" in total_words(plan)


def test_a_distill_student_is_bounded_likewise(outputs):
    teacher, _ = outputs["pixart"]
    plan = _plan("pixart", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n"
                                    "  - distill: {steps: 40, data: teacher_samples, num_samples: 4}\n")
    assert plan["passes"][1]["student"]["params"] == plan["params_after_at_most"] == \
        max(_each_choice("pixart", teacher, "blocks", 3))


def test_a_factorized_layer_of_a_block_counted_as_gone_is_still_refused_by_a_later_svd(outputs):
    """The smallest blocks plan dropped in the removal's place are often the factorized ones: plan
    then let an svd pass target transformer_blocks.1.ff.net.2 (factorized, block 1 dropped), and the run,
    whose removal kept block 1, stopped after pass 1 ('svd: transformer_blocks.1.ff.net.2 is already
    factorized'). Now plan refuses it at the svd pass's line, where the run may keep the block."""
    teacher, _ = outputs["pixart"]
    with pytest.raises(UserError) as e:
        _plan("pixart", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n"
                                 "  - svd: {ratio: 0.5, targets: [mlp], multiple: 2}\n")
    assert str(e.value).startswith("r.yaml:6: svd: transformer_blocks.1.ff.net.2 (teacher block 1, which the "
                                   "removal at line 5 may keep: it picks blocks at run time")
    assert "already factorized" in str(e.value) and "svd.ignore" in str(e.value)


@pytest.mark.parametrize("svd", ["{ratio: 0.5, targets: [mlp], multiple: 2, ignore: ['re:ff\\.net\\.2']}",
                                 "{ratio: 0.5, targets: [cross_attention], multiple: 2}"])
def test_a_later_svd_that_leaves_the_factorized_layer_out_plans_with_the_same_bound(outputs, svd):
    teacher, _ = outputs["pixart"]
    plan = _plan("pixart", teacher, f"  - remove_blocks: {{count: 1, criterion: proxy}}\n  - svd: {svd}\n")
    choices = [_plan("pixart", teacher, f"  - remove_blocks: {{blocks: {{blocks: [{i}]}}}}\n  - svd: {svd}\n")
               ["params_after_planned"] for i in range(3)]
    assert plan["params_after_at_most"] >= max(choices)


def test_an_explicit_removal_of_the_factorized_block_lets_a_later_svd_target_its_role(outputs):
    """Teacher block 1 (its mlp factorized), dropped as a placeholder, is removed by index after: the
    run never has it when the svd pass starts."""
    teacher, _ = outputs["pixart"]
    plan = _plan("pixart", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n"
                                    "  - remove_blocks: {blocks: {blocks: [1]}}\n"
                                    "  - svd: {ratio: 0.5, targets: [mlp], multiple: 2}\n")
    assert plan["blocks_after"] == {"blocks": 1}


def test_by_block_after_says_its_blocks_are_placeholders_after_a_removal_picked_at_run_time(outputs):
    """plan --json's by_block_after after a removal picked at run time listed blocks and their counts
    as if known: of a count over blocks that differ in size, single.0 4,032 where the run that removes
    single block 0 leaves 2,944 there; of a count over several groups, every block. by_block_after_is
    says so ("placeholders"; "exact" where the removal is placed, "at most" where only ranks wait for
    calibration). The svd line after such a removal stays exact: its counts come from its targets'
    shapes, the same in each block of a group, and a factorized one that may stay is refused."""
    from tests.test_plan import GLOBAL

    teacher, group = outputs["flux"]
    svd = "  - svd: {targets: [attention], ratio: 0.5, fisher: none}\n"
    plan = _plan("flux", teacher, "  - remove_blocks: {count: {single: 1}, criterion: proxy}\n" + svd)
    choices = [_plan("flux", teacher, f"  - remove_blocks: {{blocks: {{single: [{i}]}}}}\n" + svd)
               for i in range(FLUX_TINY["num_single_layers"])]
    assert plan["by_block_after_is"] == "placeholders" and {c["by_block_after_is"] for c in choices} == {"exact"}
    assert any(c["by_block_after"] != plan["by_block_after"] for c in choices)  # which blocks go changes them
    counts = ("targets", "params_before", "params_after")
    assert all({k: c["passes"][1][k] for k in counts} == {k: plan["passes"][1][k] for k in counts} for c in choices)
    assert "at_most" not in plan["passes"][1]
    over = _plan("flux", teacher, "  - remove_blocks: {count: 1, criterion: proxy}\n" + svd)  # importance picks the group
    assert over["by_block_after_is"] == "placeholders"
    assert len(over["by_block_after"]) - 1 > sum(choices[0]["blocks_after"].values())  # every block counted
    assert make_plan(parse_recipe(GLOBAL.replace("{allocation}", "global"), "r.yaml"))["by_block_after_is"] == "at most"


@pytest.mark.parametrize("removal, as_if", [("{count: {blocks: 2}}", True), ("{blocks: {blocks: [1, 4]}}", False)])
def test_an_already_factorized_refusal_after_a_run_time_removal_says_its_names_are_plans_stand_in(removal, as_if):
    """T6: plan and run refused 'svd: transformer_blocks.0.ff.net.2, transformer_blocks.1.ff.net.2, ... are
    already factorized' naming layers of plan's stand-in model, whose removal dropped the smallest blocks,
    when the removal picks its blocks at run time: the names read as fact. Now they are said to be as if
    the smallest go, as plan's bounds say it; a removal by index names the run's own layers, as before."""
    recipe = ("model: pixart\nteacher: toy:pixart\ncalibration: {source: synthetic}\npasses:\n"
              "  - svd: {targets: [mlp], ignore: ['re:^transformer_blocks\\.2\\.'], ratio: 0.5, multiple: 16}\n"
              f"  - remove_blocks: {removal}\n"
              "  - svd: {targets: ['re:ff\\.net\\.2$'], ratio: 0.5}\n")
    with pytest.raises(UserError) as e:
        make_plan(parse_recipe(recipe, "r.yaml"))
    said = str(e.value)
    assert said.startswith("r.yaml:7: svd: transformer_blocks.0.ff.net.2, ") and \
        "are already factorized (by the svd pass at line 5" in said, said
    words = "named as if the removal at line 6, which picks its blocks at run time, takes the smallest blocks)"
    assert (words in said) == as_if, said


def test_two_run_time_removals_before_an_already_factorized_refusal_take_a_plural_verb():
    """R3: two removals that pick their blocks at run time read '... which pick their blocks at run time,
    takes the smallest blocks': the verb kept singular."""
    recipe = ("model: pixart\nteacher: toy:pixart\ncalibration: {source: synthetic}\npasses:\n"
              "  - svd: {targets: [mlp], ignore: ['re:^transformer_blocks\\.2\\.'], ratio: 0.5, multiple: 16}\n"
              "  - remove_blocks: {count: {blocks: 1}}\n"
              "  - remove_blocks: {count: {blocks: 1}}\n"
              "  - svd: {targets: ['re:ff\\.net\\.2$'], ratio: 0.5}\n")
    with pytest.raises(UserError) as e:
        make_plan(parse_recipe(recipe, "r.yaml"))
    assert "named as if the removals at lines 6, 7, which pick their blocks at run time, take the smallest blocks)" \
        in str(e.value), str(e.value)
