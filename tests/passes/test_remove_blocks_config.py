"""remove_blocks' keys of the wrong shape: the error, at the key's line (or its --set), says what
to write, with the block groups of each family (PixArt: blocks; Flux: double, single)."""

import re

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe

RECIPE = """\
model: pixart
teacher: toy:pixart
passes:
  - remove_blocks: {options}
"""
BLOCKS = ("blocks maps a block group to teacher indices: blocks: {blocks: [4]} (PixArt: one group, blocks) "
          "or blocks: {double: [3], single: [10]} (Flux: groups double and single)")


@pytest.mark.parametrize("options, words", [
    ("{blocks: [4]}", f"blocks must be a mapping of a string to a list of an integer or null, not a list; {BLOCKS}"),
    ("{blocks: 4}", f"blocks must be a mapping of a string to a list of an integer or null, not 4; {BLOCKS}"),
    ("{count: [1]}", "count must be a mapping of a string to an integer or an integer or null, not a list; count "
                     "is over all blocks or per block group: count: 1, count: {blocks: 1} (PixArt) or count: "
                     "{double: 1, single: 1} (Flux)"),
    ("{fraction: half}", "fraction must be a mapping of a string to a number or a number or null, not 'half'; "
                         "fraction is over all blocks or per block group: fraction: 0.25, fraction: {blocks: "
                         "0.25} (PixArt) or fraction: {double: 0.25, single: 0.25} (Flux)"),
])
def test_a_block_key_of_the_wrong_shape_says_what_to_write_at_its_line(options, words):
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(options=options), "r.yaml")
    assert str(e.value) == f"r.yaml:4: remove_blocks.{words}"


def test_a_bare_list_set_on_the_command_line_names_the_set():
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(options="{count: 1}"), "r.yaml",
                     ["passes.0.remove_blocks.count=null", "passes.0.remove_blocks.blocks=[4]"])
    assert str(e.value).startswith("r.yaml (--set passes.0.remove_blocks.blocks=[4]): remove_blocks."
                                   "blocks must be a mapping")
    assert str(e.value).endswith(BLOCKS)


def test_the_hinted_keys_still_take_their_values():
    recipe = parse_recipe(RECIPE.format(options="{blocks: {blocks: [4]}}"), "r.yaml")
    assert recipe.passes[0].config.blocks == {"blocks": [4]}
    assert parse_recipe(RECIPE.format(options="{count: 1}"), "r.yaml").passes[0].config.count == 1


@pytest.mark.parametrize("options, key", [
    ("{blocks: {blocks: [1]}, criterion: proxy}", "criterion"),
    ("{blocks: {blocks: [1]},\n      iterative: true}", "iterative"),
    ("{blocks: {blocks: [1]},\n\n      buckets: 2}", "buckets"),
])
def test_explicit_blocks_refuse_the_keys_that_choose_by_importance_at_their_line(options, key):
    """{blocks: ..., criterion: proxy, iterative: true, buckets: 2} planned with exit 0 and no word:
    the keys were ignored. Refused as learn_steps without criterion learned is."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(options=options), "r.yaml")
    line = 4 + options.count("\n")
    assert str(e.value) == (f"r.yaml:{line}: remove_blocks.{key} applies to a count or fraction chosen by "
                            "importance; blocks lists the blocks to remove")


def test_explicit_blocks_take_the_defaults_a_resolved_recipe_writes():
    recipe = parse_recipe(RECIPE.format(options="{blocks: {blocks: [1]}, criterion: scan, iterative: false, "
                                                "buckets: 3}"), "r.yaml")
    assert recipe.passes[0].config.blocks == {"blocks": [1]}


@pytest.mark.parametrize("options, line, words", [
    ("{blocks: {blocks: '1'}}", 4, f"blocks.blocks must be a list of an integer, not '1'; {BLOCKS}"),
    ("\n      blocks:\n        blocks: [1, x]", 6, f"blocks.blocks[1] must be an integer, not 'x'; {BLOCKS}"),
    ("{count: {blocks: one}}", 4, "count.blocks must be an integer, not 'one'; count is over all blocks or per "
                                  "block group: count: 1, count: {blocks: 1} (PixArt) or count: {double: 1, "
                                  "single: 1} (Flux)"),
])
def test_a_wrong_value_inside_a_block_mapping_is_named_at_its_line(options, line, words):
    """{blocks: {blocks: '1'}} said blocks 'must be a mapping of a string to a list of an integer or null,
    not a mapping': the mapping was right, the '1' inside it was not."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(options=options), "r.yaml")
    assert str(e.value) == f"r.yaml:{line}: remove_blocks.{words}"


