"""A pipeline folder whose parts hold only a weight variant's files (save_pretrained(variant="fp16"), a
download of "*.fp16.*"): the variant from_pretrained needs (compress.pipeline_folder.parts_variant),
given where the calibration pipeline and load_pipeline's base load, as the transformer's
(io_variants.weights_variant) is where the teacher loads."""

import shutil

import pytest
import torch

from compress import load_pipeline, save_compressed
from compress.errors import UserError
from compress.io import load_teacher, read_json
from tests.conftest import diffusers_log, factorize
from tests.pipelines import pixart_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _fp16_folders(tmp_path):
    """(the plain pipeline folder, its fp16 variant's save, that save with the plain VAE)."""
    from diffusers import DiffusionPipeline

    (tmp_path / "p").mkdir()
    plain = pixart_pipeline(tmp_path / "p" / "pipe")
    DiffusionPipeline.from_pretrained(plain).to(torch.float16).save_pretrained(tmp_path / "pipe16", variant="fp16")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "pipe16", mixed)
    shutil.rmtree(mixed / "vae")
    shutil.copytree(plain / "vae", mixed / "vae")
    return plain, tmp_path / "pipe16", mixed


def test_a_pipeline_folder_of_fp16_parts_loads_as_calibration_pipeline_and_as_base(tmp_path):
    """run's calibration pipeline said "cannot load calibration pipeline ...: Error no file named
    diffusion_pytorch_model.bin found in directory pipe16/vae" after diffusers' own log lines, and
    load_pipeline(out, base=pipe16) failed alike: both load it, its parts' fp16 weights (a plain VAE
    beside them too), saying nothing."""
    from compress.calib_pipeline_load import load_pipeline_for

    plain, pipe16, mixed = _fp16_folders(tmp_path)
    teacher = load_teacher(str(pipe16))
    out = save_compressed(factorize(load_teacher(str(pipe16)), ["transformer_blocks.0.ff.net.2"], rank=4),
                          tmp_path / "out", extra={"teacher": str(pipe16)})
    with diffusers_log() as logged:
        calib = load_pipeline_for(teacher, str(pipe16))
        base = load_pipeline(out, base=str(pipe16), dtype=torch.float32)
        base_mixed = load_pipeline(out, base=str(mixed), dtype=torch.float32)
    assert logged == []
    from diffusers import DiffusionPipeline

    fp16 = DiffusionPipeline.from_pretrained(pipe16, variant="fp16").to(torch.float32)
    plain_vae = DiffusionPipeline.from_pretrained(plain).vae  # the mixed folder's
    for pipe, vae in [(calib, fp16.vae), (base, fp16.vae), (base_mixed, plain_vae)]:
        for got, want in [(pipe.text_encoder, fp16.text_encoder), (pipe.vae, vae)]:
            got, want = got.state_dict(), want.state_dict()
            assert all(torch.equal(got[k], want[k]) for k in want), pipe
    assert calib.transformer is teacher


def test_parts_variant_is_the_one_variant_a_part_holds_alone(tmp_path):
    """None where every part holds plain weights; fp16 where one holds only fp16 ones (others plain
    beside it); two variants held alone, one line."""
    from compress.pipeline_folder import parts_variant

    plain, pipe16, mixed = _fp16_folders(tmp_path)
    for folder, want in [(plain, None), (pipe16, "fp16"), (mixed, "fp16")]:
        assert parts_variant(str(folder), read_json(folder / "model_index.json")) == want, folder
    (pipe16 / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(
        pipe16 / "vae" / "diffusion_pytorch_model.bf16.safetensors")
    with pytest.raises(UserError, match=r"parts hold the weight variants bf16, fp16 only"):
        parts_variant(str(pipe16), read_json(pipe16 / "model_index.json"))


def test_a_cached_hub_pipeline_of_fp16_parts_loads_offline_as_calibration_pipeline_and_as_base(tmp_path, monkeypatch):
    """The same folder as the Hugging Face cache's snapshot of a Hub id (`hf download ID --include '*.fp16.*'`),
    read offline: 'cannot load calibration pipeline 'acme/pix16': Error no file named diffusion_pytorch_model.bin
    found in directory …/snapshots/…/vae' (parts_variant read local folders alone), and load_pipeline's base
    alike. Now both load its fp16 parts (pipeline_folder.cached_variant), as does the snapshot folder given."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    from compress.calib_pipeline_load import load_pipeline_for
    from tests.pipelines import hub_cache

    plain, pipe16, mixed = _fp16_folders(tmp_path)
    hub_cache(tmp_path / "hub", "acme/pix16", pipe16)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = tmp_path / "hub" / "models--acme--pix16" / "snapshots" / ("0" * 40)
    teacher = load_teacher(str(pipe16))
    out = save_compressed(factorize(load_teacher(str(pipe16)), ["transformer_blocks.0.ff.net.2"], rank=4),
                          tmp_path / "out", extra={"teacher": "acme/pix16"})
    with diffusers_log() as logged:
        calib = load_pipeline_for(teacher, "acme/pix16")
        base = load_pipeline(out, dtype=torch.float32)  # the base the output records: acme/pix16
        local = load_pipeline(out, base=str(snapshot), dtype=torch.float32)
    assert logged == []
    fp16 = DiffusionPipeline.from_pretrained(pipe16, variant="fp16").to(torch.float32)
    for pipe in (calib, base, local):
        for got, want in [(pipe.text_encoder, fp16.text_encoder), (pipe.vae, fp16.vae)]:
            got, want = got.state_dict(), want.state_dict()
            assert all(torch.equal(got[k], want[k]) for k in want), pipe


def test_a_cached_hub_pipeline_of_fp16_parts_is_given_its_variant_online_too(tmp_path, monkeypatch):
    """Online (the Hub answers), the same cache: diffusers was given no variant, and fetched the plain
    weights the `--include '*.fp16.*'` download left out (GBs of a text encoder), sampling with other
    parts than the same run offline. Now from_pretrained is given the cached snapshot's variant online
    too (pipeline_folder.cached_variant), as calibration pipeline and as load_pipeline's base; the
    Hub's answer stands in for diffusers' own fetch here: its cached files (no request leaves the test)."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    from compress.calib_pipeline_load import load_pipeline_for
    from tests.pipelines import hub_cache

    plain, pipe16, mixed = _fp16_folders(tmp_path)
    hub_cache(tmp_path / "hub", "acme/pix16", pipe16)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = tmp_path / "hub" / "models--acme--pix16" / "snapshots" / ("0" * 40)
    given, real = [], DiffusionPipeline.from_pretrained

    def online(source, **keywords):  # diffusers' online load of the Hub id: the cached snapshot's files
        given.append((source, keywords))
        assert source == "acme/pix16" and "local_files_only" not in keywords
        return real(snapshot, **keywords)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", online)
    teacher = load_teacher(str(pipe16))
    out = save_compressed(factorize(load_teacher(str(pipe16)), ["transformer_blocks.0.ff.net.2"], rank=4),
                          tmp_path / "out", extra={"teacher": "acme/pix16"})
    calib = load_pipeline_for(teacher, "acme/pix16")
    base = load_pipeline(out, dtype=torch.float32)
    assert [keywords.get("variant") for _, keywords in given] == ["fp16", "fp16"]
    fp16 = real(pipe16, variant="fp16").to(torch.float32)
    for pipe in (calib, base):
        got, want = pipe.text_encoder.state_dict(), fp16.text_encoder.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), pipe
