"""io_hub_requests.download: a Hub teacher whose Hub answered a request and then stopped answering
(its requests held, or its address refusing connections) fails at once in one line naming the
teacher and what to do. hf_hub_download (io_hub.fetch_config's teacher config, fetch_files' weights)
asked a HEAD the Hub did not answer again 5 times, 1+2+4+8+8 s of backoff sleeps between, each held
one 60 s outside bounded_hub; now its HEAD is asked first with hub_head's one request, no retries.
Where the Hub stops answering after that HEAD (hf_hub_download's own HEAD or GET held), its retries
(1+2+4+8+8 s of sleeps, up to 6 tries of HF_HUB_*_TIMEOUT each) are not sent: bounded_hub(stop=True)."""

from __future__ import annotations

import time

import pytest

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.hub_server import _model_info, _reply, _serve, within
from tests.test_io_hub_unreachable import _unreachable

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of the test's own (conftest forgets hub_head's earlier answers)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _stopping_hub(monkeypatch, tmp_path, last, refuse: bool, slow: float = 0.0):
    """A Hub on 127.0.0.1 (tests/hub_server) holding acme/pix, a tiny PixArt transformer's config and
    weights in transformer/, that answers requests up to the one `last(request line)` is true of,
    then stops: holds every later request unanswered, or where `refuse`, its address a port nothing
    listens on from then (connection refused). HF_HUB_*_TIMEOUT 1 s; each answer `slow` s late."""
    tiny_pixart().save_pretrained(tmp_path / "transformer")
    files = ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"]
    bodies = {f"/{f} ": (tmp_path / f).read_bytes() for f in files}
    stopped = []

    def answer(line: str) -> bytes | None:
        if "/api/agent-harnesses" in line:  # the registry (tests/hub_server)
            return _reply("404 Not Found", b"", head=True)
        if stopped:
            return None
        time.sleep(slow)
        if last(line):
            stopped.append(line)
            if refuse:
                _unreachable(monkeypatch)
        if " /api/models/acme/pix" in line:
            return _model_info(line, "acme/pix", files)
        name = next((f for f in bodies if f in line), None)
        if name is None:
            return _reply("404 Not Found\r\nX-Error-Code: EntryNotFound", b"", head=line.startswith("HEAD "))
        reply = _reply("200 OK", bodies[name], head=line.startswith("HEAD "))
        return reply.replace(b'"e"', f'"{len(name)}"'.encode())  # an ETag of its own: the cache's blob's name
    return _serve(monkeypatch, answer)


CACHE_LACKS = "and the Hugging Face cache {} does not hold it; pass a local folder or file, or check the id and your network"


def _failed_at_once(hub, tmp_path, cause: str) -> list[str]:
    """load_teacher('acme/pix') against `hub`: its one line, within 5 s (it took 23 s to minutes);
    the requests the Hub saw."""
    seen = next(hub)
    try:
        error, took = within(12, lambda: load_teacher("acme/pix"))
    finally:
        next(hub, None)  # the server closed, its held requests answered by a closed connection
    assert isinstance(error, UserError), error
    assert str(error) == f"cannot fetch 'acme/pix' from the Hugging Face Hub ({cause}) " + \
        CACHE_LACKS.format(tmp_path / "hub"), error
    assert took < 5, f"{took:.1f} s"
    return [line for line, *_ in seen if "agent-harnesses" not in line]


HELD = "ReadTimeout: timed out (no answer within 1 s; set HF_HUB_ETAG_TIMEOUT to wait longer)"
REFUSED = "ConnectError: [Errno 111] Connection refused"


@pytest.mark.parametrize("refuse", [False, True], ids=["held", "refused"])
def test_a_teacher_config_the_hub_stops_answering_for_after_its_first_request_fails_at_once(
        monkeypatch, tmp_path, refuse):
    """hub_head's request answered, then none: fetch_config's hf_hub_download of the config held the
    load 23.4 s (refused) or 385 s (held: its retries wait 60 s each, outside bounded_hub; its line
    said 'no answer within 1 s') before its error."""
    hub = _stopping_hub(monkeypatch, tmp_path, lambda line: True, refuse)
    asked = _failed_at_once(hub, tmp_path, REFUSED if refuse else HELD)
    heads = ["HEAD /acme/pix/resolve/main/config.json", "HEAD /acme/pix/resolve/main/transformer/config.json"]
    assert [" ".join(line.split(" ")[:2]) for line in asked] == heads[:1 if refuse else 2], asked  # one held


