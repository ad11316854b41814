import re

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux

FLUX = """\
model: flux
teacher: toy:flux
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
{passes}"""


def _check(passes: str):
    recipe = parse_recipe(FLUX.format(passes=passes), "r.yaml")
    teacher = tiny_flux()
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "r.yaml")
    return teacher


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().err.split()) + " ".join(capsys.readouterr().out.split())


def test_a_pass_that_fails_if_a_spread_removal_takes_its_block_is_warned(capsys):
    """A bare count over Flux's two groups is placed by importance at run time: an svd pass naming
    the last single block fails if both removed blocks come from the single group. That is said
    before compute, naming both lines; the recipe may still be right, so it is not an error."""
    last = len(tiny_flux().single_transformer_blocks) - 1
    teacher = _check("  - remove_blocks: {count: 2, criterion: proxy}\n"
                     f"  - svd: {{targets: [single_transformer_blocks.{last}.proj_out], ratio: 0.5}}\n")
    said = _said(capsys)
    assert re.search(rf"warning: r\.yaml:6: svd\.targets: pattern 'single_transformer_blocks\.{last}\.proj_out' "
                     r"matches no linear layer.* if the removal at line 5 takes all 2 of its blocks from group "
                     r"'single'", said), said
    assert len(teacher.single_transformer_blocks) == last + 1  # the teacher is left as it was


@pytest.mark.parametrize("passes", [
    "  - remove_blocks: {count: 2, criterion: proxy}\n  - svd: {targets: [single_transformer_blocks.0.proj_out]}\n",
    "  - remove_blocks: {count: {single: 2}}\n  - svd: {targets: [transformer_blocks.1.attn.to_q]}\n",
])
def test_passes_that_hold_wherever_the_blocks_go_are_not_warned(capsys, passes):
    _check(passes)
    assert "warning" not in _said(capsys)


def test_a_per_group_count_is_still_checked_upfront():
    last = len(tiny_flux().single_transformer_blocks) - 1
    with pytest.raises(UserError, match=r"r\.yaml:6: svd\.targets: .* \(the pass at line 5 removed blocks"):
        _check(f"  - remove_blocks: {{count: {{single: 1}}}}\n"
               f"  - svd: {{targets: [single_transformer_blocks.{last}.proj_out]}}\n")


def test_plan_gives_the_same_warning(capsys):
    from compress.plan import make_plan, meta_model

    last = len(meta_model("toy:flux").single_transformer_blocks) - 1
    recipe = parse_recipe(FLUX.format(passes="  - remove_blocks: {count: 2, criterion: proxy}\n"
                                      f"  - svd: {{targets: [single_transformer_blocks.{last}.proj_out]}}\n"),
                          "r.yaml")
    make_plan(recipe)
    assert "warning: r.yaml:6: svd.targets" in _said(capsys)
