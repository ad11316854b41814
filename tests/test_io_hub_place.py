"""A Hub id's transformer is where a local copy of its repo has it (io.transformer_place, one rule for
teachers, outputs and the Hugging Face cache's snapshots): the transformer/ of a pipeline repo
(model_index.json) or of a repo holding that subfolder alone, else the repo's own config.json. A repo
with a config.json at its root and transformer/config.json and no model_index.json was read at
transformer/ as a Hub teacher (io_hub.hub_config took transformer/ first), at its root as a local
copy of its snapshot and as an output (inspect, eval, bench ID read the cache's snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import load_teacher
from compress.io import transformer_place
from tests.conftest import tiny_pixart
from tests.test_io_hub_cache import CACHED, _cached, _Hub
from tests.test_io_hub_unreachable import _unreachable


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _both(folder: Path, pipeline: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A repo with a transformer's config.json and weights at its root (seed 0) and in transformer/
    (seed 1, 2 layers), and model_index.json where `pipeline`: (the root's model, transformer/'s)."""
    root, inner = tiny_pixart(seed=0), tiny_pixart(seed=1, num_layers=2)
    root.save_pretrained(folder)
    inner.save_pretrained(folder / "transformer")
    if pipeline:
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    return root, inner


def _same(model, expected) -> bool:
    state = expected.state_dict()
    return model.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _snapshot(repo_id: str) -> Path:
    from compress.io_hub_cache import cached_snapshot

    return cached_snapshot(repo_id)


@pytest.mark.parametrize("pipeline", [False, True], ids=["no-model-index", "pipeline"])
def test_a_hub_teacher_is_read_where_a_local_copy_of_its_repo_is(tmp_path, monkeypatch, pipeline):
    """Online, nothing cached: the Hub's file list says which files exist. Without model_index.json
    the root's config.json (and weights) were not read: transformer/'s 2-layer model loaded. With it,
    transformer/'s, and the cache's snapshot holds model_index.json, so a copy of it reads the same."""
    from compress.io_source_config import checked

    folder = tmp_path / "repo"
    root, inner = _both(folder, pipeline)
    expected = inner if pipeline else root
    assert transformer_place(folder) == (folder / "transformer" if pipeline else folder)
    hub = _Hub(monkeypatch, tmp_path, folder, CACHED)
    assert checked("acme/both").config["num_layers"] == expected.config.num_layers  # run's check before the load
    assert _same(load_teacher("acme/both"), expected)
    assert [a for a in hub.asked if a[0] == "model_info"] == [("model_info", CACHED)]  # the check's list, kept
    assert _same(load_teacher(folder), expected)  # the local repo, as it always was
    snapshot = _snapshot("acme/both")
    assert (snapshot / "model_index.json").is_file() == pipeline  # it says transformer/ beside a root config.json
    assert transformer_place(snapshot) == (snapshot / "transformer" if pipeline else snapshot)
    assert _same(load_teacher(snapshot), expected)  # a copy of the cache's snapshot


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_a_cached_snapshot_is_read_as_its_local_copy_is(tmp_path, monkeypatch, online):
    """The cache holds the repo (root config.json, transformer/config.json, no model_index.json):
    offline (the snapshot's files tell) and online at the Hub's commit (its list tells), the root's
    model, as load_teacher(snapshot folder) and an output read from the cache (io_output.output_folder)."""
    from huggingface_hub import constants

    from compress.io_hub import cached_config
    from compress.io_output import output_folder

    root, _ = _both(tmp_path / "repo")
    _cached(tmp_path, "acme/both", tmp_path / "repo")
    snapshot = _snapshot("acme/both")
    if online:
        _Hub(monkeypatch, tmp_path, tmp_path / "repo", CACHED)
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cached_config("acme/both") == (snapshot / "config.json", "")
    assert output_folder(snapshot) == snapshot
    assert _same(load_teacher("acme/both"), root)
    assert _same(load_teacher(snapshot), root)


