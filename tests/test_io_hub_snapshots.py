"""io_hub_snapshots: main's cached snapshot of a Hub teacher checked before it loads without the
Hub (weight files whose blob is gone, no weights at all), and the other revisions' snapshots that
hold the whole transformer, named where main's lacks it or a download of main's weights failed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

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


def test_a_failed_download_of_mains_weights_names_the_snapshot_holding_the_whole_transformer(tmp_path, monkeypatch):
    """Main moved on since the cache's snapshot was downloaded: the Hub answered the config of the
    newer commit (the snapshot of OTHER holds it alone), then held its weights. The error said only
    the timeout; it now names main's commit, without its weights, and the snapshot of the older commit
    that holds the whole transformer (which loads as a local teacher)."""
    from huggingface_hub import constants

    from tests import hub_server
    from tests.hub_server import within

    model = tiny_pixart()
    repo = _cached_pipeline(tmp_path, model)
    config = (repo / "snapshots" / MAIN / "transformer" / "config.json").read_bytes()
    files = ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"]
    info = json.dumps({"id": "acme/pix", "sha": OTHER, "siblings": [{"rfilename": f} for f in files]}).encode()

    def reply(body: bytes, head: bool = False) -> bytes:
        return (f"HTTP/1.1 200 OK\r\nX-Repo-Commit: {OTHER}\r\nETag: \"e{len(body)}\"\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + (b"" if head else body)

    def answer(line: str) -> bytes | None:  # the config and file list of OTHER; its weights held
        if "/transformer/config.json " in line:
            return reply(config, head=line.startswith("HEAD "))
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:
            return reply(b"x" * 500, head=True)
        return reply(info) if "/api/models/acme/pix" in line else None
    serving = hub_server._serve(monkeypatch, answer)
    next(serving)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)  # huggingface_hub asks the GET 6 times
    error, _ = within(60, lambda: load_teacher("acme/pix"))
    next(serving, None)
    assert (repo / "refs" / "main").read_text() == OTHER
    assert isinstance(error, UserError), error
    assert re.fullmatch(re.escape("cannot fetch 'acme/pix' from the Hugging Face Hub (ReadTimeout: ") + ".*" + re.escape(
        f"), and the Hugging Face cache {tmp_path / 'hub'} (HF_HUB_CACHE, else HF_HOME/hub) holds main's commit {OTHER} "
        f"without its weights (transformer/), and the whole transformer only in the snapshot {repo / 'snapshots' / MAIN} "
        "(pass a snapshot folder as a local one); pass a local folder or file, or check your network"), str(error)), error
    teacher = load_teacher(str(repo / "snapshots" / MAIN))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
