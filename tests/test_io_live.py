"""A loaded output's diffusers config (io_live.register_compression) and what its writer puts there: plain
diffusers' from_pretrained refuses a folder with factorized layers in one line naming load_transformer (it
loaded those layers without weights: on meta, or random with low_cpu_mem_usage=False, giving NaN with no
error); a model whose weights are on the meta device is refused by save_pretrained in one line."""

import copy
import json
import pickle

import pytest
import torch
from diffusers import DiffusionPipeline

from compress import load_transformer, save_compressed
from compress.config_compare import config_differences
from compress.errors import UserError
from tests.conftest import factorize, forward, model_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = {"PixArtTransformer2DModel": "transformer_blocks.0.attn1.to_q",
         "FluxTransformer2DModel": "single_transformer_blocks.0.proj_mlp"}
REFUSAL_KEY = "quantization_config"  # what diffusers reads; its quant_method is what diffusers' refusal quotes
REFUSAL = {"quant_method": "dit-compress (a low-rank output, not quantized: load it with compress.load_transformer)"}
REFUSED = r"^Unknown quantization type, got dit-compress \(a low-rank output, not quantized: load it with " \
          r"compress\.load_transformer\) - supported types are: \["


@pytest.fixture
def out(tiny_model, tmp_path):
    return save_compressed(factorize(tiny_model, [LAYER[type(tiny_model).__name__]], rank=4), tmp_path / "out")


def _config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("low_cpu_mem_usage", [None, False])
def test_plain_from_pretrained_refuses_an_output_naming_load_transformer(out, tiny_model, low_cpu_mem_usage):
    """diffusers 0.42.1 warned that the .down / .up weights were not used and left the layer on meta (the first
    forward failed), or with low_cpu_mem_usage=False filled it with random weights: NaN with no error. Both
    load paths of load_transformer (the weights' dtype, and a cast) still give the saved model."""
    with pytest.raises(ValueError, match=REFUSED):
        type(tiny_model).from_pretrained(out, low_cpu_mem_usage=low_cpu_mem_usage)
    inputs = model_inputs(tiny_model)
    assert torch.equal(forward(load_transformer(out), inputs), forward(tiny_model, inputs))
    half = load_transformer(out, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.isfinite(forward(half.float(), inputs)).all()


def test_a_loaded_outputs_save_pretrained_keeps_the_refusal_and_loads_back(out, tiny_model, tmp_path):
    model = load_transformer(out)
    model.save_pretrained(tmp_path / "saved")
    assert _config(tmp_path / "saved")[REFUSAL_KEY] == REFUSAL
    with pytest.raises(ValueError, match=REFUSED):
        type(tiny_model).from_pretrained(tmp_path / "saved")
    inputs = model_inputs(tiny_model)
    assert torch.equal(forward(load_transformer(tmp_path / "saved"), inputs), forward(model, inputs))
    copy.deepcopy(model).save_pretrained(tmp_path / "copy")  # a copy's config reads the copy's layers
    assert _config(tmp_path / "copy")[REFUSAL_KEY] == REFUSAL
    assert pickle.loads(pickle.dumps(model)).config[REFUSAL_KEY] == REFUSAL
    type(tiny_model).from_config(model.config)  # diffusers' from_config ignores it


def test_a_loaded_output_made_dense_keeps_the_refusal_in_memory_and_saves_none(out, tiny_model, tmp_path):
    """docs/OUTPUTS.md (F1 stop 52): every factorized layer swapped for an nn.Linear after loading, save_pretrained
    writes null, while model.config.quantization_config in memory still shows the refusal (diffusers' frozen
    config holds the value registered at load); its to_dict() gives what a save writes."""
    from compress.lowrank import LowRankLinear

    model = load_transformer(out)
    for name, low in [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, torch.nn.Linear(low.in_features, low.out_features))
    model.save_pretrained(tmp_path / "dense")
    assert _config(tmp_path / "dense")[REFUSAL_KEY] is None
    assert model.config.quantization_config == REFUSAL and model.config.quantization_config.to_dict() is None


def test_an_output_written_before_the_refusal_loads_and_gains_it_when_saved_again(out, tiny_model, tmp_path):
    old = {k: v for k, v in _config(out).items() if k != REFUSAL_KEY}
    (out / "config.json").write_text(json.dumps(old))
    model = load_transformer(out)
    model.save_pretrained(tmp_path / "saved")
    assert _config(tmp_path / "saved")[REFUSAL_KEY] == REFUSAL


def test_an_output_with_blocks_removed_alone_still_loads_with_plain_from_pretrained(tiny_model, tmp_path):
    """No factorized layer, no refusal: not in the loaded model's config either (it showed the refusal
    there, while its save_pretrained wrote null: T4 stop 51), nor in what its save_pretrained writes."""
    out = save_compressed(tiny_model, tmp_path / "out")
    assert REFUSAL_KEY not in _config(out)
    type(tiny_model).from_pretrained(out)
    model = load_transformer(out)
    assert REFUSAL_KEY not in model.config and "compression" in model.config
    model.save_pretrained(tmp_path / "saved")
    assert REFUSAL_KEY not in _config(tmp_path / "saved")
    type(tiny_model).from_pretrained(tmp_path / "saved")
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), load_transformer(tmp_path / "saved")):
        assert REFUSAL_KEY not in twin.config


