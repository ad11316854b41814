"""io_hub_snapshots: main's cached snapshot of a Hub teacher checked before it loads without the
Hub (weight files whose blob is gone, no weights at all), and the other revisions' snapshots that
hold the whole transformer, named where main's lacks it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.pipelines import hub_cache

MAIN, OTHER = "0" * 40, "1" * 40  # the commit tests.pipelines.hub_cache writes; another revision's


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _cached_pipeline(tmp_path, model, **save) -> Path:
    """A pipeline repo acme/pix in the cache (refs/main at MAIN); its cache folder."""
    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    model.save_pretrained(folder / "transformer", **save)
    hub_cache(tmp_path / "hub", "acme/pix", folder)
    return tmp_path / "hub" / "models--acme--pix"


def _as_blobs(repo: Path, commit: str = MAIN) -> None:
    """The snapshot's files as huggingface_hub leaves them: links to blobs/<hash>."""
    (repo / "blobs").mkdir(exist_ok=True)
    for i, file in enumerate(sorted(f for f in (repo / "snapshots" / commit).rglob("*") if f.is_file())):
        blob = repo / "blobs" / f"{commit[:8]}{i:04d}"
        shutil.move(file, blob)
        up = len(file.relative_to(repo / "snapshots" / commit).parts) + 1  # to the repo's cache folder
        file.symlink_to(Path(*[".."] * up) / "blobs" / blob.name)


def test_a_weight_file_whose_blob_is_gone_is_named_not_read_as_no_weights(tmp_path):
    """A snapshot's weights link to a blob the cache no longer has (a cleaned or interrupted cache):
    'the Hugging Face cache holds no weights' said nothing of the file there, nor how to mend it."""
    repo = _cached_pipeline(tmp_path, tiny_pixart())
    _as_blobs(repo)
    assert load_teacher("acme/pix").config.num_layers == 3  # the links read
    weights = repo / "snapshots" / MAIN / "transformer" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    blob.unlink()
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    assert str(e.value) == (f"the Hugging Face cache's copy of 'acme/pix' (transformer/) is broken (offline: "
                            f"HF_HUB_OFFLINE): {weights} links to ../../../blobs/{blob.name}, which is gone; download "
                            "it again online (hf download acme/pix transformer/diffusion_pytorch_model.safetensors "
                            f"--revision {MAIN}), or pass a local folder or file")


@pytest.mark.parametrize("gone", [2, 4])
def test_broken_shards_are_counted_and_named_in_the_download(tmp_path, gone):
    """Up to 3 broken files are each named in the download; more, the transformer's folder."""
    repo = _cached_pipeline(tmp_path, tiny_pixart(), max_shard_size="10KB")
    _as_blobs(repo)
    folder = repo / "snapshots" / MAIN / "transformer"
    shards = sorted(f.name for f in folder.iterdir() if re.fullmatch(r".*-of-\d+\.safetensors", f.name))
    assert len(shards) > gone
    for name in shards[1:gone + 1]:
        (folder / name).resolve().unlink()
    files = " ".join("transformer/" + n for n in shards[1:gone + 1]) if gone <= 3 else "--include 'transformer/*'"
    with pytest.raises(UserError, match=rf"{re.escape(str(folder / shards[1]))} links to \S+, which is gone \(and "
                                        rf"{gone - 1} more\); download it again online \(hf download acme/pix "
                                        rf"{re.escape(files)} --revision {MAIN}\)"):
        load_teacher("acme/pix")


def test_main_without_weights_names_the_revisions_snapshots_that_hold_them(tmp_path):
    """main's snapshot holds only the config (plan fetched it), another revision's the whole
    transformer: the error said no weights, and named other revisions only where main had no snapshot."""
    repo = _cached_pipeline(tmp_path, tiny_pixart())
    shutil.copytree(repo / "snapshots" / MAIN, repo / "snapshots" / OTHER)
    (repo / "refs" / "v1").write_text(OTHER)
    (repo / "snapshots" / MAIN / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    incomplete = repo / "snapshots" / ("2" * 40)  # a third one without weights is not named
    shutil.copytree(repo / "snapshots" / MAIN, incomplete)
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    assert str(e.value) == ("the Hugging Face cache holds no weights of 'acme/pix' (transformer/) beside its "
                            f"config.json (offline: HF_HUB_OFFLINE); it holds them in the snapshot "
                            f"{repo / 'snapshots' / OTHER} (v1) (pass a snapshot folder as a local one): fetch it "
                            "once online, or pass a local folder or file")
    assert load_teacher(str(repo / "snapshots" / OTHER)).config.num_layers == 3  # the folder named loads
    shutil.rmtree(repo / "snapshots" / OTHER)
    with pytest.raises(UserError, match=r"\(offline: HF_HUB_OFFLINE\): fetch it once online"):
        load_teacher("acme/pix")


def test_holds_transformer_wants_the_config_every_shard_and_no_broken_link(tmp_path):
    from compress.io_hub_snapshots import holds_transformer

    repo = _cached_pipeline(tmp_path, tiny_pixart(), max_shard_size="20KB")
    snapshot = repo / "snapshots" / MAIN
    assert holds_transformer(snapshot)
    _as_blobs(repo)
    assert holds_transformer(snapshot)
    next((snapshot / "transformer").glob("*-00002-of-*.safetensors")).resolve().unlink()
    assert not holds_transformer(snapshot)
    assert not holds_transformer(tmp_path / "pipe" / "model_index.json")  # no config.json under it
