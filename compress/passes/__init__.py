"""The one explicit table from recipe pass names to pass classes (imported lazily), and a recipe's
passes made from it."""

from __future__ import annotations

import importlib

PASSES = {
    "importance": "compress.passes.importance:ImportancePass",
    "remove_blocks": "compress.passes.remove_blocks:RemoveBlocksPass",
    "svd": "compress.passes.svd:SVDPass",
    "distill": "compress.passes.distill:DistillPass",
}


def pass_class(name: str):
    """The pass class `name` names; its module imported with a Ctrl-C held to its end (torch's and
    diffusers' start-up the first time: interrupts.interrupts_held)."""
    from compress.interrupts import interrupts_held

    module, _, cls = PASSES[name].partition(":")
    with interrupts_held():
        imported = importlib.import_module(module)
    return getattr(imported, cls)


def build_passes(recipe) -> list:
    """The recipe's passes in order, each made from its validated config (`PassSpec.config`); `run`
    makes them once and hands them to its checks and its memory estimate (plan.make_plan)."""
    return [pass_class(spec.name)(spec.config) for spec in recipe.passes]
