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
