"""io_hub_bounded: inside bounded_hub every request's wait is at most its HF_HUB_*_TIMEOUT, the
user's client factory kept, and the requests no answer came to are said in words (their count, the
wait each, the time from the first to the last, the variables that lengthen them)."""

from __future__ import annotations

from tests.test_io_hub_requests import _user_factory


def test_unanswered_requests_are_said_with_each_wait_and_the_variables_that_bound_them(monkeypatch):
    """bounded_hub's record in words: the count of requests no answer came to, the wait each (one
    number where all are alike, else the distinct ones: it listed all 49 of them), the wall time
    from the first one sent to the last one ended (it summed waits that ran in parallel), the
    variables that lengthen them; a request answered is not counted."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)

    from compress import io_hub_bounded
    from compress.io_hub_bounded import Unanswered, waited

    now = [100.0]
    monkeypatch.setattr(io_hub_bounded.time, "monotonic", lambda: now[0])

    def request(method, read):
        r = httpx.Request(method, "http://127.0.0.1:1/x")
        r.extensions["timeout"] = {"connect": read, "read": read, "write": read, "pool": read}
        return r
    record = Unanswered()
    head, answered = request("HEAD", 5), request("GET", 10)
    for r in (head, answered, request("GET", 10), request("GET", 10)):
        record.sent(r)  # all at 100 s, as threads send them
    record.answered(httpx.Response(200, request=answered))
    now[0] = 112.4
    record.ended()  # this thread's requests still pending end at 112.4 s
    assert record.words() == ("no answer to 3 requests within 5 or 10 s each, 12 s from the first to the last; "
                              "set HF_HUB_ETAG_TIMEOUT or HF_HUB_DOWNLOAD_TIMEOUT to wait longer")
    record.answered(httpx.Response(200, request=head))
    now[0] = 130.0  # the record's ends are kept: later time is not counted
    timeout = httpx.ReadTimeout("timed out", request=request("GET", 10))
    assert waited(timeout, sent=record) == (" (no answer to 2 requests within 10 s each, 12 s from the first to the "
                                            "last; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)")
    assert waited(ValueError("x"), sent=record) == ""  # no timeout: no words
    timeout.hub_unanswered = record  # an error bounded_hub let through carries its record
    assert waited(timeout).startswith(" (no answer to 2 requests within 10 s each")


def test_bounded_hub_caps_every_wait_at_its_variable_and_puts_the_factory_back(monkeypatch):
    """Inside bounded_hub a request's unset waits are its method's HF_HUB_*_TIMEOUT (an explicit
    timeout=None, as model_info sends, too), its own kept where shorter and capped where longer
    (hf_hub_download's retried HEAD sets 60 s); the user's factory builds the client and is the
    factory again after, its client without the hook."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    from huggingface_hub import constants, get_session, set_client_factory
    from huggingface_hub.utils import _http

    from compress.io_hub_bounded import bound_waits, bounded_hub

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 4)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)

    def sent(client, method, **timeout):
        request = client.build_request(method, "http://127.0.0.1:1/x", **timeout)
        for hook in client.event_hooks["request"]:
            hook(request)
        return request.extensions["timeout"]
    set_client_factory(_user_factory)
    try:
        with bounded_hub():
            client = get_session()
            assert client.headers["x-user-factory"] == "yes"
            assert sent(client, "GET", timeout=None) == {"connect": 4, "read": 4, "write": 4, "pool": 4}
            assert sent(client, "HEAD") == {"connect": 2, "read": 2, "write": 2, "pool": 2}
            assert sent(client, "GET", timeout=httpx.Timeout(None, connect=3)) == {
                "connect": 3, "read": 4, "write": 4, "pool": 4}
            assert sent(client, "GET", timeout=httpx.Timeout(None, connect=30)) == {
                "connect": 4, "read": 4, "write": 4, "pool": 4}
            assert sent(client, "HEAD", timeout=60) == {"connect": 2, "read": 2, "write": 2, "pool": 2}
        assert _http._GLOBAL_CLIENT_FACTORY is _user_factory
        assert get_session() is not client and bound_waits not in get_session().event_hooks["request"]
    finally:
        set_client_factory(_http.default_client_factory)
