"""compress.passes.remove_blocks_budget: a budget's words where it cannot be removed, in `plan` and in a
run's upfront checks (the toy Flux teacher: double 2, single 4 blocks)."""

import pytest

from tests.passes.test_removed_blocks import NOTE, _errors


@pytest.mark.parametrize("passes, said", [
    # 'removing 1 of 1 blocks' (as '1 of 1 passes done' was, runner_kept.saved_in_words: 'the one pass')
    ("  - remove_blocks: {count: {single: 3}}\n  - remove_blocks: {count: {single: 1}}\n",
     f"r.yaml:6: remove_blocks: removing the one block of group 'single' would leave it empty; keep it {NOTE}"),
    # 'removing 2 of 1 blocks'
    ("  - remove_blocks: {count: {single: 3}}\n  - remove_blocks: {count: {single: 2}}\n",
     f"r.yaml:6: remove_blocks: removing 2 blocks of group 'single', which has one, would leave it empty; keep it "
     f"{NOTE}"),
    # 'removing 3 of 2 blocks'
    ("  - remove_blocks: {count: {double: 3}}\n",
     "r.yaml:5: remove_blocks: removing 3 blocks of group 'double', which has 2, would leave it empty; keep at "
     "least one"),
    # 'removing 9 of 6 blocks'
    ("  - remove_blocks: {count: 9}\n",
     "r.yaml:5: remove_blocks: removing 9 blocks, of the 6 there are, would leave a group empty (groups 'double': 2, "
     "'single': 4); keep at least one per group"),
])
def test_a_budget_beyond_the_blocks_of_a_group_says_how_many_it_has_in_words(passes, said):
    checked, planned = _errors(passes)
    assert checked == planned and checked.startswith(said), checked


def test_more_blocks_than_one_are_counted_as_before():
    checked, _ = _errors("  - remove_blocks: {count: {single: 2}}\n  - remove_blocks: {count: {single: 2}}\n")
    assert checked.startswith("r.yaml:6: remove_blocks: removing 2 of 2 blocks would leave group 'single' empty; "
                              f"keep at least one {NOTE}"), checked


def test_a_fraction_of_a_group_of_one_block_is_of_1_block(capsys):
    """'fraction.single 0.5 of 1 blocks of group 'single' rounds down to no block'."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from tests.test_runner_checks import FLUX

    make_plan(parse_recipe(FLUX.format(passes="  - remove_blocks: {count: {single: 3}}\n"
                                              "  - remove_blocks: {fraction: {single: 0.5}}\n"), "r.yaml"))
    said = " ".join(capsys.readouterr().err.split())
    assert ("warning: r.yaml:6: remove_blocks.fraction.single 0.5 of 1 block of group 'single' rounds down to no "
            "block, so this pass changes nothing") in said, said