def test_a_hub_repo_holding_transformer_alone_beside_a_root_config_the_cache_lacks(tmp_path, monkeypatch):
    """The cache holds transformer/ alone (hf download --include 'transformer/*') of a repo whose
    root holds a config.json too, no model_index.json, and no list of the commit's files (fetched one
    by one, as hf_hub_download and diffusers do): offline the snapshot's files say transformer/ (as a
    copy of it does), nothing tells of the root's; online the Hub's list says the root, fetched."""
    root, inner = _both(tmp_path / "repo")
    (tmp_path / "part").mkdir()
    (tmp_path / "repo" / "transformer").rename(tmp_path / "part" / "transformer")
    _cached(tmp_path, "acme/both", tmp_path / "part")
    (tmp_path / "part" / "transformer").rename(tmp_path / "repo" / "transformer")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _same(load_teacher("acme/both"), inner)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = _Hub(monkeypatch, tmp_path, tmp_path / "repo", CACHED)
    assert _same(load_teacher("acme/both"), root)
    assert ("hf_hub_download", "config.json", CACHED) in hub.asked


def test_a_cache_listing_the_whole_repo_reads_it_offline_where_the_hub_does(tmp_path, monkeypatch):
    """As above, the cache holding transformer/ alone, with the file list of the commit that
    `hf download acme/both --include 'transformer/*'` (snapshot_download) caches (trees/COMMIT.json):
    offline (load_teacher, run's check, plan's) the transformer/ model loaded without a word, online
    the root's; now the list places it at the root both ways, and offline, the root's config.json not
    in the cache, it is refused in one line naming it and its download (the Hub unreachable, or lost after its first answer, too);
    once fetched online, offline reads the root's too."""
    import json

    import huggingface_hub
    from huggingface_hub import constants

    from compress.errors import UserError
    from compress.io_source_config import checked

    root, _ = _both(tmp_path / "repo")
    (tmp_path / "part").mkdir()
    (tmp_path / "repo" / "transformer").rename(tmp_path / "part" / "transformer")
    repo = _cached(tmp_path, "acme/both", tmp_path / "part")
    (tmp_path / "part" / "transformer").rename(tmp_path / "repo" / "transformer")
    listed = sorted(p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*") if p.is_file())
    (repo / "trees").mkdir()
    (repo / "trees" / f"{CACHED}.json").write_text(json.dumps({"format_version": 1, "files": {
        f: {"size": 1, "blob_id": "0" * 40} for f in listed}}))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refusal = (f"the Hugging Face cache's snapshot {repo / 'snapshots' / CACHED} of 'acme/both' lacks config.json, where "
               "the cache's file list of its commit places the transformer")
    for read in (lambda: load_teacher("acme/both"), lambda: checked("acme/both").config,
                 lambda: checked("acme/both", hub=False).config):
        with pytest.raises(UserError, match="^" + refusal.replace(".", r"\.")) as e:
            read()
        assert str(e.value).endswith(f"(hf download acme/both --include '*' --exclude '*/*' --revision {CACHED}), or "
                                     "pass a local folder or file"), e.value
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for answered in (True, False):  # the Hub's first request answered, then none; none answered
        with monkeypatch.context() as unreachable:
            _unreachable(unreachable)
            if not answered:
                unreachable.setattr(huggingface_hub, "get_hf_file_metadata", huggingface_hub.file_download.get_hf_file_metadata)
            with pytest.raises(UserError, match="^" + refusal.replace(".", r"\.")):
                load_teacher("acme/both")
    hub = _Hub(monkeypatch, tmp_path, tmp_path / "repo", CACHED)  # the Hub back: the refusal forgot the lost list
    assert _same(load_teacher("acme/both"), root)
    assert ("hf_hub_download", "config.json", CACHED) in hub.asked
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _same(load_teacher("acme/both"), root)
