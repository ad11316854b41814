"""compress.runner_checks: a recipe's passes checked before any compute against the model as the
passes before them leave it, in `plan` and in a run."""

import re

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import Runner, build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux
from tests.runner_helpers import SIMPLE, pixart_runner

FLUX = """\
model: flux
teacher: toy:flux
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
{passes}"""


def _check(passes: str, overrides=(), **model):
    """`model`: tiny_flux's overrides (its groups: double 2, single 3 blocks)."""
    recipe = parse_recipe(FLUX.format(passes=passes), "r.yaml", list(overrides))
    teacher = tiny_flux(**model)
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    return teacher


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().err.split()) + " ".join(capsys.readouterr().out.split())


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


@pytest.mark.parametrize("options, where, words", [
    ("      fisher: none\n      targets: [attention, mlpp]\n", 7,
     "svd.targets: pattern 'mlpp' matches no linear layer of the model; did you mean 'mlp'?"),
    ("      fisher: none\n      targets:\n        - attention\n        - transformer_blocks.0.attn.to_qq\n", 9,
     "svd.targets: pattern 'transformer_blocks.0.attn.to_qq' .*; did you mean 'transformer_blocks.0.attn.to_q'?"),
    ("      fisher: none\n      targets: [attention]\n      ranks: {modulation: 8}\n", 8,
     "svd.ranks: pattern 'modulation' names .*, which this pass does not factorize .*; add them to "
     "svd.targets or remove the pattern from svd.ranks$"),
    ("      fisher: none\n      targets: [attention]\n      ranks:\n        attention: 4\n"
     "        transformer_blocks.0.attn.to_q: 999\n", 10, "svd.ranks: rank 999 for 'transformer_blocks.0.attn.to_q'"),
])
def test_a_model_check_names_the_line_of_its_key(options, where, words):
    """Errors found against the model pointed at the pass's first line (5) whatever key they were about."""
    with pytest.raises(UserError, match=rf"^r\.yaml:{where}: {words}"):
        _check("  - svd:\n" + options)


@pytest.mark.parametrize("options, where, words", [
    ("      count:\n        double: 1\n        single: 9\n", 8,
     "remove_blocks: removing 9 blocks of group 'single', which has 3,"),
    ("      count:\n        single: 1\n        triple: 1\n", 8, "flux has no block group 'triple'"),
    ("      blocks:\n        double: [0]\n        single: [1, 7]\n", 8, "remove_blocks: block index 7 out"),
    ("      blocks:\n        double: [0]\n        single:\n          - 1\n          - 1\n", 10,
     "remove_blocks: blocks.single lists block 1 twice"),
    ("      count: {single: 2}\n      criterion: learned\n      window: 2\n", 8,
     "remove_blocks: criterion learned, group 'single': the window of blocks 2..2 would lose all 1"),
])
def test_a_removal_check_names_the_line_of_its_key(options, where, words):
    """remove_blocks' errors against the model pointed at the pass's first line (5)."""
    with pytest.raises(UserError, match=rf"^r\.yaml:{where}: {words}"):
        _check("  - remove_blocks:\n" + options)


DISTILL_FACTORS = "  - distill:\n      steps: 2\n      train: factors\n"


def test_distilling_factors_without_an_svd_pass_is_found_before_compute():
    """It passed plan and failed when the distill pass started, after the passes before it ran."""
    with pytest.raises(UserError, match=r"^r\.yaml:8: distill: train: factors, but no svd pass before it"):
        _check("  - remove_blocks: {count: {single: 1}}\n" + DISTILL_FACTORS)


@pytest.mark.parametrize("svd", ["{ratio: 0.5, multiple: 1, fisher: none}",
                                 "{allocation: global, ratio: 0.5, multiple: 1, fisher: none}",
                                 "{allocation: energy, multiple: 1, fisher: none}"])
def test_distilling_factors_after_an_svd_pass_is_fine(svd):
    """Budgeted allocations leave plan's meta model dense; their factors are made at run time."""
    _check(f"  - svd: {svd}\n" + DISTILL_FACTORS)


def test_distilling_factors_after_an_svd_pass_that_leaves_every_target_dense_is_refused():
    """The tiny model's linears are too narrow for ranks in multiples of 16 to save parameters."""
    with pytest.raises(UserError, match=r"^r\.yaml:8: distill: train: factors, but no svd pass before it"):
        _check("  - svd: {ratio: 0.5, fisher: none}\n" + DISTILL_FACTORS)


