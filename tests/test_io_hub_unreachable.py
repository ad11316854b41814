"""io_hub where the Hub cannot be reached, or answers otherwise than the cache: a cached teacher loads
after one quick request (no retries), a cache holding only the config or lacking the id is blamed at once,
a cached teacher is fetched where the Hub answers, and a main the Hub moved past the cache names both
commits (the cache's snapshot loads as a local teacher)."""

from __future__ import annotations

import re

import pytest
import torch

from compress import load_teacher
from compress.errors import UserError
from tests import test_io_hub
from tests.conftest import tiny_pixart
from tests.test_io_hub import _hub_cache, _pipeline_with, hub_info

_own_cache = test_io_hub._own_cache  # autouse there and here: an empty Hugging Face cache of the test's own


def _no_network(monkeypatch, tmp_path, repo_id: str, folder):
    """`folder` cached as `repo_id`, HF_HUB_OFFLINE unset, and no network: the one request io_hub
    makes to find that out fails at once; any other Hub call fails the test (huggingface_hub would
    retry it for about 23 s)."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub

    _hub_cache(monkeypatch, tmp_path, repo_id, folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(url, *args, **kwargs):
        asked.append(url)
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, lambda *a, name=name, **k: pytest.fail(f"{name} {a} {k}"))
    for name in ("list_repo_files", "model_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda *a, **k: pytest.fail("listed the repo"))
    return asked


@pytest.mark.parametrize("layout", ["transformer-only", "pipeline"])
def test_a_cached_hub_teacher_loads_without_network_and_without_retries(tmp_path, monkeypatch, capsys, layout):
    """No network, HF_HUB_OFFLINE unset: a transformer-only repo failed 'cannot fetch' after 27 s
    (its root config.json, cached, was never tried), a pipeline repo loaded after 35 s of silent
    retries (the file list). Now one quick request, a note, and the cache."""
    model = tiny_pixart()
    if layout == "pipeline":
        _pipeline_with(tmp_path / "repo", model.save_pretrained)
    else:
        model.save_pretrained(tmp_path / "repo")
    asked = _no_network(monkeypatch, tmp_path, "acme/cached", tmp_path / "repo")
    teacher = load_teacher("acme/cached")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert len(asked) == 1
    assert (f"note: 'acme/cached' is read from the Hugging Face cache {tmp_path / 'hub'} (the Hugging Face Hub "
            "cannot be reached: ConnectError: [Errno -3] Temporary failure in name resolution); set "
            "HF_HUB_OFFLINE=1 to skip the Hub") in " ".join(capsys.readouterr().err.split())


def test_a_cache_holding_only_the_config_without_network_blames_the_cache(tmp_path, monkeypatch):
    """'acme/pix (transformer/) holds no diffusion_pytorch_model.safetensors' was untrue: the repo
    was not listed, the cache was."""
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    tiny_pixart().save_config(tmp_path / "pipe" / "transformer")
    _no_network(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    with pytest.raises(UserError, match=r"^the Hugging Face cache holds no weights of 'acme/pix' \(transformer/\) "
                                        r"beside its config.json \(the Hugging Face Hub cannot be reached: "
                                        r"ConnectError: .*\): fetch it once online"):
        load_teacher("acme/pix")


def test_a_cached_hub_teacher_is_fetched_from_the_hub_where_it_answers(tmp_path, monkeypatch):
    """The cache answers alone only where the Hub cannot be reached: online, a cached repo is asked
    for its files as before (a newer revision is downloaded)."""
    import huggingface_hub

    model = tiny_pixart()
    _pipeline_with(tmp_path / "pipe", model.save_pretrained)
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, *a, **k: object())
    listed = ["model_index.json"] + [f"transformer/{f.name}" for f in (tmp_path / "pipe" / "transformer").iterdir()]
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout: hub_info(listed))
    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, subfolder=None: fetched.append(
        f"{subfolder}/{name}") or str(tmp_path / "pipe" / subfolder / name))
    load_teacher("acme/pix")
    assert sorted(fetched) == ["transformer/config.json", "transformer/config.json",
                               "transformer/diffusion_pytorch_model.safetensors"]  # its config, then the files


def test_a_hub_id_the_cache_lacks_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    """No network, HF_HUB_OFFLINE unset, an id not in the cache (a typo): the error came after
    huggingface_hub's ~23 s of retries; one quick request tells now, and the cache folder is named."""
    asked = _no_network(monkeypatch, tmp_path, "acme/cached", tiny_pixart_folder(tmp_path))
    with pytest.raises(UserError) as e:
        load_teacher("acme/cahced")
    assert len(asked) == 1
    assert str(e.value) == ("cannot fetch 'acme/cahced' from the Hugging Face Hub (ConnectError: [Errno -3] Temporary "
                            f"failure in name resolution), and the Hugging Face cache {tmp_path / 'hub'} (HF_HUB_CACHE, "
                            "else HF_HOME/hub) holds no copy of it; pass a local folder or file, or check your network")


