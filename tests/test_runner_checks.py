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
from tests.runner_helpers import SIMPLE

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
    ("      count:\n        doubel: 1\n", 7,  # no did-you-mean, unlike every other key (a tester's r04)
     r"flux has no block group 'doubel'; did you mean 'double'\? \(groups: double, single\)$"),
    ("      blocks:\n        double: [0]\n        single: [1, 7]\n", 8, "remove_blocks: block index 7 out"),
    ("      blocks:\n        double: [0]\n        single:\n          - 1\n          - 1\n", 10,
     "remove_blocks.blocks.single lists block 1 twice"),
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
    with pytest.raises(UserError, match=r"^r\.yaml:8: distill\.train: factors, but no svd pass before it"):
        _check("  - remove_blocks: {count: {single: 1}}\n" + DISTILL_FACTORS)


@pytest.mark.parametrize("svd", ["{ratio: 0.5, multiple: 1, fisher: none}",
                                 "{allocation: global, ratio: 0.5, multiple: 1, fisher: none}",
                                 "{allocation: energy, multiple: 1, fisher: none}"])
def test_distilling_factors_after_an_svd_pass_is_fine(svd):
    """Budgeted allocations leave plan's meta model dense; their factors are made at run time."""
    _check(f"  - svd: {svd}\n" + DISTILL_FACTORS)


def test_distilling_factors_after_an_svd_pass_that_leaves_every_target_dense_is_refused():
    """The tiny model's linears are too narrow for ranks in multiples of 16 to save parameters."""
    with pytest.raises(UserError, match=r"^r\.yaml:8: distill\.train: factors, but no svd pass before it"):
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
    _check("  - svd:\n      fisher: none\n      targets: [modulation]\n      ranks:\n"
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


# ---- in a run: passes checked against the model as the passes before them leave it ------------
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


ENERGY_THEN_SVD = ("  - svd: {targets: [attention], allocation: energy, energy: 0.5, multiple: 1, fisher: none}\n"
                   "  - svd: {targets: [attention], ratio: 0.5, multiple: 1, fisher: none}\n")


def test_a_pass_refused_after_a_saved_pass_says_the_run_folder_keeps_it(pixart):
    """A user error as a later pass starts (the energy allocation factorized its targets) ended at its own
    words: the saved pass 1, which --resume keeps once the recipe is mended, went unsaid (a tester's
    energy-then-svd run: 1.5 min of pass 1 on the toy)."""
    tmp_path, make, loads = pixart
    with pytest.raises(UserError) as e:
        _simple(tmp_path, ENERGY_THEN_SVD).run()
    said = str(e.value)
    assert said.startswith(f"{tmp_path / 'r.yaml'}:6: svd: transformer_blocks.0.attn1.to_q, "), said
    assert "are already factorized (by the svd pass at line 5); leave them out" in said, said  # not 'or in the teacher'
    assert said.endswith(f"; {tmp_path / 'run'} keeps its work (1 of 2 passes done): --resume continues from "
                         "pass 2 (whose keys may change)"), said
