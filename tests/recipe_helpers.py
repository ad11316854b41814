"""Shared by the recipe tests: the one line a recipe is refused in."""

from __future__ import annotations

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe


def refusal(text: str, overrides=()) -> str:
    """The UserError parse_recipe raises for `text` read as r.yaml (`overrides`: --set KEY=VALUE), as a string."""
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(overrides))
    return str(e.value)
