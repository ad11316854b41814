"""The distill pass's learning-rate schedule (distill_utils.warmup_cosine): a warm-up as long as the run is
shortened, and the shipped recipes keep the one they write."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.distill_utils import warmup_cosine
from compress.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_a_warmup_not_below_steps_reaches_lr_and_decays(steps):
    """steps shortened for a quick try under the default warmup_steps 20: the rate reaches lr and decays
    (it ramped to 5/20 of lr, or ended at lr, before)."""
    rates = [warmup_cosine(s, steps, 20, min_ratio=0.1) for s in range(steps)]
    assert max(rates) == 1.0
    peak = rates.index(1.0)
    after = rates[peak:]
    assert after == sorted(after, reverse=True) and rates[-1] < 0.6  # decays from lr to the end
    from compress.distill_utils import warmup_length

    assert warmup_length(steps, 20) == steps // 10


def test_a_warmup_below_steps_is_as_written():
    from compress.distill_utils import warmup_length

    assert warmup_length(21, 20) == 20 and warmup_length(200, 0) == 0
    assert [warmup_cosine(s, 200, 20) for s in range(20)] == [(s + 1) / 20 for s in range(20)]


def test_shipped_recipes_warm_up_as_written():
    """The cap leaves every shipped recipe's schedule (and so its results) as it was."""
    from compress.distill_utils import warmup_length

    configs = [p.config for path in RECIPES for p in load_recipe(path).passes if p.name == "distill"]
    assert configs
    assert all(warmup_length(c.steps, c.warmup_steps) == c.warmup_steps for c in configs)