def test_an_svd_pass_that_leaves_every_target_dense_is_warned_at_its_line(capsys):
    """svd.multiple: 512 left every target dense: the run ended at 100% of the teacher, exit 0, no word."""
    _check("  - svd:\n      fisher: none\n      multiple: 512\n")
    said = _said(capsys)
    assert re.search(r"warning: r\.yaml:7: svd: every one of its \d+ targets stays dense \(ranks rounded up to a "
                     r"multiple of 512 save no parameters", said), said
    _check("  - svd:\n      fisher: none\n      multiple: 1\n")
    assert "stays dense" not in _said(capsys)


def test_plan_warns_of_a_pass_that_changes_nothing(tmp_path, capsys):
    """The notes were printed on the run's upfront check only, not by plan."""
    from compress.plan import make_plan

    (tmp_path / "r.yaml").write_text(FLUX.format(passes="  - svd:\n      fisher: none\n      multiple: 512\n"))
    make_plan(parse_recipe((tmp_path / "r.yaml").read_text(), "r.yaml"))
    assert "warning: r.yaml:7: svd: every one of its" in _said(capsys)


def test_a_ranks_pattern_an_earlier_one_covers_is_warned_at_its_line(capsys):
    """The first matching pattern gives a layer its rank: a later one covering only those layers did nothing."""
    _check("  - svd:\n      fisher: none\n      multiple: 1\n      targets: [modulation]\n      ranks:\n"
           "        modulation: 8\n        transformer_blocks.0.norm1.linear: 12\n")
    said = _said(capsys)
    assert "warning: r.yaml:11: svd.ranks: pattern 'transformer_blocks.0.norm1.linear' gives no layer its rank: " \
           "'modulation', earlier, matches every layer it does" in said, said
    _check("  - svd:\n      fisher: none\n      multiple: 1\n      targets: [modulation]\n      ranks:\n"
           "        transformer_blocks.0.norm1.linear: 12\n        modulation: 8\n")
    assert "warning" not in _said(capsys)


def test_a_pattern_of_another_block_is_not_suggested():
    with pytest.raises(UserError) as e:
        _check("  - svd: {targets: [transformer_blocks.7.attn.to_q]}\n")
    assert "matches no linear layer of the model (roles:" in str(e.value)


@pytest.mark.parametrize("override, where", [
    ("passes.0.svd.targets=[attention, foo]", r"r\.yaml \(--set passes\.0\.svd\.targets=\[attention, foo\]\): "
                                              "svd.targets: pattern 'foo'"),
    ("passes.1.remove_blocks.count.single=99", r"r\.yaml \(--set passes\.1\.remove_blocks\.count\.single=99\): "
                                               "remove_blocks: removing 99"),
])
def test_a_model_check_of_an_override_names_the_override(override, where):
    """A value a --set gave was blamed on a recipe line."""
    with pytest.raises(UserError, match=f"^{where}"):
        _check("  - svd:\n      fisher: none\n      targets: [attention]\n"
               "  - remove_blocks: {count: {single: 1}}\n", [override])


def test_plan_gives_the_same_warning(capsys):
    from compress.plan import make_plan, meta_model

    last = len(meta_model("toy:flux").single_transformer_blocks) - 1
    recipe = parse_recipe(FLUX.format(passes="  - remove_blocks: {count: 2, criterion: proxy}\n"
                                      f"  - svd: {{targets: [single_transformer_blocks.{last - 1}.proj_out]}}\n"),
                          "r.yaml")
    make_plan(recipe)
    assert "warning: r.yaml:6: svd.targets" in _said(capsys)


# ---- in a run: passes checked against the model as the passes before them leave it ------------
@pytest.fixture
def pixart(tmp_path, monkeypatch):
    return pixart_runner(tmp_path, monkeypatch)


SEEN = r"\(the pass at line 5 removed blocks: this pass sees {} of the teacher's 3 blocks in group 'blocks', "


def _simple(tmp_path, passes):
    recipe = parse_recipe(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes), str(tmp_path / "r.yaml"))
    return Runner(recipe, tmp_path / "out", tmp_path / "run")


@pytest.mark.parametrize("passes, words", [
    ("  - remove_blocks: {count: {blocks: 2}}\n  - remove_blocks: {count: {blocks: 2}}\n",
     "remove_blocks: removing 2 blocks of group 'blocks', which has one, would leave it empty; keep it "
     + SEEN.format(1)),
    ("  - remove_blocks: {count: 2}\n  - remove_blocks: {count: 2}\n",  # one group: a bare count is its own
     "remove_blocks: removing 2 blocks of group 'blocks', which has one, would leave it empty; keep it "
     + SEEN.format(1)),
    ("  - remove_blocks: {blocks: {blocks: [0]}}\n  - svd: {targets: [transformer_blocks.2.attn1.to_q]}\n",
     "svd.targets: pattern 'transformer_blocks.2.attn1.to_q' matches no linear layer .* " + SEEN.format(2)),
])
def test_a_pass_that_fails_after_an_earlier_removal_is_refused_upfront(pixart, monkeypatch, passes, words):
    """Upfront checks see the model as the passes before leave it (explicit or per-group removals)."""
    from compress.passes.remove_blocks import RemoveBlocksPass

    tmp_path, make, loads = pixart
    ran = []
    monkeypatch.setattr(RemoveBlocksPass, "run", lambda self, model, ctx: ran.append(1))
    with pytest.raises(UserError, match=rf"r\.yaml:6: {words}"):
        _simple(tmp_path, passes).run()
    assert not ran


