"""dit-compress: a low-rank / SVD compression compiler for diffusion transformers."""

__version__ = "0.2.0"  # the one version: pyproject reads it (dynamic), --version and report.json say it

# the public API, each name imported from its module on first use: keeps `import compress` cheap (no torch)
_PUBLIC = {"load_teacher": "compress.io", "save_compressed": "compress.io_export",
           "load_transformer": "compress.io_output", "load_pipeline": "compress.io_pipeline",
           "merge_lora": "compress.lora", "LowRankLinear": "compress.lowrank"}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