def test_the_refusal_is_no_difference_from_the_teacher(out, tiny_model):
    """eval, bench and load_pipeline compare the output's config with its teacher's."""
    name = type(tiny_model).__name__
    assert config_differences({**dict(tiny_model.config), REFUSAL_KEY: REFUSAL}, dict(tiny_model.config), name) == []
    assert config_differences(_config(out), dict(tiny_model.config), name) == []
    assert config_differences(dict(load_transformer(out).config), dict(tiny_model.config), name) == []


def test_a_pipeline_saved_with_an_output_is_refused_by_plain_diffusers_and_loads_with_load_pipeline(tmp_path):
    """DiffusionPipeline.from_pretrained read its transformer/ as plain from_pretrained does."""
    from compress import load_pipeline
    from compress.io import load_teacher
    from tests.pipelines import pixart_pipeline

    base = pixart_pipeline(tmp_path / "base")
    teacher = load_teacher(str(base))
    out = save_compressed(factorize(copy.deepcopy(teacher), [LAYER[type(teacher).__name__]], rank=2),
                          tmp_path / "out", extra={"teacher": str(base)})
    load_pipeline(out).save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match=REFUSED):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert load_pipeline(tmp_path / "saved").transformer.get_submodule(LAYER[type(teacher).__name__]).rank == 2


@pytest.mark.parametrize("how", [{}, {"safe_serialization": False}])
def test_save_pretrained_of_a_model_on_the_meta_device_says_so_in_one_line(out, tmp_path, how):
    """It wrote config.json and ended in safetensors' 'Cannot copy out of meta tensor; no data!' traceback
    (torch.save, safe_serialization=False, wrote a weight file of no data)."""
    model = load_transformer(out, device="meta")
    with pytest.raises(UserError, match=r"^save_pretrained: the model holds no weights \(\S+ is on "
                                        r"the meta device, not materialized, .*device='meta'.*\); load it on a real "
                                        r"device to save it$"):
        model.save_pretrained(tmp_path / "saved", **how)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json"]
    load_transformer(out).save_pretrained(tmp_path / "real")  # a real one saves (the check, once)


def test_load_transformer_inside_init_empty_weights_says_so_in_one_line(out):
    """accelerate's init_empty_weights put each weight taken on meta: torch's 'Cannot copy out of meta tensor'."""
    from accelerate import init_empty_weights

    with init_empty_weights(), pytest.raises(UserError, match=r"^load_transformer: the weights were put on the "
                                                              r"meta device .*init_empty_weights"):
        load_transformer(out)


def test_accelerates_state_dict_of_a_weightless_output_is_no_save(out, tiny_model):
    """The save_pretrained refusal is save_pretrained's alone (R2 stop 51: 1c47d1e's state_dict pre-hook refused
    every state_dict() of a model whose weights are all on meta): accelerate's cpu_offload(offload_buffers) leaves
    them there and a state_dict() after it is asked for by design, as load_checkpoint_in_model asks one of a
    model loaded with device='meta' (below, Flux: a PixArt output's pos_embed buffer is not in its files)."""
    from accelerate import cpu_offload
    from accelerate.utils import load_checkpoint_in_model

    inputs = model_inputs(tiny_model)
    offloaded = load_transformer(out)
    cpu_offload(offloaded, execution_device=torch.device("cpu"), offload_buffers=True)
    assert offloaded.state_dict() and torch.allclose(forward(offloaded, inputs), forward(tiny_model, inputs))
    weightless = load_transformer(out, device="meta")
    assert all(t.is_meta for t in weightless.state_dict().values())
    if type(tiny_model).__name__ == "FluxTransformer2DModel":
        load_checkpoint_in_model(weightless, str(next(out.glob("*.safetensors"))), device_map={"": "cpu"})
        assert torch.allclose(forward(weightless, inputs), forward(tiny_model, inputs))


