"""io_hub_cache_files: the file each part of a Hub pipeline's cached snapshot reads (a scheduler's or
model's config, a model's weights or a shard its index lists, a tokenizer's vocabulary), named with
the hf download that fetches it where the snapshot lacks it."""

from __future__ import annotations

import json

import pytest

from compress.io_hub_cache_files import missing_file, part_lacks

COMMIT = "0" * 40


def _files(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("library, name, files, lacks", [
    ("diffusers", "DPMSolverMultistepScheduler", ["README.md"], "scheduler_config.json"),
    ("diffusers", "DPMSolverMultistepScheduler", ["scheduler_config.json"], None),
    ("diffusers", "AutoencoderKL", ["diffusion_pytorch_model.safetensors"], "config.json"),
    ("diffusers", "AutoencoderKL", ["config.json"], "weights (no .safetensors or .bin file)"),
    ("diffusers", "AutoencoderKL", ["config.json", "diffusion_pytorch_model.bin"], None),
    ("transformers", "T5EncoderModel", ["config.json", "model.safetensors"], None),
    ("transformers", "T5Tokenizer", ["tokenizer_config.json", "special_tokens_map.json"],
     "spiece.model (or tokenizer.json)"),
    ("transformers", "T5Tokenizer", ["tokenizer_config.json", "spiece.model"], None),
    ("transformers", "T5TokenizerFast", ["tokenizer.json"], None),
    ("transformers", "CLIPTokenizer", ["vocab.json"], "merges.txt (or tokenizer.json)"),
    ("transformers", "CLIPTokenizer", ["vocab.json", "merges.txt"], None),
    ("transformers", "CLIPImageProcessor", [], None),  # not a part whose files it knows: its loader says
    ("diffusers", "NoSuchClass", [], None),
])
def test_a_part_lacking_the_file_its_class_reads_is_named(tmp_path, library, name, files, lacks):
    assert part_lacks(_files(tmp_path / "part", *files), library, name) == lacks


def test_a_shard_an_index_lists_and_a_link_to_a_gone_blob_are_lacking(tmp_path):
    folder = _files(tmp_path / "text_encoder", "config.json", "model-00001-of-00003.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00003.safetensors", "b": "model-00002-of-00003.safetensors",
        "c": "model-00003-of-00003.safetensors"}}))
    assert part_lacks(folder, "transformers", "T5EncoderModel") == (
        "model-00002-of-00003.safetensors and model-00003-of-00003.safetensors "
        "(listed in model.safetensors.index.json)")
    scheduler = tmp_path / "scheduler"
    scheduler.mkdir()
    (scheduler / "scheduler_config.json").symlink_to(tmp_path / "blobs" / "gone")  # the cache's blob removed
    assert part_lacks(scheduler, "diffusers", "DDPMScheduler") == "scheduler_config.json"


def test_missing_file_names_the_first_lacking_part_and_its_download(tmp_path):
    """Parts passed to from_pretrained (the transformer) and parts whose folder is missing
    (pipeline_snapshot.snapshot_problem's) are not looked at."""
    snapshot = tmp_path / COMMIT
    _files(snapshot / "scheduler", "README.md")
    _files(snapshot / "tokenizer", "tokenizer_config.json")
    _files(snapshot / "transformer", "README.md")
    (snapshot / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtSigmaPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
        "tokenizer": ["transformers", "T5Tokenizer"], "text_encoder": ["transformers", "T5EncoderModel"],
        "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    assert missing_file("acme/pix", snapshot) == (
        f"the Hugging Face cache's snapshot {snapshot} of it: its scheduler/ lacks scheduler_config.json, which "
        f"DDPMScheduler reads; download it online (hf download acme/pix --include 'scheduler/*' --revision {COMMIT})")
    _files(snapshot / "scheduler", "scheduler_config.json")
    assert "its tokenizer/ lacks spiece.model (or tokenizer.json), which T5Tokenizer reads; download it online " \
           f"(hf download acme/pix --include 'tokenizer/*' --revision {COMMIT})" in missing_file("acme/pix", snapshot)
    _files(snapshot / "tokenizer", "tokenizer.json")
    assert missing_file("acme/pix", snapshot) is None


def test_a_file_the_caches_tree_listing_names_and_the_snapshot_lacks_is_named(tmp_path, monkeypatch):
    """Where an online snapshot_download cached the commit's file list (trees/COMMIT.json), diffusers
    offline asks for every file of a part without weights and refused a snapshot lacking one with
    huggingface_hub's "The cached snapshot for 'acme/pix' … is incomplete: 1 file(s) are missing
    (tokenizer/tokenizer_config.json). …"; of a part with weights only config.json is asked for."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--acme--pix"
    snapshot = repo / "snapshots" / COMMIT
    _files(snapshot / "tokenizer", "tokenizer.json")
    _files(snapshot / "text_encoder", "config.json", "model.safetensors")
    (snapshot / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtSigmaPipeline", "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"]}))
    listed = ["model_index.json", "tokenizer/tokenizer.json", "text_encoder/config.json",
              "text_encoder/model.safetensors",
              "text_encoder/model.fp16.safetensors"]  # a variant not downloaded: diffusers does not ask for it
    _files(repo / "trees")
    (repo / "trees" / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": {
        f: {"size": 1, "blob_id": "0" * 40} for f in listed}}))
    assert missing_file("acme/pix", snapshot) is None
    (repo / "trees" / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": {
        f: {"size": 1, "blob_id": "0" * 40} for f in [*listed, "tokenizer/tokenizer_config.json",
                                                      "tokenizer/special_tokens_map.json"]}}))
    from huggingface_hub import _tree_cache  # the listing read above is kept in memory by its path

    monkeypatch.setattr(_tree_cache, "_IN_MEMORY_TREE_CACHE", {})
    assert missing_file("acme/pix", snapshot) == (
        f"the Hugging Face cache's snapshot {snapshot} of it: its tokenizer/ lacks special_tokens_map.json and "
        "tokenizer_config.json, which the cache's file list of the commit names and diffusers reads; download it "
        f"online (hf download acme/pix --include 'tokenizer/*' --revision {COMMIT})")


@pytest.mark.parametrize("listing", ["[]", '{"format_version": 1, "files": []}', "{not json"])
def test_a_cache_listing_it_cannot_read_is_passed_over(tmp_path, monkeypatch, capfd, caplog, listing):
    """The cache's trees/COMMIT.json is optional: one of another shape (`[]`, a list of files) raised
    AttributeError through huggingface_hub 2.4's reader, a traceback out of every load of the teacher
    (run's check, load_teacher); now it, and one that is no JSON (huggingface_hub's warning
    'Ignoring corrupted tree cache file', said twice), are passed over without a word: the files held
    place the transformer."""
    from huggingface_hub import constants

    from compress import load_teacher
    from compress.io_source_config import checked
    from tests.conftest import tiny_pixart
    from tests.test_io_hub_cache import _cached, _pipeline

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = tiny_pixart()
    repo = _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", model))
    (repo / "trees").mkdir()
    (repo / "trees" / f"{COMMIT}.json").write_text(listing)
    assert checked("acme/pix").config["num_layers"] == model.config.num_layers
    assert load_teacher("acme/pix").config.num_layers == model.config.num_layers
    said = capfd.readouterr().err + caplog.text  # huggingface_hub's logger: stderr, or pytest's record of it
    assert "tree cache" not in said, said
