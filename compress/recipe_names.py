"""The names a recipe chooses among whose meaning lives in modules that import torch: the linear roles
svd patterns target (arch.base gives each linear one) and the factorization methods (linalg). Here,
torch-free, so that a recipe naming a role or method wrongly is refused before torch's start-up."""

from __future__ import annotations

ROLES = ("attention", "cross_attention", "mlp", "modulation", "embedding", "output")
METHODS = ("svd", "asvd", "whitened")  # svd.method: linalg.factorize's
