"""The toy pipelines answer DiffusionPipeline's placement API (.device, .to, model CPU offload) as the
real ones do. Each test loads its own pipeline: .to() converts the transformer in place, and the
session's `teachers` fixture is shared."""

import pytest
import torch

from compress.toy.vae import ToyVAE
from compress.toy.weights import load_text_encoder, load_toy_pipeline

SAMPLE = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt")


def _sample(pipe):
    return pipe("a handwritten 7", generator=torch.Generator().manual_seed(0), **SAMPLE).images


def test_device_and_to_cpu_keep_the_samples(family):
    pipe = load_toy_pipeline(family)
    before = _sample(pipe)
    assert pipe.device == torch.device("cpu")
    assert pipe.to("cpu") is pipe
    assert torch.equal(_sample(pipe), before)


def test_to_float16_converts_every_component(family):
    pipe = load_toy_pipeline(family)
    pipe.to(torch.float16)
    assert pipe.dtype == torch.float16
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float16
    assert load_text_encoder().dtype == torch.float32  # the cached encoder is not the pipeline's
    pipe.to(torch.float32)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.float32


def test_model_cpu_offload_samples_as_before(family):
    pipe = load_toy_pipeline(family)
    before = _sample(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device.type == "cpu"
    assert torch.equal(_sample(pipe), before)


def test_vae_placement_is_not_saved():
    vae = ToyVAE().to(torch.float16)
    assert vae.dtype == torch.float16 and vae.device == torch.device("cpu")
    assert vae.state_dict() == {}  # saved toy pipelines and their checksums stay as they were


def test_sequential_offload_samples_as_before(family):
    """What enable_sequential_cpu_offload does (on CPU: its device="cpu" trips an accelerate bug with
    cpu:0): every leaf's weights sit on `meta` until its own hook loads them. The text encoder put
    its token ids on token_embedding's device, `meta` at that point."""
    accelerate = pytest.importorskip("accelerate")
    pipe = load_toy_pipeline(family)
    before = _sample(pipe)
    for name in ("text_encoder", "transformer"):
        accelerate.cpu_offload(getattr(pipe, name), execution_device=torch.device("cpu"))
    assert pipe.text_encoder.token_embedding.weight.device.type == "meta"
    assert torch.equal(_sample(pipe), before)
