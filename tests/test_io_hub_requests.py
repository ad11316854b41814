"""io_hub_requests: every request a Hub teacher's load sends waits a bounded time (huggingface_hub
2.4's list_repo_files and snapshot_download send none: a network that accepts the connection and
never answers held the load forever), and one that times out is one line naming the id, the
seconds waited and the environment variable that lengthens them."""

from __future__ import annotations

import json

import pytest

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 7)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    for name in ("list_repo_files", "list_repo_tree", "repo_info"):  # no timeout: never called
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda *a, name=name, **k: pytest.fail(f"{name} {a} {k}"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail(f"snapshot_download {a}"))


def _timeout(method: str, url: str = "https://huggingface.co/acme/pix"):
    """The error httpx raises (after huggingface_hub's retries) where the Hub never answers."""
    import httpx2

    return httpx2.ReadTimeout("The read operation timed out", request=httpx2.Request(method, url))


def _cached_pipeline(tmp_path, weights: bool) -> None:
    """acme/pix in the cache: transformer/config.json, and its weights where `weights`."""
    from tests.pipelines import hub_cache

    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    (tiny_pixart().save_pretrained if weights else tiny_pixart().save_config)(folder / "transformer")
    hub_cache(tmp_path / "hub", "acme/pix", folder)


def _config_download(tmp_path, fail_weights=None):
    """hf_hub_download as the Hub answers it for the cached config; weights fail with `fail_weights`."""
    def fetch(repo, name, subfolder=None, **kwargs):
        if name != "config.json":
            raise fail_weights
        return str(tmp_path / "hub" / "models--acme--pix" / "snapshots" / ("0" * 40) / subfolder / name)
    return fetch


def test_a_file_list_that_never_comes_waits_hf_hub_download_timeout_and_says_so(tmp_path, monkeypatch):
    """The repo's file list is asked with a timeout (model_info; list_repo_files takes none); where it
    runs out, the cache answers and its error names the id, the wait and HF_HUB_DOWNLOAD_TIMEOUT."""
    import huggingface_hub

    _cached_pipeline(tmp_path, weights=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _config_download(tmp_path))
    waits = []

    def model_info(self, repo, timeout=None, **kwargs):
        waits.append(timeout)
        raise _timeout("GET")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    assert waits == [7]
    assert str(e.value).startswith("the Hugging Face cache holds no weights of 'acme/pix' (transformer/) beside its "
                                   "config.json (the Hub's file list failed: ReadTimeout: The read operation timed out "
                                   "(no answer within 7 s; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer))")


@pytest.mark.parametrize("method, var, seconds", [("GET", "HF_HUB_DOWNLOAD_TIMEOUT", 7),
                                                  ("HEAD", "HF_HUB_ETAG_TIMEOUT", 5)])
def test_weights_that_never_come_are_one_line_naming_what_waits_longer(tmp_path, monkeypatch, method, var, seconds):
    """The weights are fetched one hf_hub_download each (its HEAD bounded by HF_HUB_ETAG_TIMEOUT, its
    download by HF_HUB_DOWNLOAD_TIMEOUT), not by snapshot_download, whose own list waits forever;
    a HEAD that times out comes wrapped in LocalEntryNotFoundError, as hf_hub_download raises it."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from tests.test_io_hub import hub_info

    _cached_pipeline(tmp_path, weights=False)
    error = _timeout(method)
    if method == "HEAD":
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file") from error
        except LocalEntryNotFoundError as wrapped:
            error = wrapped
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _config_download(tmp_path, error))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout, **kw: hub_info(
        ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"]))
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    cached = " and the Hugging Face cache" if method == "HEAD" else ""
    assert str(e.value).startswith(
        f"cannot fetch 'acme/pix' from the Hugging Face Hub (ReadTimeout: The read operation timed out (no answer "
        f"within {seconds} s; set {var} to wait longer)){cached}")


def test_a_reachability_request_that_never_answers_waits_hf_hub_etag_timeout(tmp_path, monkeypatch):
    """hub_head's one request passes its timeout; a timeout there says which variable lengthens it."""
    import huggingface_hub

    waits = []

    def head(url, timeout=None, **kwargs):
        waits.append(timeout)
        raise _timeout("HEAD", url)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    with pytest.raises(UserError) as e:
        load_teacher("acme/uncached")
    assert waits == [5]
    assert str(e.value).startswith("cannot fetch 'acme/uncached' from the Hugging Face Hub (ReadTimeout: The read "
                                   "operation timed out (no answer within 5 s; set HF_HUB_ETAG_TIMEOUT to wait longer)),")


def test_errors_other_than_a_timeout_keep_their_words():
    import httpx2

    from compress.io_hub_requests import cause_line

    assert cause_line(httpx2.ConnectError("[Errno -3] Temporary failure")) == "ConnectError: [Errno -3] Temporary failure"
    assert cause_line(httpx2.ReadTimeout("timed out")).endswith("(no answer within 7 s; set HF_HUB_DOWNLOAD_TIMEOUT "
                                                                "to wait longer)")  # no request attached: a GET's


def test_the_reachability_answer_holds_a_while_then_the_hub_is_asked_again(tmp_path, monkeypatch):
    """hub_head's answer was kept for the whole process: a notebook that loaded again after the
    network came back (or after the Hub moved on) kept the first answer. It holds 10 minutes where
    the Hub answered, 1 where it could not be reached, and is asked again after."""
    import huggingface_hub
    from huggingface_hub import constants

    from compress import io_hub_requests

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    now, asked, down = [1000.0], [], [True]

    def head(url, timeout=None, **kwargs):
        asked.append(now[0])
        if down[0]:
            raise _timeout("HEAD", url)
        return type("Answer", (), {"commit_hash": "c" * 40})()
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    monkeypatch.setattr(io_hub_requests.time, "monotonic", lambda: now[0])
    assert io_hub_requests.hub_head("acme/pix", "config.json")[0].startswith("ReadTimeout")
    now[0] += 30
    assert io_hub_requests.hub_head("acme/pix", "config.json")[0].startswith("ReadTimeout")  # held: not asked
    down[0], now[0] = False, now[0] + 31  # the network is back, a minute after the first answer
    assert io_hub_requests.hub_head("acme/pix", "config.json") == (None, "c" * 40)
    now[0] += 599
    assert io_hub_requests.hub_head("acme/pix", "config.json") == (None, "c" * 40)  # held
    now[0] += 2
    io_hub_requests.hub_head("acme/pix", "config.json")
    assert asked == [1000.0, 1061.0, 1662.0]


def test_a_reachability_timeout_whose_cause_names_no_request_names_hf_hub_etag_timeout(tmp_path, monkeypatch):
    """The real transport's timeout (T3, a server that accepts and never answers) is httpx's
    ReadTimeout raised from httpcore's, which carries no request: the cause was read, its method
    taken as GET, and the first check said 'no answer within 10 s; set HF_HUB_DOWNLOAD_TIMEOUT'
    though HF_HUB_ETAG_TIMEOUT bounds it."""
    import httpcore2
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 30)

    def head(url, timeout=None, **kwargs):
        try:
            raise httpcore2.ReadTimeout("timed out")
        except httpcore2.ReadTimeout as inner:
            raise httpx2.ReadTimeout("timed out") from inner  # no request anywhere in the chain
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    from compress.io_hub_requests import hub_head

    cause, commit = hub_head("acme/slow", "config.json")
    assert commit is None and cause == "ReadTimeout: timed out (no answer within 3 s; set HF_HUB_ETAG_TIMEOUT to wait longer)"
