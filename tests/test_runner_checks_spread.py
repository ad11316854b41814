"""compress.runner_checks after a removal placed at run time (a bare count or fraction over the
groups, by importance): a later pass that fails however the blocks go is refused before compute, one
that fails for some spreads is warned of, said where its group loses least, in `plan` too."""

import re

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from tests.conftest import tiny_flux
from tests.test_runner_checks import FLUX, _check, _said  # a tiny Flux checked as plan and run check it


def test_a_pass_that_fails_if_a_spread_removal_takes_its_block_is_warned(capsys):
    """A bare count over Flux's two groups is placed by importance at run time: an svd pass naming
    the single block before the last fails if both removed blocks come from the single group (the
    double group can give one at most, so the last single block is gone either way: refused below).
    That is said before compute, naming both lines; the recipe may still be right, so it is not an error."""
    last = len(tiny_flux().single_transformer_blocks) - 1
    teacher = _check("  - remove_blocks: {count: 2, criterion: proxy}\n"
                     f"  - svd: {{targets: [single_transformer_blocks.{last - 1}.proj_out], ratio: 0.5}}\n")
    said = _said(capsys)
    assert re.search(rf"warning: r\.yaml:6: svd\.targets: pattern 'single_transformer_blocks\.{last - 1}\.proj_out' "
                     r"matches no linear layer.* if the removal at line 5 takes all 2 of its blocks from group "
                     r"'single'", said), said
    assert len(teacher.single_transformer_blocks) == last + 1  # the teacher is left as it was


@pytest.mark.parametrize("passes", [
    "  - remove_blocks: {count: 2, criterion: proxy}\n"
    "  - svd: {targets: [single_transformer_blocks.0.proj_out], multiple: 1}\n",
    "  - remove_blocks: {count: {single: 2}}\n  - svd: {targets: [transformer_blocks.1.attn.to_q], multiple: 1}\n",
])
def test_passes_that_hold_wherever_the_blocks_go_are_not_warned(capsys, passes):
    _check(passes)
    assert "if the removal at line" not in _said(capsys)  # an index renumbered is noted (test_removed_blocks)


# The tester's recipe on the toy Flux teacher (double 2, single 4 blocks): the bare count at line 6 is
# placed by importance at run time, keeping a block of each group.
SPREAD = """\
  - svd: {{allocation: global, targets: [mlp], ratio: 0.4}}
  - remove_blocks: {{count: {count}}}
  - svd: {{allocation: global, targets: [attention], ratio: 0.5}}
  - remove_blocks: {{count: {{double: 1}}}}
"""


def _plan(passes: str):
    from compress.plan import make_plan

    return make_plan(parse_recipe(FLUX.format(passes=passes), "r.yaml"))


def test_a_removal_that_fails_wherever_a_spread_removal_takes_its_blocks_is_refused(capsys):
    """4 of the 6 blocks leave 'single' 1 block at least, so 'double' loses 1 at least (it skipped the
    check: 'double' cannot lose all 4): plan said nothing, exit 0, and the run refused line 8 after
    three passes."""
    with pytest.raises(UserError, match=r"^r\.yaml:8: remove_blocks: removing the one block of group "
                                        r"'double' would leave it empty; keep it — where the removal at line 6 "
                                        r"takes 1 of its 4 blocks from group 'double' and 3 from group "
                                        r"'single'; it picks them by importance at run time, and this pass "
                                        r"fails however they are spread over the groups \(each keeps one\)$"):
        _plan(SPREAD.format(count=4))
    assert "warning" not in _said(capsys)


def test_a_removal_that_fails_for_some_spreads_of_a_spread_removal_is_warned(capsys):
    """2 blocks may take 1 of 'double' (then line 8 fails) or none: a warning, as for a svd pattern."""
    _plan(SPREAD.format(count=2))
    assert ("warning: r.yaml:8: remove_blocks: removing the one block of group 'double' would leave it empty; keep "
            "it — if the removal at line 6 takes 1 of its 2 blocks from group 'double' and 1 from group "
            "'single' (it picks them by importance at run time; a count per group fixes where they come from)"
            ) in _said(capsys)


def test_a_removal_that_holds_wherever_a_spread_removal_takes_its_blocks_is_fine(capsys):
    _plan(SPREAD.format(count=4).replace("{double: 1}", "{single: 0}"))
    _plan(SPREAD.format(count=2).replace("{double: 1}", "{single: 1}"))
    assert "the removal at line" not in _said(capsys)


