"""The `importance` pass's recipe keys (`ImportanceConfig`) and the check of a `buckets` key it shares
with remove_blocks. Imports no torch: recipe.load_recipe builds it before torch's start-up."""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import BadValue, not_at_least_one


@dataclass
class ImportanceConfig:
    """Recipe keys of the `importance` pass (measures; changes nothing)."""

    buckets: int = 3  # timestep buckets: early (high noise) .. late
    proxy_only: bool = False  # only the cosine proxy: one forward per batch, no skip passes
    progress: bool = True

    def validate(self) -> None:
        check_buckets(self.buckets, "importance")


def check_buckets(buckets, what: str) -> None:
    """A config's `buckets`: an integer ≥ 1 (BadValue names the key)."""
    if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
        raise BadValue("buckets", not_at_least_one(f"{what}.buckets", buckets), reads=())
