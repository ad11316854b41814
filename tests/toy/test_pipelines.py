import numpy as np
import torch
from PIL import Image

from compress.toy.data import family_module
from compress.toy.weights import load_toy_pipeline


def generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_pipeline_returns_images_and_is_deterministic(family, teachers):
    pipe = load_toy_pipeline(family, transformer=teachers[family])
    kwargs = dict(num_inference_steps=4, guidance_scale=3.0, output_type="pt")
    a = pipe(["a handwritten 7", "a handwritten 1"], generator=generators(2), **kwargs).images
    b = pipe(["a handwritten 7", "a handwritten 1"], generator=generators(2), **kwargs).images
    assert a.shape == (2, 1, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    c = pipe(["a handwritten 7", "a handwritten 1"], generator=generators(2, seed=9), **kwargs).images
    assert not torch.equal(a, c)


def test_output_types_and_no_guidance(family, teachers):
    pipe = load_toy_pipeline(family, transformer=teachers[family])
    pil = pipe("a handwritten 3", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    arr = pipe("a handwritten 3", num_inference_steps=2, guidance_scale=1.0, num_images_per_prompt=2,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 16, 16, 1)


def test_student_drops_in(family):
    student = family_module(family).new_transformer(seed=1).eval()  # stands in for a compressed model
    pipe = load_toy_pipeline(family, transformer=student)
    assert pipe.transformer is student
    out = pipe("a handwritten 0", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 1, 16, 16)
