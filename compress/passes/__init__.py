"""The one explicit table from recipe pass names to pass classes (imported lazily), beside it each
pass's config class (its recipe keys: a module that imports no torch, so a recipe's pass options are
checked before torch's start-up), and a recipe's passes made from them."""

from __future__ import annotations

import importlib

PASSES = {
    "importance": "compress.passes.importance:ImportancePass",
    "remove_blocks": "compress.passes.remove_blocks:RemoveBlocksPass",
    "svd": "compress.passes.svd:SVDPass",
    "distill": "compress.passes.distill:DistillPass",
}
CONFIGS = {  # each pass's config_cls, imported without its pass (tests/passes/test_init.py: the same class)
    "importance": "compress.passes.importance_config:ImportanceConfig",
    "remove_blocks": "compress.passes.remove_blocks_config:RemoveBlocksConfig",
    "svd": "compress.passes.svd_config:SVDConfig",
    "distill": "compress.passes.distill_config:DistillConfig",
}


def pass_class(name: str):
    """The pass class `name` names; its module imported with a Ctrl-C held to its end (torch's and
    diffusers' start-up the first time: interrupts.interrupts_held)."""
    from compress.interrupts import interrupts_held

    module, _, cls = PASSES[name].partition(":")
    with interrupts_held():
        imported = importlib.import_module(module)
    return getattr(imported, cls)


def config_class(name: str) -> type:
    """The config dataclass of the pass `name` (its recipe keys), its module imported alone: no torch."""
    module, _, cls = CONFIGS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_passes(recipe) -> list:
    """The recipe's passes in order, each made from its validated config (`PassSpec.config`); `run`
    makes them once and hands them to its checks and its memory estimate (plan.make_plan). Each knows
    its `index` in the recipe's passes (its words name its keys: passes.2.distill.lr)."""
    passes = [pass_class(spec.name)(spec.config) for spec in recipe.passes]
    for i, p in enumerate(passes):
        p.index = i
    return passes