@pytest.mark.parametrize("passes, words", [
    # the double group gives 1 block at most: the single group loses its last block (2) either way
    ("  - remove_blocks: {count: 2}\n  - svd: {targets: [single_transformer_blocks.2.proj_out]}\n",
     r"r\.yaml:6: svd\.targets: pattern 'single_transformer_blocks\.2\.proj_out' matches no linear layer.* — "
     r"where the removal at line 5 takes 1 of its 2 blocks from group 'double' and 1 from group 'single'"),
    # 3 blocks are left in all, whichever go: a count over all blocks must leave each group one (it warned)
    ("  - remove_blocks: {count: 2}\n  - remove_blocks: {count: 2}\n",
     r"r\.yaml:6: remove_blocks: removing 2 of 3 blocks would leave a group empty \(groups 'double': \d, "
     r"'single': \d\); keep at least one per group — where the removal at line 5 takes"),
    # two removals are spread as one; a count per group fails wherever both go
    ("  - remove_blocks: {count: 1}\n  - remove_blocks: {count: 1}\n  - remove_blocks: {count: {single: 2}}\n",
     r"r\.yaml:7: remove_blocks: removing 2 (of 2 blocks|blocks of group 'single', which has one,) .* — where "
     r"the removals at lines 5 and 6 take 1 of "
     r"their 2 blocks from group 'double' and 1 from group 'single'; they pick them"),
])
def test_a_pass_that_fails_wherever_spread_removals_take_their_blocks_is_refused(passes, words):
    with pytest.raises(UserError, match=rf"^{words}"):
        _check(passes)


@pytest.mark.parametrize("second, module, reworded, words", [
    ("  - remove_blocks: {count: {double: 2}}\n", "compress.passes.remove_blocks_budget", "too_many",
     "remove_blocks: 2 of the 2 blocks would go, none left — "),
    ("  - svd: {targets: [transformer_blocks.2.attn.to_q]}\n", "compress.passes.removed_blocks", "removal_words",
     "svd.targets: pattern 'transformer_blocks.2.attn.to_q' matches no linear layer of the model: 2 left — "),
])
def test_a_refused_pass_is_said_where_the_group_its_error_is_about_loses_least(monkeypatch, second, module,
                                                                               reworded, words):
    """double 3, single 3, a bare count of 3: 'double' loses 1 or 2. A pass that fails however they go
    is said where 'double', the group its error is about, loses 1 (it fails even then), which its
    check gives it (BadValue.group: too_many's group, the pattern's block), not read from its words:
    said without "group 'double'" the group was missed, and it was said where 'double' loses 2."""
    import importlib

    from compress.passes.removed_blocks import AfterRemoval

    errors = importlib.import_module(module)
    if reworded == "too_many":
        monkeypatch.setattr(errors, "too_many", lambda k, n, group, path, teacher=False: AfterRemoval(
            path, f"remove_blocks: {k} of the {n} blocks would go, none left", group=group))
    else:
        monkeypatch.setattr(errors, "removal_words", lambda block, counts, kept: f"{block[3]} left")
    with pytest.raises(UserError, match=rf"^r\.yaml:6: {re.escape(words)}where the removal at line 5 takes 1 of its "
                                        r"3 blocks from group 'double' and 2 from group 'single'; it picks them"):
        _check("  - remove_blocks: {count: 3}\n" + second, num_layers=3, num_single_layers=3)


def test_a_learned_removal_of_both_groups_refused_for_every_spread_is_said_where_its_group_loses_least():
    """double 4, single 4, a bare count of 1, then a learned removal of 2 blocks of each group in
    windows of 2: the group that loses line 5's block has 3 left, whose windows (2 and 1 blocks)
    cannot lose 2 without emptying one, so every spread fails, 'double' (its error's group, which its
    check gives it) where it loses the block. Said where 'double' loses least, none (it fails even
    then, at 'single'); the group read from its recipe key (window: a budget of both groups) was none,
    and it was said where 'double' loses the block, as the first spread tried."""
    with pytest.raises(UserError, match=r"^r\.yaml:6: remove_blocks: criterion learned, group 'single': the window "
                                        r"of blocks 2\.\.2 would lose all 1.* — where the removal at line 5 takes its "
                                        r"block from group 'single'; it picks them"):
        _check("  - remove_blocks: {count: 1}\n"
               "  - remove_blocks: {count: {double: 2, single: 2}, criterion: learned, window: 2}\n",
               num_layers=4, num_single_layers=4)


def test_a_fraction_over_all_blocks_after_a_spread_removal_counts_the_blocks_left(capsys):
    """0.5 of the 4 blocks line 5 leaves is 2 (it was taken of all 6 blocks: 3, so 5 in all, more than
    the groups can give, and line 7 went unchecked): 4 in all leave 'double' 1 block at least."""
    with pytest.raises(UserError, match=r"^r\.yaml:7: remove_blocks: removing the one block of group "
                                        r"'double' would leave it empty; .* where the removals at lines 5 and 6 "
                                        r"take 1 of their 4 blocks from group 'double' and 3 from group 'single'"):
        _check("  - remove_blocks: {count: 2}\n  - remove_blocks: {fraction: 0.5}\n"
               "  - remove_blocks: {count: {double: 1}}\n", num_single_layers=4)


