"""The embedded default: two small trained teachers of the real architectures (toy PixArt-Σ and toy
Flux.1, on scikit-learn's handwritten digits), their pipelines, and an evaluator.

    from compress.toy import load_toy_teacher, load_toy_pipeline
    teacher = load_toy_teacher("pixart")                  # a diffusers PixArtTransformer2DModel
    pipe = load_toy_pipeline("pixart", transformer=student)
    images = pipe("a handwritten 7", num_inference_steps=20, guidance_scale=3.0).images

    from compress.toy.evaluate import evaluate, prediction_error
    from compress.toy.data import model_inputs, training_batch
"""

_WEIGHTS_API = ("load_toy_teacher", "load_toy_pipeline", "load_text_encoder", "FAMILIES")


def __getattr__(name):  # lazy: keeps `import compress.toy` free of diffusers / sklearn imports
    if name in _WEIGHTS_API:
        from compress.toy import weights

        return getattr(weights, name)
    raise AttributeError(name)
