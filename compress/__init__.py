"""dit-compress: a low-rank / SVD compression compiler for diffusion transformers."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy public API: keeps `import compress` cheap
    if name == "load_teacher":
        from compress.io import load_teacher

        return load_teacher
    if name == "save_compressed":
        from compress.io_export import save_compressed

        return save_compressed
    if name == "load_transformer":
        from compress.io_output import load_transformer

        return load_transformer
    if name == "load_pipeline":
        from compress.io_pipeline import load_pipeline

        return load_pipeline
    if name == "merge_lora":
        from compress.lora import merge_lora

        return merge_lora
    if name == "LowRankLinear":
        from compress.lowrank import LowRankLinear

        return LowRankLinear
    raise AttributeError(name)