def test_a_misspelt_criterion_gets_the_closest_one():
    """criterion: learnd listed the criteria but, unlike a misspelt svd.allocation, suggested none."""
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(options="{count: 1, criterion: learnd}"), "r.yaml")
    assert str(e.value).endswith("remove_blocks.criterion must be one of scan, proxy, learned, not 'learnd'; "
                                 "did you mean 'learned'?")
    assert str(e.value).startswith("r.yaml:4: ")


# a budget that names no block group is refused; one that names groups but removes no block is warned
NO_GROUP = ("remove_blocks.{key} names no block group, so this pass would remove nothing; name one or more of "
            "the model's groups (double, single), as {key}: {{single: {example}}}, or leave the pass out")


@pytest.mark.parametrize("options, sets, where", [
    ("{count: {}}", [], "r.yaml:5: "),
    ("{fraction: {}}", [], "r.yaml:5: "),
    ("{blocks: {}}", [], "r.yaml:5: "),
    ("{count: {}, criterion: learned}", [], "r.yaml:5: "),
    ("{count: {single: 1}}", ["passes.0.remove_blocks.count.single=null"],
     "r.yaml:5 (with --set passes.0.remove_blocks.count.single=null): "),
    ("{count: 1}", ["passes.0.remove_blocks.count={}"], "r.yaml (--set passes.0.remove_blocks.count={}): "),
])
def test_a_budget_that_names_no_group_is_refused_at_its_line_naming_the_groups(options, sets, where):
    """count: {} (fraction: {}, or the only group taken out by --set ...=null) planned and ran a
    removal of nothing with exit 0, warned only that count removes no block, and a --set null was
    not named (the line holds count: {single: 1}); blocks: {} the same. An empty mapping is no
    budget a user means, as svd's targets: [] is refused; the error names the model's groups."""
    from tests.test_runner_checks import _check  # a tiny Flux checked as plan and run check it

    key = options[1:options.index(":")]
    with pytest.raises(UserError) as e:
        _check(f"  - remove_blocks: {options}\n", sets)
    example = {"count": 1, "fraction": 0.25, "blocks": "[0]"}[key]
    assert str(e.value) == where + NO_GROUP.format(key=key, example=example)


def test_the_one_group_of_a_pixart_is_named_as_the_one():
    from compress.passes.remove_blocks_config import check_named

    with pytest.raises(UserError, match=r"names no block group, .*; name the model's group \(blocks\), as "
                                        r"count: \{blocks: 1\}, or leave the pass out$"):
        check_named("count", {}, ["blocks"])
    check_named("count", {"blocks": 0}, ["blocks"])  # a group named, removing none: warned, not refused


@pytest.mark.parametrize("options, sets, where", [
    ("{count: 0}", [], "r.yaml:5: "),
    ("{count: {double: 0, single: 0}}", [], "r.yaml:5: "),
    ("{count: {double: 0, single: 1}}", ["passes.0.remove_blocks.count.single=0"],
     "r.yaml:5 (with --set passes.0.remove_blocks.count.single=0): "),
    ("{count: {double: 0, single: 1}}", ["passes.0.remove_blocks.count.single=null"],
     "r.yaml:5 (with --set passes.0.remove_blocks.count.single=null): "),  # it said 'r.yaml:5: ', no --set
])
def test_a_budget_of_no_block_is_warned_naming_the_set_that_made_it(capsys, options, sets, where):
    """A count of 0 (or every group 0) removes none as written: warned, as svd ratio 1.0 is, not
    refused; a --set null that took out the group that removed blocks is named as a --set 0 is."""
    from tests.test_runner_checks import _check

    _check(f"  - remove_blocks: {options}\n", sets)
    said = " ".join(capsys.readouterr().err.split())
    assert f"warning: {where}remove_blocks.count removes no block, so this pass changes nothing" in said, said


@pytest.mark.parametrize("first", ["passes.0.remove_blocks.count={single: 1}",
                                   "passes.0.remove_blocks.count={double: 0, single: 1}"])
def test_a_set_null_into_an_earlier_sets_budget_is_refused_as_a_key_set_twice(first):
    """A --set of a budget's group to null after a --set that wrote that group (the two cases these tests had
    named both --sets in the budget's words) is refused before any check, as 33da4d9 refuses a key given by
    two --sets: only the last would hold."""
    from tests.test_runner_checks import _check

    with pytest.raises(UserError, match=rf"^r\.yaml \(--set passes\.0\.remove_blocks\.count\.single=null\): --set "
                                        rf"{re.escape(first)} set this key in its value, and only the last one "
                                        "would hold: give each key once$"):
        _check("  - remove_blocks: {count: 1}\n", [first, "passes.0.remove_blocks.count.single=null"])
