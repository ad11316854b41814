"""Passes inserted, removed or moved, in words (compress/runner_resume_moves.py), as --resume's
recipe comparison says them (runner_resume.recipe_changes)."""

import json

from compress.runner_resume import not_kept_in_words, recipe_changes
from compress.runner_resume_moves import differing, pass_moves

ATTENTION = {"svd": {"targets": ["attention"], "ratio": 0.6}}
MODULATION = {"svd": {"targets": ["modulation"], "ranks": {"modulation": 8}}}
DISTILL = {"distill": {"steps": 10}}
REMOVAL = {"remove_blocks": {"count": {"blocks": 1}}}


class _Pass:
    result_free = ("progress",)

    def __init__(self, name: str):
        self.name = name


def _changes(before: list, now: list, done: int | None = None) -> list[str]:
    return recipe_changes({"passes": before}, {"passes": now}, [_Pass(next(iter(s))) for s in now], done)


def test_a_pass_inserted_removed_or_moved_is_named_so():
    assert _changes([ATTENTION], [MODULATION, ATTENTION], 1) == ["an svd pass inserted at passes.0"]
    assert _changes([ATTENTION, DISTILL], [ATTENTION, MODULATION, DISTILL], 2) == ["an svd pass inserted at passes.1"]
    assert _changes([REMOVAL, ATTENTION, DISTILL], [REMOVAL, DISTILL], 3) == ["an svd pass removed from passes.1"]
    assert _changes([ATTENTION, DISTILL], [DISTILL, ATTENTION], 2) == ["a distill pass moved from passes.1 to passes.0"]
    assert _changes([DISTILL], [REMOVAL, DISTILL], 1) == ["a remove_blocks pass inserted at passes.0"]


def test_an_edit_keeps_its_keys_beside_a_pass_inserted_and_alone():
    edited = {"svd": {"targets": ["attention"], "ratio": 0.5}}
    assert _changes([ATTENTION, DISTILL], [edited, DISTILL], 2) == ["passes.0.svd.ratio"]
    assert _changes([ATTENTION, DISTILL], [MODULATION, edited, DISTILL], 2) == [
        "an svd pass inserted at passes.0", "passes.1.svd.ratio"]
    assert recipe_changes({"passes": [ATTENTION], "calibration": {"seed": 0}},
                          {"passes": [MODULATION, ATTENTION], "calibration": {"seed": 1}}, [_Pass("svd")] * 2, 1) == [
        "calibration.seed", "an svd pass inserted at passes.0"]


def test_what_a_resume_keeps_is_compared_as_before():
    """A pass inserted after those a stage holds: nothing a resume keeps changed, nor said beside an edit
    of those; a result-free key of the moved pass is not a difference either."""
    assert _changes([ATTENTION, DISTILL], [ATTENTION, MODULATION, DISTILL], 1) == []
    edited = {"svd": {"targets": ["attention"], "ratio": 0.5}}  # a pass added after the edited one a stage holds
    assert _changes([REMOVAL, ATTENTION], [REMOVAL, edited, DISTILL], 2) == ["passes.1.svd.ratio"]
    quiet = {"svd": dict(ATTENTION["svd"], progress=False)}
    assert _changes([quiet], [MODULATION, ATTENTION], 1) == ["an svd pass inserted at passes.0"]
    assert pass_moves([json.dumps(ATTENTION)], [json.dumps(MODULATION)]) is None  # an edit: the keys say it


def test_a_streamed_run_still_says_which_passes_before_an_insertion_it_cannot_resume_from():
    changed = _changes([REMOVAL, ATTENTION, DISTILL, DISTILL], [REMOVAL, ATTENTION, MODULATION, DISTILL, DISTILL], 4)
    assert changed == ["an svd pass inserted at passes.2"]
    assert not_kept_in_words(3, changed, True) == (": a streamed run keeps only its latest stage (pass 4), so passes "
                                                   "1-2, before the changed one, cannot be resumed from")


def test_differing_names_the_dotted_keys():
    assert differing({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}, "c": 1}) == ["a.b.1", "c"]