@pytest.mark.parametrize("refuse", [False, True], ids=["held", "refused"])
def test_teacher_weights_the_hub_stops_answering_for_fail_at_once(monkeypatch, tmp_path, refuse):
    """The config and the file list answered, the weights' requests not: fetch_files' hf_hub_download
    held the load 23.8 s (refused) or 30.3 s (held: 7 tries of 1 s in bounded_hub, and the sleeps)."""
    weights = "/transformer/diffusion_pytorch_model.safetensors "
    hub = _stopping_hub(monkeypatch, tmp_path, lambda line: " /api/models/acme/pix" in line, refuse)
    asked = _failed_at_once(hub, tmp_path, REFUSED if refuse else HELD)
    assert sum(weights in line for line in asked) == (not refuse), asked


def _nth(n: int):
    """True of the `n`-th request line it is asked of (1: the first)."""
    asked = []
    return lambda line: asked.append(line) or len(asked) == n


@pytest.mark.parametrize("last, held", [
    (2, "HEAD /acme/pix/resolve/main/transformer/config.json"),  # download's HEAD answered, hf_hub_download's held
    (3, "GET /acme/pix/resolve/main/transformer/config.json"),  # hf_hub_download's HEAD answered, its GET held
    (6, "HEAD /acme/pix/resolve/"),  # the weights': download's HEAD answered, hf_hub_download's held
    (7, "GET /acme/pix/resolve/"),  # the weights': hf_hub_download's HEAD answered, its GET held
], ids=["config-head", "config-get", "weights-head", "weights-get"])
def test_a_hub_that_stops_answering_after_download_s_head_fails_in_about_one_timeout(monkeypatch, tmp_path, last, held):
    """The Hub answered download's HEAD (reach), then held hf_hub_download's own HEAD or GET: its
    retries (a HEAD asked 6 times, a GET resumed 5 times, with 1+2+4+8+8 s or 1 s sleeps between)
    held the load 30.2 s (the config's HEAD), 11.3 s (its GET), 33.3 s (the weights' HEAD); now
    one request is held, the load fails in about one timeout with the line naming the held one."""
    var = "HF_HUB_ETAG_TIMEOUT" if held.startswith("HEAD") else "HF_HUB_DOWNLOAD_TIMEOUT"
    cause = f"ReadTimeout: timed out (no answer within 1 s; set {var} to wait longer)"
    asked = _failed_at_once(_stopping_hub(monkeypatch, tmp_path, _nth(last), refuse=False), tmp_path, cause)
    assert len(asked) == last + 1 and asked[-1].startswith(held), asked  # one held, none sent after it


def test_a_hub_answering_each_request_within_its_timeout_is_waited_for(monkeypatch, tmp_path):
    """Every request answered 0.5 s late (HF_HUB_*_TIMEOUT 1 s): the teacher loads, no request retried
    (download's HEAD and hf_hub_download's, of each file, and its GET; the file list)."""
    hub = _stopping_hub(monkeypatch, tmp_path, lambda line: False, refuse=False, slow=0.5)
    seen = next(hub)
    try:
        model, _ = within(40, lambda: load_teacher("acme/pix"))
    finally:
        next(hub, None)
    assert type(model).__name__ == "PixArtTransformer2DModel", model
    asked = [line for line, *_ in seen if "agent-harnesses" not in line]
    assert len(asked) == 8, asked


def test_a_request_an_interrupt_ended_is_not_left_pending(monkeypatch):
    """bounded_hub's record ends a request on every exit of the client's send: one a KeyboardInterrupt
    ended (a BaseException, not an Exception) was left pending, so Unanswered.words counted its wall
    time up to when they were said (here 300 s), not to the interrupt (3 s)."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    from huggingface_hub import constants, get_session, set_client_factory
    from huggingface_hub.utils import _http

    from compress import io_hub_bounded
    from compress.io_hub_bounded import bounded_hub

    now = [100.0]
    monkeypatch.setattr(io_hub_bounded.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)

    def interrupted(request):
        now[0] = 103.0
        raise KeyboardInterrupt
    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(interrupted)))
    try:
        with pytest.raises(KeyboardInterrupt), bounded_hub() as record:
            get_session().head("http://127.0.0.1:1/x")
    finally:
        set_client_factory(_http.default_client_factory)
    now[0] = 400.0
    assert record.words() == ("no answer to 1 requests within 5 s each, 3 s from the first to the last; "
                              "set HF_HUB_ETAG_TIMEOUT to wait longer")
