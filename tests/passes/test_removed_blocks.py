"""compress.passes.removed_blocks: a later pass naming a block an earlier remove_blocks pass took
says what became of it, in `plan` and in a run's upfront checks; the runner's note on which pass
removed blocks follows those errors only."""

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.passes.base import RunContext
from compress.passes.removed_blocks import AfterRemoval, past_the_blocks, removal_words
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
from compress.passes.svd import SVDConfig, SVDPass
from compress.plan import make_plan
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux
from tests.test_runner_checks import FLUX

NOTE = "(the pass at line 5 removed blocks"


def _errors(passes: str) -> tuple[str, str]:
    """(the upfront check's error, plan's error) for a recipe on a teacher with 4 single blocks
    (as toy:flux, which plan loads)."""
    recipe = parse_recipe(FLUX.format(passes=passes), "r.yaml")
    teacher = tiny_flux(num_single_layers=4)
    with pytest.raises(UserError) as checked:
        check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    with pytest.raises(UserError) as planned:
        make_plan(recipe)
    return str(checked.value), str(planned.value)


def test_a_pattern_naming_a_removed_block_says_it_was_removed():
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [3]}}\n"
                               "  - svd: {targets: [single_transformer_blocks.3.proj_out]}\n")
    said = ("r.yaml:6: svd.targets: pattern 'single_transformer_blocks.3.proj_out' matches no linear layer of "
            "the model: teacher block 3 of group 'single' was removed by an earlier pass; the 3 left are "
            "single_transformer_blocks.0..2, renumbered from 0 in teacher order")
    assert planned == checked  # plan said no line (test_plan_says_which_line_removed_the_block)
    assert checked.startswith(f"{said} {NOTE}: this pass sees ")


def test_a_pattern_naming_a_kept_block_by_its_teacher_index_says_its_new_name():
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n"
                               "  - svd:\n      targets:\n        - attention\n"
                               "        - single_transformer_blocks.3.proj_out\n")
    said = ("r.yaml:9: svd.targets: pattern 'single_transformer_blocks.3.proj_out' matches no linear layer of "
            "the model: an earlier pass removed blocks of group 'single'; the 3 left are "
            "single_transformer_blocks.0..2, renumbered from 0 in teacher order, so teacher block 3 is "
            "single_transformer_blocks.2 now")
    assert planned == checked and checked.startswith(f"{said} {NOTE}")


def test_a_removal_chosen_at_run_time_says_so():
    checked, planned = _errors("  - remove_blocks: {count: {single: 1}}\n"
                               "  - svd: {targets: [attention], ignore: [single_transformer_blocks.3.proj_out]}\n")
    assert "svd.ignore: pattern 'single_transformer_blocks.3.proj_out' matches no linear layer of the model: " \
           "an earlier pass removes blocks of group 'single' (which ones is decided at run time); the 3 " \
           "left are single_transformer_blocks.0..2" in planned
    assert NOTE in checked


def test_an_index_the_teacher_never_had_is_not_blamed_on_the_removal():
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n"
                               "  - svd: {targets: [single_transformer_blocks.9.proj_out]}\n")
    assert checked == planned
    assert "removed" not in checked and checked.endswith("regexes start with 're:')")


def test_an_unrelated_error_of_a_later_pass_has_no_removal_note():
    """The note on the earlier removal followed every error of a later pass."""
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n"
                               "  - svd: {targets: [attention], ranks: {modulation: 8}}\n")
    assert checked == planned
    assert checked.startswith("r.yaml:6: svd.ranks: pattern 'modulation' names ") and "removed" not in checked


def test_a_second_removal_of_a_removed_block_points_at_its_index():
    """The index's own line (it pointed at the pass's), and the note on the earlier removal."""
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n"
                               "  - remove_blocks:\n      blocks:\n        single:\n          - 1\n          - 0\n")
    said = "r.yaml:10: remove_blocks: block single.0 (teacher index) was already removed by an earlier pass"
    assert planned == checked and checked.startswith(f"{said} {NOTE}")


def test_too_many_for_the_blocks_left_keeps_the_note():
    checked, _ = _errors("  - remove_blocks: {count: {single: 3}}\n  - remove_blocks: {count: {single: 1}}\n")
    assert checked.startswith("r.yaml:6: remove_blocks: removing the one block of group 'single' would leave "
                              f"it empty; keep it {NOTE}")


