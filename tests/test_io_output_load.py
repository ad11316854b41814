"""Outputs saved again and loaded back: a pipeline's save_pretrained (a base folder or a toy), weight
variants and .bin files, fused QKV projections, diffusers' loading keywords, a base pipeline under `~`,
and a Hub id given to load_transformer (moved from tests/test_io_output_paths.py)."""

import copy
import json
import re

import pytest
import torch

from compress import load_pipeline, load_transformer, save_compressed
from compress.cli import main
from compress.errors import UserError
from tests.conftest import factorize, tiny_flux, tiny_pixart
from tests.test_io_output_paths import _one_line_error, _output


# ---- 8. a pipeline's save_pretrained, weight variants and .bin files, ~ in a base -------------
LAYER = "transformer_blocks.0.ff.net.2"


@pytest.fixture(scope="module")
def pixart_folder(tmp_path_factory):
    """A tiny PixArtSigmaPipeline folder (tests/pipelines.py)."""
    from tests.pipelines import pixart_pipeline

    return pixart_pipeline(tmp_path_factory.mktemp("pixart") / "pipe")


def _same(a, b) -> bool:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def test_a_pipeline_saved_from_load_pipeline_loads_back(pixart_folder, tmp_path, capsys):
    """load_pipeline(out).save_pretrained(dir) writes the output to dir/transformer: load_transformer,
    load_pipeline, inspect and eval of dir said it was no dit-compress output folder. load_pipeline
    takes the other parts saved with it (the folder is its own base, not the teacher it records)."""
    import shutil

    from compress.io import load_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(pixart_folder, teacher)
    student = factorize(load_teacher(str(teacher)), [LAYER], rank=2)
    out = save_compressed(student, tmp_path / "out", extra={"teacher": str(teacher)})
    load_pipeline(out).save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert _same(load_transformer(saved), load_transformer(out))
    shutil.rmtree(teacher)
    pipe = load_pipeline(saved)
    assert _same(pipe.transformer, load_transformer(out)) and pipe.transformer.transformer_blocks[0].ff.net[2].rank == 2
    assert main(["inspect", str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]
    error = _one_line_error(capsys, ["eval", str(saved)])  # its teacher is gone: said of the output
    assert error.startswith(f"dit-compress eval: error: {saved / 'transformer'} "), error


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_toy_pipeline_saved_from_load_pipeline_loads_back(tmp_path, family):
    """load_pipeline(toy output).save_pretrained(dir) writes model_index.json naming ToyPixArtPipeline /
    ToyFluxPipeline (its toy text encoder and VAE are not saved): load_pipeline(dir) failed with
    diffusers' raw AttributeError. It is the toy pipeline again, with the saved transformer and
    scheduler: the same image for the same seed."""
    from compress.toy import load_toy_teacher

    layer = "transformer_blocks.0.ff.net.2"
    out = save_compressed(factorize(load_toy_teacher(family), [layer], rank=8), tmp_path / "out",
                          extra={"teacher": f"toy:{family}"})
    pipe = load_pipeline(out)

    def sample(p):
        return p("a handwritten 7", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images

    pipe.save_pretrained(tmp_path / "saved")
    again = load_pipeline(tmp_path / "saved")
    assert type(again) is type(pipe) and type(again.scheduler) is type(pipe.scheduler)
    def public(config):  # a loaded config also lists the keys it took defaults for
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(again.scheduler.config) == public(pipe.scheduler.config)
    assert _same(again.transformer, pipe.transformer)
    assert torch.equal(sample(again), sample(pipe))


def test_a_pipeline_class_diffusers_cannot_import_is_named_in_one_line(tmp_path):
    """A base pipeline folder whose model_index.json names a class diffusers lacks (a custom or newer
    pipeline, or a list) was a raw AttributeError / TypeError from diffusers."""
    from compress.toy import load_toy_pipeline, load_toy_teacher

    out = _output(tmp_path, make=lambda: load_toy_teacher("pixart"))
    base = tmp_path / "base"
    load_toy_pipeline("pixart").save_pretrained(base)
    index = json.loads((base / "model_index.json").read_text())
    for name in ["MyCustomPipeline", ["my_module", "MyCustomPipeline"]]:
        (base / "model_index.json").write_text(json.dumps({**index, "_class_name": name}))
        with pytest.raises(UserError, match=f"^cannot load base pipeline '{base}': its model_index.json "
                                            rf"names the pipeline class {re.escape(repr(name))}, which "
                                            r"diffusers \S+ cannot import; pass base="):
            load_pipeline(out, base=str(base))
    del index["_class_name"]
    (base / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"its model_index.json names no pipeline class \(_class_name\); pass base="):
        load_pipeline(out, base=str(base))
    (base / "model_index.json").write_text(json.dumps({**index, "_class_name": "ToyPixArtPipeline",
                                                       "scheduler": ["diffusers", "NoScheduler"]}))
    with pytest.raises(UserError, match=r"names the scheduler \['diffusers', 'NoScheduler'\], not a diffusers"):
        load_pipeline(out, base=str(base))


@pytest.mark.parametrize("how", [{"variant": "fp16"}, {"safe_serialization": False},
                                 {"variant": "fp16", "safe_serialization": False, "max_shard_size": "20KB"},
                                 {"variant": "bf16", "max_shard_size": "20KB"}])
def test_an_output_saved_as_a_variant_or_bin_loads_back(tmp_path, how):
    """save_pretrained(variant=...) or (safe_serialization=False) of a loaded output wrote a folder
    load_transformer called 'not a dit-compress output folder' (it has the compression section)."""
    model = load_transformer(_output(tmp_path))
    model.save_pretrained(tmp_path / "again", **how)
    assert _same(load_transformer(tmp_path / "again"), model)


def test_several_variants_are_named_and_a_folder_without_weights_says_what_it_holds(tmp_path):
    model = load_transformer(_output(tmp_path))
    two = tmp_path / "two"
    model.save_pretrained(two, variant="fp16")
    model.save_pretrained(two, variant="bf16", safe_serialization=False)
    with pytest.raises(UserError, match=f"^{two} holds the weight variants bf16, fp16 and no plain "
                                        r"diffusion_pytorch_model.safetensors; pass variant= one of them$"):
        load_transformer(two)
    model.save_pretrained(two, safe_serialization=False)  # the plain weights are read where there are any
    assert _same(load_transformer(two), model)
    for f in two.glob("diffusion_pytorch_model*"):
        f.unlink()
    (two / "notes.txt").write_text("")
    with pytest.raises(UserError, match=f"^{two} has config.json but no weights: no diffusion_pytorch_model"
                                        r"\.safetensors, .*\.index\.json or a variant or \.bin of them "
                                        r"\(the folder holds notes\.txt\)$"):
        load_transformer(two)


@pytest.mark.parametrize("make, layers", [
    (tiny_pixart, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_v"]),
    (tiny_flux, ["transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.add_v_proj",
                 "single_transformer_blocks.0.attn.to_q"])])
def test_an_output_saved_after_fuse_qkv_projections_loads_back_unfused(tmp_path, make, layers):
    """save_pretrained after fuse_qkv_projections() writes to_qkv / to_kv / to_added_qkv beside the
    projections they copy, and load_transformer said the file 'does not match its config.json': the
    copies are dropped (as diffusers' from_pretrained does) and the model loads bit-identical to the
    one fused, with its outputs; a fused layer changed after fusing would be lost: one line."""
    from tests.conftest import forward, model_inputs

    out = save_compressed(factorize(make(), layers, rank=2), tmp_path / "out")
    model = load_transformer(out)
    fused = copy.deepcopy(model)
    fused.fuse_qkv_projections()
    assert any(k.endswith((".to_qkv.weight", ".to_kv.weight")) for k in fused.state_dict())
    fused.save_pretrained(tmp_path / "fused")
    back = load_transformer(tmp_path / "fused")
    assert _same(back, model)
    inputs = model_inputs(model)
    torch.testing.assert_close(forward(back, inputs), forward(fused, inputs), rtol=1e-5, atol=1e-5)
    name = next(n for n, _ in fused.named_modules() if n.endswith((".to_qkv", ".to_kv")))
    edited = copy.deepcopy(fused)
    with torch.no_grad():
        fused.get_submodule(name).weight.add_(1.0)
        edited.get_submodule(name).weight[-1].mul_(1.01)  # one row of its (dense) to_v, by 1%: a fine-tune
    fused.save_pretrained(tmp_path / "changed")
    edited.save_pretrained(tmp_path / "edited")
    for folder in ("changed", "edited"):
        with pytest.raises(UserError, match=rf"{re.escape(name)}\.weight, written by fuse_qkv_projections\(\), "
                                            r"does not hold .* call unfuse_qkv_projections\(\) before save_pretrained$"):
            load_transformer(tmp_path / folder)


def test_variant_picks_the_weights_to_load_as_diffusers_does(tmp_path):
    """A folder holding two variants said 'keep the one to load' and load_transformer took no
    variant=: it picks one (each loads bit-identical); one not there names those that are."""
    out = _output(tmp_path)
    model = load_transformer(out)
    two = tmp_path / "two"
    half, bf16 = copy.deepcopy(model).to(torch.float16), model.to(torch.bfloat16)
    half.save_pretrained(two, variant="fp16")
    bf16.save_pretrained(two, variant="bf16", safe_serialization=False)
    assert _same(load_transformer(two, variant="fp16"), half) and _same(load_transformer(two, variant="bf16"), bf16)
    with pytest.raises(UserError, match=rf"^{two} holds no weight variant 'fp32' \(it holds: bf16, fp16\)$"):
        load_transformer(two, variant="fp32")
    with pytest.raises(UserError, match=r"holds no weight variant 'fp16' \(it holds: plain\)$"):
        load_pipeline(out, variant="fp16")


def test_diffusers_loading_keywords_load_or_say_what_is_supported(tmp_path):
    """device_map, low_cpu_mem_usage and load_pipeline's torch_dtype were bare TypeErrors, and dtype
    with another torch_dtype silently took dtype: one device in device_map loads there, the others
    are one line; low_cpu_mem_usage changes nothing (the model is built empty); torch_dtype is the
    pipeline's dtype; dtype and torch_dtype that disagree are one line."""
    out = _output(tmp_path)
    want = load_transformer(out)
    for how in ({"device_map": "cpu"}, {"device_map": {"": "cpu"}}, {"device_map": "cpu", "device": "cpu"},
                {"device_map": "cpu:0", "device": "cpu"},  # one place, spelt two ways
                {"low_cpu_mem_usage": True}, {"low_cpu_mem_usage": False}):
        assert _same(load_transformer(out, **how), want), how
    for device_map in ("auto", "balanced", {"transformer_blocks.0": "cpu", "": "cpu"}):
        with pytest.raises(UserError, match=rf"^load_transformer: device_map={re.escape(repr(device_map))} is not "
                                            "supported: an output loads whole on one device; pass device="):
            load_transformer(out, device_map=device_map)
    with pytest.raises(UserError, match="^load_transformer: dtype=float16 and torch_dtype=bfloat16 disagree; "
                                        "pass one of them$"):
        load_transformer(out, dtype=torch.float16, torch_dtype=torch.bfloat16)
    assert load_transformer(out, dtype="float16", torch_dtype=torch.float16).dtype == torch.float16
    from compress import load_teacher

    toy = save_compressed(factorize(load_teacher("toy:pixart"), ["transformer_blocks.0.ff.net.2"], 4),
                          tmp_path / "toy", extra={"teacher": "toy:pixart"})
    assert load_pipeline(toy, torch_dtype=torch.bfloat16).transformer.dtype == torch.bfloat16
    with pytest.raises(UserError, match="^load_pipeline: dtype=float16 and torch_dtype=bfloat16 disagree"):
        load_pipeline(toy, dtype=torch.float16, torch_dtype="bfloat16")


def test_a_base_pipeline_under_home_loads(pixart_folder, home, tmp_path):
    """load_pipeline(out, base="~/pipe"), or an output recording teacher ~/pipe, passed the string to
    diffusers unexpanded: 'Repo id must use alphanumeric chars'."""
    from compress.io import load_teacher

    (home / "pipe").symlink_to(pixart_folder)
    out = save_compressed(factorize(load_teacher("~/pipe"), [LAYER], rank=2), tmp_path / "out",
                          extra={"teacher": "~/pipe"})
    assert load_pipeline(out, base="~/pipe").transformer.transformer_blocks[0].ff.net[2].rank == 2
    assert load_pipeline(out).transformer.transformer_blocks[0].ff.net[2].rank == 2


def test_a_hub_id_given_to_load_transformer_says_it_takes_a_local_folder(tmp_path, monkeypatch):
    """load_transformer('ORG/NAME') said "ORG/NAME is not a dit-compress output folder (needs config.json
    ...)", though ORG/NAME may be one on the Hub: it takes a local folder, and says which snapshot folder
    of the Hugging Face cache to give (it loads), that a cached plain model is no output, or how to
    download one the cache lacks."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    out, plain = _output(tmp_path), tmp_path / "plain"
    tiny_pixart().save_pretrained(plain)
    for repo_id, folder in {"acme/out": out, "acme/plain": plain}.items():
        hub_cache(tmp_path / "hub", repo_id, folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    snapshots = {name: tmp_path / "hub" / f"models--acme--{name}" / "snapshots" / ("0" * 40)
                 for name in ("out", "plain")}
    said = "takes a local dit-compress output folder, not a Hub id; "
    with pytest.raises(UserError, match=rf"^acme/out: load_transformer {said}the Hugging Face cache holds it: give "
                                        rf"{re.escape(str(snapshots['out']))}$"):
        load_transformer("acme/out")
    assert load_transformer(snapshots["out"]).transformer_blocks[0].ff.net[2].rank == 2
    with pytest.raises(UserError, match=rf"^acme/plain: load_transformer {said}the Hugging Face cache holds it: at "
                                        rf"{re.escape(str(snapshots['plain']))}, which is no dit-compress output"):
        load_transformer("acme/plain")
    with pytest.raises(UserError, match=rf"^acme/none: no such output folder, and the Hugging Face cache \S+ holds "
                                        rf"no copy of it: load_transformer {said}download it first \(hf download "
                                        r"acme/none --local-dir DIR\) and give DIR$"):
        load_transformer("acme/none")