def test_a_fraction_per_group_after_a_spread_removal_is_warned_not_refused(capsys):
    """0.5 of 'single' is of the blocks line 5 leaves it (3: 1 goes, or 2: 1 goes): the run has 1 or 2
    of them after it, so a pass that fails where it has 1 (but not 2) is warned of only."""
    _check("  - remove_blocks: {count: 2}\n  - remove_blocks: {fraction: {single: 0.5}}\n"
           "  - svd: {targets: [single_transformer_blocks.1.proj_out]}\n", num_single_layers=4)
    assert re.search(r"warning: r\.yaml:7: svd\.targets: pattern 'single_transformer_blocks\.1\.proj_out' .* if "
                     r"the removal at line 5 takes", _said(capsys))


def test_a_fraction_per_group_that_takes_as_the_run_after_a_spread_removal_keeps_the_checks_exact():
    """0.4 of 'single' takes 1 of its 4 blocks, as of the 3 or 4 line 5 leaves it: plan's count after
    it is the run's, so line 7, which fails however line 5's block goes (2 of the 4 blocks left, 3 of
    them taken), is refused, as without line 6; it was only warned of after any fraction per group."""
    with pytest.raises(UserError, match=r"^r\.yaml:7: remove_blocks: removing 3 of 4 blocks would leave a group "
                                        r"empty .* where the removal at line 5 takes"):
        _check("  - remove_blocks: {count: 1}\n  - remove_blocks: {fraction: {single: 0.4}}\n"
               "  - remove_blocks: {count: 3}\n", num_single_layers=4)


# double 2, single 4: line 5's 2 blocks leave {double: 2, single: 2} or {double: 1, single: 3}; 0.7 of
# 'single' then takes 1 or 2, so the run has {double: 2, single: 1} or {double: 1, single: 1} at line 7
SEVENTY = "  - remove_blocks: {count: 2}\n  - remove_blocks: {fraction: {single: 0.7}}\n  - remove_blocks: "


def test_a_pass_that_fails_for_some_counts_a_fraction_per_group_leaves_after_a_spread_removal_is_warned(capsys):
    """A bare count of 1 fails where the run has {double: 1, single: 1} (line 5 took a double block):
    plan said nothing (its spreads of line 5's 2 blocks over the meta model's {double: 2, single: 3}
    found {double: 1, single: 2}, which the run never has), and the run failed at line 7 after two
    passes of compute. It is warned of, naming the counts the run has then."""
    _check(SEVENTY + "{count: 1}\n", num_single_layers=4)
    assert ("warning: r.yaml:7: remove_blocks: removing 1 of 2 blocks would leave a group empty (groups 'double': 1, "
            "'single': 1); keep at least one per group — if the run has 1 block of group 'double' and 1 of group "
            "'single' here, as it may after the removal at line 5 takes its 2 blocks (it picks them by importance "
            "at run time; a count per group fixes where they come from)") in _said(capsys)


def test_a_pass_that_fails_for_every_count_a_fraction_per_group_leaves_after_a_spread_removal_is_refused(capsys):
    """count {single: 1} fails for both counts the run may have ('single' keeps 1 either way): it was
    only warned of (plan found 'single' 2 where line 5 takes a double block); now refused."""
    with pytest.raises(UserError, match=r"^r\.yaml:7: remove_blocks: removing the one block of group "
                                        r"'single' would leave it empty; keep it — where the removal at line 5 "
                                        r"takes all 2 of its blocks from group 'single'; .* fails however they"):
        _check(SEVENTY + "{count: {single: 1}}\n", num_single_layers=4)
    _check(SEVENTY + "{count: {double: 1}}\n", num_single_layers=4)  # fails where 'double' has 1: warned
    assert "removing the one block of group 'double' would leave it empty" in _said(capsys)


def test_a_per_group_count_is_still_checked_upfront():
    last = len(tiny_flux().single_transformer_blocks) - 1
    with pytest.raises(UserError, match=r"r\.yaml:6: svd\.targets: .* \(the pass at line 5 removed blocks"):
        _check(f"  - remove_blocks: {{count: {{single: 1}}}}\n"
               f"  - svd: {{targets: [single_transformer_blocks.{last}.proj_out]}}\n")


def test_plan_gives_the_same_warning(capsys):
    from compress.plan import make_plan, meta_model

    last = len(meta_model("toy:flux").single_transformer_blocks) - 1
    recipe = parse_recipe(FLUX.format(passes="  - remove_blocks: {count: 2, criterion: proxy}\n"
                                      f"  - svd: {{targets: [single_transformer_blocks.{last - 1}.proj_out]}}\n"),
                          "r.yaml")
    make_plan(recipe)
    assert "warning: r.yaml:6: svd.targets" in _said(capsys)