def test_a_learned_window_too_small_for_the_blocks_left_keeps_the_note():
    """Windows of 2 fit the teacher's 4 single blocks but not the 3 left; the error pointed at the
    window's line without saying an earlier pass removed blocks."""
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n  - remove_blocks:\n"
                               "      count: {single: 2}\n      criterion: learned\n      window: 2\n")
    said = ("r.yaml:9: remove_blocks: criterion learned, group 'single': the window of blocks 2..2 would lose "
            "all 1: set a larger window")
    assert planned == checked and checked.startswith(f"{said} {NOTE}: this pass sees 2 of the teacher's 2 blocks "
                                                          "in group 'double', 3 of the teacher's 4")


def test_a_count_over_all_blocks_too_many_for_the_groups_left_keeps_the_note():
    """A bare count over several groups (Flux) that the blocks left cannot take without emptying one."""
    checked, planned = _errors("  - remove_blocks: {blocks: {single: [0, 1]}}\n  - remove_blocks: {count: 3}\n")
    said = ("r.yaml:6: remove_blocks: removing 3 of 4 blocks would leave a group empty (groups 'double': 2, "
            "'single': 2); keep at least one per group")
    assert planned == checked and checked.startswith(f"{said} {NOTE}: this pass sees 2 of the teacher's 2")


def test_in_a_run_a_learned_window_too_small_for_the_blocks_left_is_about_the_removal(tmp_path):
    """At run time (an earlier removal chosen by importance over several groups is placed only then)
    the error is one the runner adds its note to, on the window's key."""
    teacher, student = tiny_flux(num_single_layers=4), tiny_flux(num_single_layers=4)
    ctx = RunContext(adapter=get_adapter(student), family="flux", teacher=teacher, run_dir=tmp_path,
                     calibration_inputs=lambda: [])
    RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [0]})).run(student, ctx)
    learned = RemoveBlocksPass(RemoveBlocksConfig(count={"single": 2}, criterion="learned", window=2))
    with pytest.raises(UserError, match=r"the window of blocks 2\.\.2 would lose all 1") as e:
        learned.run(student, ctx)
    assert isinstance(e.value, AfterRemoval) and e.value.key == "window"


def test_in_a_run_the_svd_pass_reads_the_runs_block_map(tmp_path):
    """At run time the student carries no plan: the pass takes ctx.block_map and the teacher."""
    teacher = tiny_flux(num_single_layers=4)
    student = tiny_flux(num_single_layers=4)
    adapter = get_adapter(student)
    ctx = RunContext(adapter=adapter, family="flux", teacher=teacher, run_dir=tmp_path)
    RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [1]})).run(student, ctx)
    assert ctx.block_map["single"] == [0, 2, 3]
    with pytest.raises(UserError, match=r"so teacher block 3 is single_transformer_blocks\.2 now$"):
        SVDPass(SVDConfig(targets=["single_transformer_blocks.3.proj_out"])).run(student, ctx)


def test_past_the_blocks_reads_exact_names_only():
    infos = get_adapter(tiny_flux()).linears(tiny_flux())  # 2 double, 3 single blocks
    assert past_the_blocks("single_transformer_blocks.3.proj_out", infos) == ("single", "single_transformer_blocks", 3, 3)
    assert past_the_blocks("transformer_blocks.2", infos) == ("double", "transformer_blocks", 2, 2)
    for pattern in ("single_transformer_blocks.2.proj_out", "re:single_transformer_blocks.3", "attention",
                    "proj_out.3.x"):
        assert past_the_blocks(pattern, infos) is None


