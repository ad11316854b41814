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
from tests.hub_server import BLOCKED, held, within


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 7)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    for name in BLOCKED:
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda *a, name=name, **k: pytest.fail(f"{name} {a} {k}"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail(f"snapshot_download {a}"))


def _timeout(method: str, url: str = "https://huggingface.co/acme/pix"):
    """The error httpx raises (after huggingface_hub's retries) where the Hub never answers."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)

    return httpx.ReadTimeout("The read operation timed out", request=httpx.Request(method, url))


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
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)

    from compress.io_hub_requests import cause_line

    assert cause_line(httpx.ConnectError("[Errno -3] Temporary failure")) == "ConnectError: [Errno -3] Temporary failure"
    assert cause_line(httpx.ReadTimeout("timed out")).endswith("(no answer within 7 s; set HF_HUB_DOWNLOAD_TIMEOUT "
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
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 30)

    def head(url, timeout=None, **kwargs):
        try:
            raise httpcore2.ReadTimeout("timed out")
        except httpcore2.ReadTimeout as inner:
            raise httpx.ReadTimeout("timed out") from inner  # no request anywhere in the chain
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    from compress.io_hub_requests import hub_head

    cause, commit = hub_head("acme/slow", "config.json")
    assert commit is None and cause == "ReadTimeout: timed out (no answer within 3 s; set HF_HUB_ETAG_TIMEOUT to wait longer)"


# ---- diffusers' own requests for a Hub pipeline: a live server that answers HEADs and then hangs ----
def _user_factory():
    """A library user's own client factory (a header of theirs on every request, no timeout)."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)

    return httpx.Client(headers={"x-user-factory": "yes"}, follow_redirects=True, timeout=None)


def waited_uncached(cache) -> str:
    """The error's words after WHAT 'acme/pix': for a Hub that answered the HEAD and then held diffusers'
    two requests (resolve_revision's, whose timeout diffusers swallows, and model_info's), the cache
    holding no copy."""
    return ("the Hugging Face Hub did not answer (ReadTimeout: timed out (no answer to 2 requests within 1 s each, "
            f"2 s from the first to the last; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)), and the Hugging Face cache {cache} "
            "(HF_HUB_CACHE, else HF_HOME/hub) holds no copy of it; check your network, or pass a local pipeline folder")


def test_a_calibration_pipeline_the_hub_stops_answering_fails_in_seconds_in_one_line(hanging_hub, tmp_path):
    """diffusers' own requests for a Hub pipeline (model_info, snapshot_download's) named no timeout
    and huggingface_hub 2.4's client has none: where the Hub answered our HEAD and then never
    answered, from_pretrained waited forever. They wait HF_HUB_DOWNLOAD_TIMEOUT now; the error is
    one line naming it and what was waited in all (two requests: it said 'no answer within 1 s'
    where 2 s were waited), and the cache that lacks the pipeline; the user's own client factory
    builds the client (their header sent) and is theirs again after."""
    from huggingface_hub import get_session, set_client_factory
    from huggingface_hub.utils import _http

    from compress.calib_pipeline import load_pipeline_for

    set_client_factory(_user_factory)
    try:
        error, took = within(30, lambda: load_pipeline_for(tiny_pixart(), "acme/pix"))
        assert isinstance(error, UserError), error
        assert str(error) == f"cannot load calibration pipeline 'acme/pix': {waited_uncached(tmp_path / 'hub')}"
        assert 2 <= took < 10
        assert _http._GLOBAL_CLIENT_FACTORY is _user_factory and get_session().timeout.read is None
    finally:
        set_client_factory(_http.default_client_factory)
    asked = [line for line, *_ in hanging_hub if "agent-harnesses" not in line]
    assert asked[0].startswith("HEAD /acme/pix/resolve/main/model_index.json")
    assert [line.split("?")[0].split(" ")[:2] for line in held(hanging_hub)] == [["GET", "/api/models/acme/pix"]] * 2
    assert all(headers.get("x-user-factory") == "yes" for line, headers, _ in hanging_hub)


def test_a_base_pipeline_the_hub_stops_answering_fails_in_seconds_in_one_line(hanging_hub, tmp_path):
    """load_pipeline's base pipeline, a Hub id whose Hub answers HEADs and then never answers: as
    the calibration pipeline (diffusers' timeout is httpx's, no OSError: it was a traceback)."""
    from compress import load_pipeline, save_compressed
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.ff.net.2"], rank=4), tmp_path / "out")
    error, took = within(30, lambda: load_pipeline(out, base="acme/pix"))
    assert isinstance(error, UserError), error
    assert str(error) == f"cannot load base pipeline 'acme/pix': {waited_uncached(tmp_path / 'hub')}"
    assert 2 <= took < 10 and len(held(hanging_hub)) == 2


