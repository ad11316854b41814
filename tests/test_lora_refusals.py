"""merge_lora's refusals, each one line: a LoRA that is missing, unreadable or not for this model, no
peft installed, keys nothing reads (a LyCORIS DoRA's dora_scale, a stray `lora.up`, an alpha without
weights), a DoRA module without its magnitude, and a scale that merges nothing, is not a number or
overflows the weights (a numpy scale is a scale)."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import tiny_flux, tiny_pixart
from tests.test_lora import _lora, _student

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.filterwarnings("ignore:.*lora_bias=True. was passed")
def test_lora_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no LoRA there"):
        merge_lora(tiny_flux(), tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="not a LoRA diffusers reads"):
        merge_lora(tiny_flux(), tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="Hugging Face Hub"):
        merge_lora(tiny_flux(), "nobody/no-such-lora")
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text("{")
    with pytest.raises(UserError, match="not a readable peft LoRA adapter"):
        merge_lora(tiny_flux(), tmp_path / "peft")
    no_bias = tiny_pixart()
    no_bias.transformer_blocks[0].attn1.to_q.bias = None
    with pytest.raises(UserError, match="a bias on lora_B for 'transformer_blocks.0.attn1.to_q', a layer without"):
        merge_lora(no_bias, {f"transformer.transformer_blocks.0.attn1.to_q.lora_{k}": torch.ones(shape)
                             for k, shape in [("A.weight", (2, 16)), ("B.weight", (16, 2)), ("B.bias", (16,))]})
    _lora(tiny_flux(), tmp_path / "flux-lora")
    with pytest.raises(UserError, match="which PixArtTransformer2DModel does not have"):
        merge_lora(tiny_pixart(), tmp_path / "flux-lora")


def test_without_peft_the_error_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'dit-compress\[lora\]'"):
        merge_lora(tiny_flux(), tmp_path / "lora.safetensors")


def _module_lora(name: str, out_f: int, in_f: int, how: str, **extra) -> dict:
    """A rank-2 LoRA state dict on module `name` (diffusers- or kohya-style keys) plus `extra` parts."""
    a, b = torch.randn(2, in_f), torch.randn(out_f, 2)
    if how == "kohya":
        prefix = "lora_unet_" + name.replace(".", "_")
        state = {f"{prefix}.lora_down.weight": a, f"{prefix}.lora_up.weight": b, f"{prefix}.alpha": torch.tensor(2.0)}
    else:
        prefix = f"transformer.{name}"
        state = {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}
    return state | {f"{prefix}.{k}": v for k, v in extra.items()}


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")
def test_keys_nothing_reads_are_refused_not_dropped(tmp_path):
    """peft ignores keys it does not know (and diffusers drops a Flux LoRA's dora_scale): a LyCORIS DoRA's
    dora_scale, a `lora.up` beside lora_A, an alpha of a module without weights would be merged as if absent. Each is a one-line error naming
    the key (dora_scale: refused, LyCORIS's norms and strength are not peft's DoRA's)."""
    from safetensors.torch import save_file

    q, k = "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"
    out_f, in_f = tiny_pixart().get_submodule(q).weight.shape
    rows = _module_lora(q, out_f, in_f, "kohya", dora_scale=torch.rand(out_f, 1) + 1)  # LyCORIS wd_on_out
    save_file(rows, str(tmp_path / "rows.safetensors"))
    with pytest.raises(UserError, match=r"rows.safetensors: 'lora_unet_transformer_blocks_0_attn1_to_q.dora_scale' "
                                        r"is a LyCORIS DoRA \(dora_scale, row norms\), which is not supported"):
        merge_lora(tiny_pixart(), tmp_path / "rows.safetensors")
    columns = _module_lora(q, out_f, in_f, "diffusers", dora_scale=torch.rand(1, in_f) + 1)  # LyCORIS's default
    with pytest.raises(UserError, match=r"LyCORIS DoRA \(dora_scale, column-wise norms\), which is not supported$"):
        merge_lora(tiny_pixart(), columns)
    stray = _module_lora(q, out_f, in_f, "diffusers") | {f"transformer.{k}.lora.up.weight": torch.randn(out_f, 2)}
    with pytest.raises(UserError, match=rf"^the LoRA state dict: 'transformer.{k}.lora.up.weight' is not a key "
                                        "peft reads, so merging would drop it silently"):
        merge_lora(tiny_pixart(), stray)
    alpha = _module_lora(q, out_f, in_f, "kohya") | {"lora_unet_transformer_blocks_0_attn1_to_k.alpha": torch.tensor(4.)}
    with pytest.raises(UserError, match="'lora_unet_transformer_blocks_0_attn1_to_k.alpha' is not a key peft reads"):
        merge_lora(tiny_pixart(), alpha)
    fq, fk = "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"  # Flux: diffusers' reader
    out_f, in_f = tiny_flux().get_submodule(fq).weight.shape
    flux = _module_lora(fq, out_f, in_f, "diffusers")
    save_file(flux | {f"transformer.{fq}.dora_scale": torch.rand(1, in_f)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(UserError, match=rf"flux.safetensors: 'transformer.{fq}.dora_scale' is a LyCORIS DoRA"):
        merge_lora(tiny_flux(), tmp_path / "flux.safetensors")  # diffusers drops it with a log line
    with pytest.raises(UserError, match=rf"'transformer.{fk}.lora.up.weight' is not a key peft reads"):
        merge_lora(tiny_flux(), flux | {f"transformer.{fk}.lora.up.weight": torch.randn(out_f, 2)})


def test_a_module_without_its_dora_magnitude_is_named(tmp_path):
    """A DoRA file where one module has lora_A and lora_B but no lora_magnitude_vector: the error says
    that its magnitude is missing (not that it has no weights)."""
    q, k = "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"
    out_f, in_f = tiny_pixart().get_submodule(q).weight.shape
    state = _module_lora(q, out_f, in_f, "diffusers", lora_magnitude_vector=torch.rand(out_f) + 1) | \
        _module_lora(k, out_f, in_f, "diffusers")
    with pytest.raises(UserError, match=rf"^the LoRA has lora_A and lora_B but no DoRA magnitude "
                                        rf"\(lora_magnitude_vector\) for '{k}', though"):
        merge_lora(tiny_pixart(), state)


def test_a_scale_that_merges_nothing_or_not_a_number_is_refused(tmp_path):
    """scale 0 grew every adapted low-rank layer by the LoRA's rank for nothing; NaN was taken."""
    teacher = tiny_flux()
    _lora(teacher, tmp_path / "lora")
    for scale in (0, 0.0, float("nan"), float("inf")):
        model = tiny_flux()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(UserError, match="a scale of 0 merges nothing" if scale == 0 else "finite number"):
            merge_lora(model, tmp_path / "lora", scale=scale)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("merge", ["api", "cli"])
def test_a_scale_that_overflows_the_weights_is_refused_naming_the_layer(tmp_path, capsys, merge):
    """--scale 1e300 reported success with NaN/Inf in 10+ tensors of the new output."""
    from compress.cli import main
    from compress.errors import NumericError

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    if merge == "api":
        with pytest.raises(NumericError, match=r"merging the LoRA into '[\w.]+' gives its \w+ \d+ NaN/Inf"):
            merge_lora(student, tmp_path / "lora", scale=1e300)
        return
    argv = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale"]
    capsys.readouterr()
    assert main(argv + ["1e300"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "merging the LoRA into '" in err and not (tmp_path / "new").exists()
    assert main(argv + ["0"]) == 2
    assert "a scale of 0 merges nothing" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_numpy_scale_is_a_scale():
    """merge_lora(scale=np.float32(0.8)) was refused as not a number."""
    import numpy as np

    from compress.lora import check_scale

    check_scale(np.float32(0.8))
    with pytest.raises(UserError, match="finite number"):
        check_scale(np.float64("nan"))


@pytest.mark.parametrize("prefix", ["unet.", "model.diffusion_model."])
def test_a_lora_whose_keys_carry_another_formats_prefix_is_told_which_to_rename(tmp_path, prefix):
    """A LoRA of the model's own layer names under a UNet's (`unet.`) or ComfyUI's prefix was refused as
    of another model ("names a layer FluxTransformer2DModel does not have: a LoRA of another model?"). Diffusers
    reads neither for these transformers (load_lora_adapter keeps `transformer.` keys only; its Flux
    converters read other layer names), so it is still refused, saying which prefix to rename."""
    from tests.test_lora_limits import _save, _state

    for make, layer in ((tiny_flux, "single_transformer_blocks.0.attn.to_q"),
                        (tiny_pixart, "transformer_blocks.0.attn1.to_q")):
        lora = _save(_state(make(), ["to_q"], prefix=prefix), tmp_path / "l.safetensors")
        with pytest.raises(UserError) as e:
            merge_lora(make(), lora)
        assert f"{make().__class__.__name__} does not have; without its '{prefix}' prefix it names '{layer}', a " \
               f"layer it has: rename the LoRA's '{prefix}' keys to 'transformer.'" in str(e.value), str(e.value)
        assert "another model" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("make", [tiny_flux, tiny_pixart])
def test_an_output_folder_given_as_the_lora_is_said_alike_for_both_families(tmp_path, make):
    """Flux said 'out: diffusers could not load it onto the FluxTransformer2DModel (IndexError: list index
    out of range); a LoRA of another model?', PixArt '...: no LoRA weights (lora_A / lora_down) in it'."""
    from compress.io_export import save_compressed
    from tests.conftest import factorize

    model = factorize(make(), ["transformer_blocks.0.attn1.to_q" if make is tiny_pixart
                               else "transformer_blocks.0.attn.to_q"], rank=2)
    out = save_compressed(model, tmp_path / "out")
    with pytest.raises(UserError, match=r"^\S+: no LoRA weights \(lora_A / lora_down\) in it$"):
        merge_lora(model, out)