@pytest.mark.parametrize("index, teacher, block_map, words", [
    (3, {"blocks": 3}, None, None),  # nothing removed
    (7, {"blocks": 5}, {"blocks": [0, 1, 2]}, None),  # the teacher had no block 7
    (3, {"blocks": 5}, {"blocks": [0, 2, 4]}, "teacher block 3 of group 'blocks' was removed by an earlier pass; "
                                              "the 3 left are transformer_blocks.0..2, renumbered from 0 in teacher order"),
    (3, {"blocks": 5}, {"blocks": [0, 3, 4]}, "an earlier pass removed blocks of group 'blocks'; the 3 left are "
                                              "transformer_blocks.0..2, renumbered from 0 in teacher order, so "
                                              "teacher block 3 is transformer_blocks.1 now"),
    (3, {"blocks": 5}, {"blocks": [0, 1, 3, 4]}, "an earlier pass removes blocks of group 'blocks' (which ones is "
                                                 "decided at run time); the 3 left are transformer_blocks.0..2, "
                                                 "renumbered from 0 in teacher order"),
])
def test_removal_words(index, teacher, block_map, words):
    assert removal_words(("blocks", "transformer_blocks", index, 3), teacher, block_map) == words


def _warnings(capsys, passes: str) -> list[str]:
    """The warnings on renumbered blocks of `plan` and of a run's upfront checks (the same) on the FLUX
    recipe with `passes`."""
    def said() -> list[str]:
        return [line for line in capsys.readouterr().err.splitlines() if " here is " in line]

    recipe = parse_recipe(FLUX.format(passes=passes), "r.yaml")
    make_plan(recipe)
    planned = said()
    teacher = tiny_flux(num_single_layers=4)
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    assert said() == planned
    return planned


SVD_NAMING = ("  - svd:\n      targets: [attention, single_transformer_blocks.{i}.proj_out]\n"
              "      ranks: {{single_transformer_blocks.{i}.proj_out: 8}}\n")


def test_an_index_written_as_the_teachers_after_a_removal_says_which_teacher_block_it_is(capsys):
    """svd ranks: {single_transformer_blocks.1...} after teacher block 0 was removed silently took teacher block 2."""
    said = _warnings(capsys, "  - remove_blocks: {blocks: {single: [0]}}\n" + SVD_NAMING.format(i=1))
    words = ("pattern 'single_transformer_blocks.1.proj_out': single_transformer_blocks.1 here is teacher block 2: "
             "blocks are renumbered from 0 after the removal at line 5 (teacher block 1 is "
             "single_transformer_blocks.0 here)")
    assert said == [f"warning: r.yaml:7: svd.targets: {words}", f"warning: r.yaml:8: svd.ranks: {words}"]


@pytest.mark.parametrize("passes", [
    SVD_NAMING.format(i=1),  # nothing removed
    "  - remove_blocks: {blocks: {single: [3]}}\n" + SVD_NAMING.format(i=1),  # block 1 is still teacher block 1
    "  - remove_blocks: {blocks: {double: [0]}}\n" + SVD_NAMING.format(i=1),  # another group's
])  # a regex naming a renumbered index is noted now (tests/passes/test_svd_targets.py)
def test_an_index_no_removal_renumbered_is_not_noted(capsys, passes):
    assert _warnings(capsys, passes) == []


def test_an_index_after_a_removal_chosen_at_run_time_is_of_the_blocks_left(capsys):
    said = _warnings(capsys, "  - remove_blocks: {count: {single: 1}}\n"
                             "  - svd: {targets: [attention], ignore: [single_transformer_blocks.1.attn.to_q]}\n")
    assert said == ["warning: r.yaml:6: svd.ignore: pattern 'single_transformer_blocks.1.attn.to_q': "
                    "single_transformer_blocks.1 here is block 1 of those left after the removal at line 5, which "
                    "picks them at run time (renumbered from 0 in teacher order): not necessarily teacher block 1"]


def test_plan_says_which_line_removed_the_block():
    """plan's errors about a removed block did not say which pass removed it; the run's did."""
    _, planned = _errors("  - remove_blocks: {blocks: {single: [0]}}\n  - remove_blocks: {count: {single: 1}}\n"
                         "  - svd: {targets: [single_transformer_blocks.2.proj_out]}\n")
    assert planned.startswith("r.yaml:7: svd.targets: pattern 'single_transformer_blocks.2.proj_out' matches no linear "
                              "layer of the model: ")
    assert planned.endswith(" (the passes at lines 5, 6 removed blocks: this pass sees 2 of the teacher's 2 blocks "
                            "in group 'double', 2 of the teacher's 4 blocks in group 'single', renumbered from 0)")
