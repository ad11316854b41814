"""The one explicit table from recipe pass names to pass classes (imported lazily)."""

from __future__ import annotations

import importlib

PASSES = {
    "importance": "compress.passes.importance:ImportancePass",
    "remove_blocks": "compress.passes.remove_blocks:RemoveBlocksPass",
    "svd": "compress.passes.svd:SVDPass",
    "distill": "compress.passes.distill:DistillPass",
}


def pass_class(name: str):
    module, _, cls = PASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
