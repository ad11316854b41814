"""Model-family adapters. `get_adapter(model_or_name)` picks one; the table is explicit."""

from __future__ import annotations

from compress.arch.base import Adapter, BlockGroup, LinearInfo
from compress.arch.flux import FluxAdapter
from compress.arch.pixart import PixArtAdapter
from compress.errors import UserError
from compress.recipe_names import ROLES

ADAPTERS: dict[str, type[Adapter]] = {"pixart": PixArtAdapter, "flux": FluxAdapter}
_BY_CLASS = {cls.class_name: name for name, cls in ADAPTERS.items()}
SUPPORTED = ", ".join(sorted(_BY_CLASS))


def family_of_class(class_name: str) -> str:
    if class_name not in _BY_CLASS:
        raise UserError(f"unsupported model class '{class_name}'; supported: {SUPPORTED}")
    return _BY_CLASS[class_name]


def get_adapter(model_or_family) -> Adapter:
    """An adapter for a model instance, a class name or a family name ('pixart', 'flux')."""
    if isinstance(model_or_family, str):
        name = model_or_family if model_or_family in ADAPTERS else family_of_class(model_or_family)
    else:
        name = family_of_class(type(model_or_family).__name__)
    return ADAPTERS[name]()


def group_modules(group: str) -> tuple[str, str]:
    """How text names the blocks of block group `group` (a recipe's remove_blocks key, the reports'
    labels): (the module list holding them, as the weights and the per-layer tables name it; the
    group in parentheses where its family has several, as remove_blocks' `blocks` must name it):
    ("single_transformer_blocks", " (single)"), PixArt's ("transformer_blocks", ""). A group no family
    has: itself, no note."""
    for adapter in ADAPTERS.values():
        for g in adapter.groups:
            if g.name == group:
                return g.attr, f" ({group})" if len(adapter.groups) > 1 else ""
    return group, ""


def block_module(label: str) -> str:
    """A block label as the reports key it ("double.1", "blocks.4") by its module name
    ("transformer_blocks.1"); anything else ("-", "top level") as it is."""
    group, _, index = label.rpartition(".")
    return f"{group_modules(group)[0]}.{index}" if group and index.isdigit() else label


def teacher_note(student: int, teacher: int) -> str:
    """What follows a student block's name where removal renumbered it, as inspect writes it:
    " (teacher 5)" for student block 4 that was the teacher's 5; "" where the two are the same."""
    return "" if student == teacher else f" (teacher {teacher})"


__all__ = ["ADAPTERS", "ROLES", "Adapter", "BlockGroup", "LinearInfo", "get_adapter",
           "family_of_class", "SUPPORTED", "group_modules", "block_module", "teacher_note"]
