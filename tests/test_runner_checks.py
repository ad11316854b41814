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
     "remove_blocks: removing 2 of 1 blocks would leave group 'blocks' empty; keep at least one "
     + SEEN.format(1)),
    ("  - remove_blocks: {count: 2}\n  - remove_blocks: {count: 2}\n",  # one group: a bare count is its own
     "remove_blocks: removing 2 of 1 blocks would leave group 'blocks' empty; keep at least one "
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