@pytest.fixture
def short_backoff(monkeypatch):
    """huggingface_hub's backoff sleeps between tries (1, 2, 4, 8, 8 s) a tenth as long; yields those asked."""
    import time
    import types

    from huggingface_hub.utils import _http

    asked = []
    fast = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fast.sleep = lambda s: (asked.append(s), time.sleep(s / 10))
    monkeypatch.setattr(_http, "time", fast)
    yield asked


def _holding(monkeypatch, tmp_path, files):
    """tests/hub_server.holding_files for acme/pix, a tiny PixArt pipeline's model_index.json."""
    from tests.hub_server import holding_files
    from tests.pipelines import pixart_pipeline

    index = (pixart_pipeline(tmp_path / "pipe") / "model_index.json").read_bytes()
    return holding_files(monkeypatch, "acme/pix", index, files)


def _held_heads(seen) -> list[str]:
    """The HEADs of files holding_files held (all but model_index.json's)."""
    return [line for line, *_ in seen if line.startswith("HEAD ") and "/model_index.json " not in line]


def _line_numbers(line: str) -> tuple[int, str, int, str]:
    """(requests, the wait each, the wall seconds, the variables) in an Unanswered.words line."""
    import re

    found = re.search(r"no answer to (\d+) requests within ([\d., or]+) s each, (\d+) s from the first to the last; "
                      r"set (.+) to wait longer", line)
    assert found, line
    return int(found[1]), found[2], int(found[3]), found[4]


def test_a_pipeline_whose_files_the_hub_holds_ends_in_the_users_waits(monkeypatch, tmp_path, short_backoff):
    """hf_hub_download asks a file's HEAD that timed out again 6 times with a 60 s wait of its own
    (_ETAG_RETRY_TIMEOUT): with HF_HUB_ETAG_TIMEOUT=2 a calibration pipeline load against a Hub that
    answered model_info, the tree and model_index.json and held the other files took 412 s (386 s before, 37 s
    after on tools/bench_hub_timeout.py's tiny pipeline), its line
    'no answer to 49 requests within 2, 2, …, 60 and 60 s, 2534 s in all' (a sum of waits that ran in
    parallel). bounded_hub caps every wait at its variable (1 s here): 7 tries of 1 s per file plus the
    backoff sleeps; the line counts the requests, says the wait once and the wall time, not a sum."""
    from compress.calib_pipeline import load_pipeline_for

    files = ["model_index.json", "scheduler/scheduler_config.json", "vae/config.json"]
    seen = next(_holding(monkeypatch, tmp_path, files))
    error, took = within(50, lambda: load_pipeline_for(tiny_pixart(), "acme/pix"))
    assert isinstance(error, UserError), error
    count, each, wall, names = _line_numbers(str(error))
    heads = _held_heads(seen)
    assert (count, each, names) == (len(heads), "1", "HF_HUB_ETAG_TIMEOUT") and count == 2 * 7, held(seen)
    assert sorted(short_backoff) == [1, 1, 2, 2, 4, 4, 8, 8, 8, 8]  # huggingface_hub's, for each file
    assert took < 20 and abs(wall - took) <= 2, (wall, took)


def test_the_teachers_own_fetch_caps_hf_hub_downloads_retries_too(monkeypatch, tmp_path, short_backoff):
    """fetch_files (a Hub teacher's files, one hf_hub_download each) asked a HEAD the Hub held again
    6 times with a 60 s wait (measured: 387 s), then 7 times 1 s inside bounded_hub, with the backoff
    sleeps (30 s); each file's HEAD is now asked first without retries (io_hub_requests.download):
    one request held 1 s, no sleep, and the error says the wait and what waits longer."""
    from compress.io_hub import hub_error
    from compress.io_hub_requests import fetch_files

    seen = next(_holding(monkeypatch, tmp_path, ["model_index.json", "transformer/config.json"]))
    error, took = within(50, lambda: fetch_files("acme/pix", "transformer/", ["config.json"]))
    assert isinstance(error, Exception), error
    assert "(no answer within 1 s; set HF_HUB_ETAG_TIMEOUT to wait longer)" in str(
        hub_error("acme/pix", error, "a local folder"))
    assert len(_held_heads(seen)) == 1 and short_backoff == [] and took < 3, (held(seen), short_backoff, took)