def _offloaded(out, tmp_path, how):
    from accelerate import cpu_offload, disk_offload

    model = load_transformer(out)
    if how == "cpu_offload":
        cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        disk_offload(model, offload_dir=str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    return model


def _save(model, saver, folder):
    return model.save_pretrained(folder) if saver == "save_pretrained" else save_compressed(model, folder)


@pytest.mark.parametrize("saver", ["save_pretrained", "save_compressed"])
@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload"])
def test_saving_an_offloaded_output_says_it_is_offloaded(out, tiny_model, tmp_path, how, saver):
    """T4 stop 51: save_pretrained after accelerate's cpu_offload / disk_offload said 'load it on a real device'
    (the weights are in the hooks' map or its folder, not missing); R1 stop 52: save_compressed still said 'the
    model holds no weights (... not materialized, as load_transformer(out, device='meta') leaves them)'."""
    model = _offloaded(out, tmp_path, how)
    with pytest.raises(UserError, match=rf"^{saver}: the model's weights are offloaded by accelerate \(\S+ is "
                                        r"on the meta device.*: save it before offloading, or once "):
        _save(model, saver, tmp_path / "saved")
    assert not (tmp_path / "saved").exists() or saver == "save_pretrained"  # (its config.json is written first)
    inputs = model_inputs(tiny_model)
    assert torch.allclose(forward(model, inputs), forward(tiny_model, inputs))  # the offloaded model still runs


@pytest.mark.parametrize("saver", ["save_pretrained", "save_compressed"])
@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload"])
def test_what_the_offloaded_refusal_advises_imports_and_saves_the_model(out, tiny_model, tmp_path, how, saver):
    """R1 stop 52: the words advised accelerate.utils.get_state_dict_offloaded_model(model), no import path in
    accelerate 1.16 (it is accelerate.utils.modeling's), whose plain dict load_transformer cannot read. Each name
    the words give imports, and doing what they say saves the model, which loads back as it was."""
    import importlib
    import re

    from accelerate.hooks import remove_hook_from_module

    model = _offloaded(out, tmp_path, how)
    with pytest.raises(UserError) as refused:
        _save(model, saver, tmp_path / "saved")
    words = str(refused.value)
    assert words.endswith(": save it before offloading, or once accelerate.hooks.remove_hook_from_module(model, "
                          "recurse=True) has put its weights back (or load the output again with "
                          "compress.load_transformer, without offloading, and save that)")
    for name in re.findall(r"\b(?:accelerate|compress)(?:\.\w+)+", words):
        where, _, what = name.rpartition(".")
        assert hasattr(importlib.import_module(where), what), name
    remove_hook_from_module(model, recurse=True)
    _save(model, saver, tmp_path / "again")
    inputs = model_inputs(tiny_model)
    assert torch.allclose(forward(load_transformer(tmp_path / "again"), inputs), forward(tiny_model, inputs))


def test_save_pretrained_of_a_model_with_one_weight_on_meta_counts_them(out, tmp_path):
    """R3 stop 51: since 4759ec1 refused any weight on meta inside save_pretrained, a model with one said 'the model
    holds no weights'; it counts them."""
    model = load_transformer(out)
    name, _ = next(iter(model.named_parameters()))
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    setattr(module, leaf, torch.nn.Parameter(torch.empty_like(getattr(module, leaf), device="meta")))
    total = len(model.state_dict())
    with pytest.raises(UserError, match=rf"^save_pretrained: 1 of the model's {total} weights are not there "
                                        rf"\({name} is on the meta device"):
        model.save_pretrained(tmp_path / "saved")


def test_peft_model_card_of_a_lora_trained_on_an_output_names_no_quantization(out, tmp_path):
    """PeftModel.save_pretrained of a LoRA on a loaded factorized output wrote in its README.md 'The following
    `bitsandbytes` quantization config was used during training: - quant_method: dit-compress (a low-rank
    output, not quantized: ...)' (peft reads config.quantization_config); now the card says nothing of it,
    and the model's own save_pretrained still writes the refusal."""
    peft = pytest.importorskip("peft")

    model = load_transformer(out)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["to_k"]))
    wrapped.save_pretrained(tmp_path / "lora")
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "PEFT" in card and "quantization" not in card and "dit-compress" not in card
    wrapped.unload().save_pretrained(tmp_path / "saved")
    assert _config(tmp_path / "saved")[REFUSAL_KEY] == REFUSAL
