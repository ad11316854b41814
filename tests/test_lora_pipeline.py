"""A LoRA loaded the diffusers way (pipe.load_lora_weights) into a pipeline of load_pipeline: on
factorized layers diffusers failed with a bare KeyError (Flux); the error now says what to do."""

import pytest
import torch
from safetensors.torch import save_file

from compress import load_pipeline
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_flux

pytest.importorskip("peft")
pytest.importorskip("transformers")


def _to_q_lora(transformer, path):
    """A diffusers-keyed LoRA of rank 2 on transformer_blocks.0.attn.to_q."""
    to_q = transformer.transformer_blocks[0].attn.to_q
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, to_q.in_features),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(to_q.out_features, 2)},
              str(path))
    return path


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    from tests.pipelines import flux_pipeline

    root = tmp_path_factory.mktemp("base")
    return flux_pipeline(root / "pipe")


def test_load_lora_weights_on_a_factorized_flux_says_to_merge_the_lora(tmp_path, flux_base):
    out = save_compressed(factorize(tiny_flux(), ["transformer_blocks.0.attn.to_q"], rank=2), tmp_path / "out")
    pipe = load_pipeline(out, base=str(flux_base))
    lora = _to_q_lora(pipe.transformer, tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=r"load_lora_weights failed \(KeyError: 'transformer_blocks\.0\.attn\.to_q"
                                         r"\.weight'\): the pipeline's transformer is a dit-compress output with "
                                         r"factorized layers.*compress\.merge_lora\(pipe\.transformer, LORA\) or "
                                         r"`dit-compress lora OUT LORA NEW`") as caught:
        pipe.load_lora_weights(str(lora))
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.filterwarnings("ignore::UserWarning")  # peft: a second adapter, deleted when it fails
def test_load_lora_weights_of_a_dense_output_is_diffusers_own(tmp_path, flux_base):
    """No factorized layer: the LoRA loads, and a failure is diffusers' own error, untouched."""
    pipe = load_pipeline(save_compressed(tiny_flux(), tmp_path / "out"), base=str(flux_base))
    pipe.load_lora_weights(str(_to_q_lora(pipe.transformer, tmp_path / "lora.safetensors")))
    assert hasattr(pipe.transformer.transformer_blocks[0].attn.to_q, "lora_A")
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 3),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(5, 2)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(Exception) as caught:
        pipe.load_lora_weights(str(tmp_path / "bad.safetensors"), adapter_name="bad")
    assert "dit-compress" not in str(caught.value)