def tiny_pixart_folder(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "repo")
    return tmp_path / "repo"


NEWER = "1" * 40  # a commit main moved to on the Hub, of which the cache has no snapshot


@pytest.fixture
def moved_hub(monkeypatch):
    """A Hub on 127.0.0.1 (tests.hub_server) whose HEADs answer a 500-byte file at main's commit
    NEWER (hf_hub_download moves the cache's refs/main to it and makes the snapshot's SUB/ folder)
    and which holds every other request (the GET that follows); yields the requests it saw."""
    from tests import hub_server

    def answer(line: str) -> bytes | None:
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:
            return (f"HTTP/1.1 200 OK\r\nX-Repo-Commit: {NEWER}\r\nETag: \"e\"\r\nContent-Length: 500\r\n"
                    "Connection: close\r\n\r\n").encode()
        return None
    yield from hub_server._serve(monkeypatch, answer)


def _unreachable(monkeypatch) -> None:
    """The Hub's address made a port nothing listens on (connection refused), and hub_head's answers
    forgotten (a later process)."""
    import socket

    import huggingface_hub

    import compress.io_hub_requests as io_hub_requests

    server = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(io_hub_requests, "_HEADS", {})


def test_a_hub_teacher_whose_main_moved_past_the_cache_names_both_commits(tmp_path, monkeypatch, moved_hub):
    """The Hub answered hf_hub_download's HEAD of the teacher's config that main is at a commit the
    cache has no snapshot of (huggingface_hub moved refs/main to it and made its empty transformer/
    folder), then held the GET: the error said only the timeout. Then, the Hub unreachable, the cache
    'holds no copy of its main revision, only the snapshots OLD, NEWER (main)', and offline 'a copy of
    it without transformer/config.json or config.json'. huggingface_hub reads refs/main's commit alone
    offline, so the older snapshot is not read in its place: each line names main's commit, the
    commit refs/main named before (where this load moved it) and the snapshot held, which loads as a
    local teacher (pinned)."""
    from huggingface_hub import constants

    from tests.hub_server import within

    model = tiny_pixart()
    _pipeline_with(tmp_path / "pipe", model.save_pretrained)
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)  # huggingface_hub asks the GET 6 times
    repo, old = tmp_path / "hub" / "models--acme--pix", "0" * 40
    error, took = within(60, lambda: load_teacher("acme/pix"))
    assert (repo / "refs" / "main").read_text() == NEWER  # huggingface_hub moved it
    assert (repo / "snapshots" / NEWER).is_dir()  # its transformer/ folder, empty
    held = (f"(HF_HUB_CACHE, else HF_HOME/hub) holds no snapshot of main's commit {NEWER}, which its refs/main names{{}}, "
            f"only the snapshot {repo / 'snapshots' / old} (pass a snapshot folder as a local one); offline "
            "(HF_HUB_OFFLINE=1) reads refs/main's commit too, as huggingface_hub does")
    assert isinstance(error, UserError), error
    assert re.fullmatch(re.escape("cannot fetch 'acme/pix' from the Hugging Face Hub (ReadTimeout: ") + ".*" + re.escape(
        f"), and the Hugging Face cache {tmp_path / 'hub'} "
        + held.format(f" (this load's request to the Hub moved it from {old})")
        + "; pass a local folder or file, or check your network"), str(error)), error
    _unreachable(monkeypatch)
    error, took = within(60, lambda: load_teacher("acme/pix"))
    assert re.fullmatch(re.escape("cannot fetch 'acme/pix' from the Hugging Face Hub (ConnectError: ") + ".*" + re.escape(
        f"), and the Hugging Face cache {tmp_path / 'hub'} {held.format('')}; pass a local folder or file, or check "
        "your network"), str(error)), error
    assert took < 5  # one request (hub_head's), not huggingface_hub's retries
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    assert str(e.value) == (f"cannot fetch 'acme/pix' offline (HF_HUB_OFFLINE), and the Hugging Face cache "
                            f"{tmp_path / 'hub'} {held.format('')}: check the id, fetch it once online, or pass a "
                            "local folder or file")
    teacher = load_teacher(str(repo / "snapshots" / old))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