def test_a_pass_failing_mid_run_names_its_line_and_the_earlier_removal(pixart):
    """A removal by importance (which blocks go is known only at run time) then an svd pass naming
    the last block: the error names the svd pass's line and the removal."""
    tmp_path, make, loads = pixart
    passes = ("  - remove_blocks: {count: 1, criterion: proxy}\n"
              "  - svd: {targets: [transformer_blocks.2.attn1.to_q], ratio: 0.5, multiple: 2}\n")
    with pytest.raises(UserError, match=r"r\.yaml:6: svd.targets: pattern 'transformer_blocks.2.attn1.to_q' .* "
                                        + SEEN.format(2)):
        _simple(tmp_path, passes).run()


GLOBAL_MODULATION = ("  - svd: {targets: [modulation], allocation: global, ratio: 0.5, trust_region: null, "
                     "multiple: 1, fisher: none}\n")


def test_a_second_svd_pass_over_a_global_pass_s_targets_is_refused_upfront():
    """The first pass's ranks are decided after calibration, so plan's meta model kept its targets dense:
    the second pass passed the upfront checks and the run stopped when it started."""
    with pytest.raises(UserError, match=r"^r\.yaml:7: svd: transformer_blocks\.0\.norm1\.linear, .* are already "
                                        r"factorized, some of them at least \(by the svd pass at line 5: its global "
                                        r"allocation, keeping 0\.5 of its targets' parameters, cannot leave them all "
                                        r"dense; which it factorizes, it decides after calibration\); leave them out "
                                        r"with svd\.ignore, or factorize once at a lower ratio$"):
        _check(GLOBAL_MODULATION + "  - svd:\n      targets: [modulation]\n      ranks: {modulation: 2}\n")


@pytest.mark.parametrize("between, second", [
    ("  - remove_blocks: {count: {single: 1}}\n", "[modulation]"),  # the one it factorizes may be gone
    ("", "[transformer_blocks.0.norm1.linear]"),  # it may factorize the others
    ("", "[modulation]\n      ignore: [transformer_blocks.0.norm1.linear]"),
])
def test_a_second_svd_pass_that_fails_only_if_the_global_allocation_says_so_is_warned(capsys, between, second):
    _check(GLOBAL_MODULATION + between + f"  - svd:\n      targets: {second}\n      multiple: 1\n")
    said = _said(capsys)
    assert re.search(r"warning: r\.yaml:\d+: svd: .* factorized by the svd pass at line 5 if its global "
                     r"allocation, decided after calibration, gives .* that save", said), said


def test_a_second_svd_pass_over_targets_the_first_leaves_dense_is_fine(capsys):
    """Ranks in multiples of 16 save nothing on the tiny model's linears: fixed or budgeted, they stay dense."""
    for first in ("  - svd: {targets: [modulation], fisher: none}\n",
                  "  - svd: {targets: [modulation], allocation: energy, fisher: none}\n"):
        _check(first + "  - svd: {targets: [modulation], multiple: 1, fisher: none}\n")
    assert "factorized" not in _said(capsys)


def test_a_check_a_set_made_fail_names_the_set():
    """A ranks pattern of the file that a --set of svd.targets leaves without a layer was blamed on
    its line alone; so was a pass that `--set stream=true` cannot stream (runner_stream.check_streaming)."""
    from compress.runner_stream import check_streaming

    passes = "  - svd: {targets: [attention, modulation], ranks: {modulation: 8}, multiple: 2}\n"
    with pytest.raises(UserError, match=re.escape("r.yaml:5 (with --set passes.0.svd.targets=[attention]): "
                                                  "svd.ranks: pattern 'modulation'")):
        _check(passes, ["passes.0.svd.targets=[attention]"])
    recipe = parse_recipe(FLUX.format(passes="  - remove_blocks: {count: 1, criterion: learned}\n"), "r.yaml",
                          ["stream=true"])
    with pytest.raises(UserError, match=re.escape("r.yaml:5 (with --set stream=true): "
                                                     "remove_blocks.criterion: learned")):
        check_streaming(build_passes(recipe), recipe.passes, recipe.path)
