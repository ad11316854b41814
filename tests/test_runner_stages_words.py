"""What --resume says of a run folder it cannot continue (compress/runner_stages.resumable)."""

import pytest

from compress.errors import UserError
from tests.runner_helpers import run_recipe, streamed_teacher


def test_a_changed_last_pass_of_a_finished_streamed_run_says_only_the_latest_stage_is_kept(tmp_path):
    """A streamed run keeps its latest stage alone: with its last pass changed, --resume keeps
    nothing, and says why the passes before the changed one are not resumed from."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    run_recipe(tmp_path, text, "r")
    changed = text.replace("ranks: {modulation: 4}", "ranks: {modulation: 2}")
    with pytest.raises(UserError) as e:
        run_recipe(tmp_path, changed, "r", resume=True, overwrite=True)
    assert str(e.value) == (
        f"--resume: the recipe changed since {tmp_path / 'run-r'} was written (passes.1.svd.ranks.modulation): "
        "a streamed run keeps only its latest stage (pass 2), so pass 1, before the changed one, cannot be "
        "resumed from; undo the change to resume, or rerun with --restart to start over")


def test_a_pass_put_in_front_of_a_finished_recipe_reads_as_inserted_not_as_an_edit(tmp_path):
    """A pass prepended to a finished recipe: --resume said 'the recipe changed since RUN was written
    (passes.0.svd.allocation, passes.0.svd.multiple, passes.0.svd.ranks.modulation)', an edit of pass 0
    it read as; it names the pass inserted, and the keys of a pass edited beside it (numbered as now)."""
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    attention = "  - svd: {{targets: [attention], allocation: global, ratio: {ratio}, multiple: 2}}\n"
    modulation = "  - svd: {targets: [modulation], fisher: none, ranks: {modulation: 4}}\n"
    recipe = lambda passes: SIMPLE.format(teacher=tmp_path / "teacher", passes=passes)  # noqa: E731
    run_recipe(tmp_path, recipe(attention.format(ratio=0.5)), "r")
    for passes, said in ((modulation + attention.format(ratio=0.5), "an svd pass inserted at passes.0"),
                         (modulation + attention.format(ratio=0.4), "an svd pass inserted at passes.0, passes.1.svd.ratio")):
        with pytest.raises(UserError) as e:
            run_recipe(tmp_path, recipe(passes), "r", resume=True, overwrite=True)
        assert str(e.value) == (f"--resume: the recipe changed since {tmp_path / 'run-r'} was written ({said}); undo "
                                "the change to resume, or rerun with --restart to start over")
