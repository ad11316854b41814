"""Counts in words, the noun agreeing with its number: '1 layer', '2 layers'."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and `noun`, plural for any count but 1 (`plural`: where it is not `noun` + 's')."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
