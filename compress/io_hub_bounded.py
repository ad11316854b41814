"""Hub requests with bounded waits, and those no answer came to. A Hub pipeline diffusers loads
itself (a calibration pipeline, load_pipeline's base) sends its own requests (model_info,
snapshot_download's), most naming no wait, hf_hub_download's retried HEAD a 60 s one: inside
`bounded_hub` each waits HF_HUB_ETAG_TIMEOUT (a HEAD) or HF_HUB_DOWNLOAD_TIMEOUT at most (`bound_waits`),
and `Unanswered` records those that got no answer; a teacher's fetch (io_hub_requests.fetch_files)
sends no more once one got none (`HubStopped`). `waited` says a request that timed out in words
(the seconds, the variable that lengthens them); `unreachable` tells a request that failed for the
network or the Hub's state from one refused for the repo or the user's access."""

from __future__ import annotations

import contextlib
import threading
import time

from compress.io_tensors import one_line

TIMEOUTS = {"HEAD": "HF_HUB_ETAG_TIMEOUT", "GET": "HF_HUB_DOWNLOAD_TIMEOUT"}  # what bounds a request, by method


def unreachable(e: Exception) -> bool:
    """A request that failed for the network or the Hub's state (no connection, a timeout, a proxy,
    the Hub down), not because of the repo or the user's access."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return status is None or status >= 500 or status in (408, 429)
    transport = type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
    return isinstance(e, (OSError, HubStopped)) or transport


def chain(e: BaseException | None):
    """`e` and what it was raised from or during, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else e.__context__


def request_method(e: BaseException) -> str | None:
    try:
        return e.request.method
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError where no request is attached
        return None


def waited(e: BaseException, method: str | None = None, sent: Unanswered | None = None) -> str:
    """' (no answer within 10 s; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)' for a request that
    timed out (httpx's or httpcore's TimeoutException anywhere in `e`'s chain: HF_HUB_ETAG_TIMEOUT
    bounds a HEAD, HF_HUB_DOWNLOAD_TIMEOUT the others; the method `method`, else the first request
    the chain names); '' for any other error. Where bounded_hub's record `sent` holds several
    requests no answer came to (diffusers' resolve_revision times out and goes on: its model_info
    waits again; hf_hub_download asks a HEAD again 6 times), Unanswered.words; the record is also
    found on an error bounded_hub let through (`hub_unanswered`)."""
    from huggingface_hub import constants

    errors = list(chain(e))
    if not any(c.__name__ == "TimeoutException" for x in errors for c in type(x).__mro__):
        return ""
    sent = sent or next((x.hub_unanswered for x in errors if hasattr(x, "hub_unanswered")), None)
    if sent is not None and len(sent.waits) > 1:
        return f" ({sent.words()})"
    method = method or next((m for m in map(request_method, errors) if m), "GET")
    var = TIMEOUTS.get(method, TIMEOUTS["GET"])
    return f" (no answer within {getattr(constants, var)} s; set {var} to wait longer)"


class HubStopped(RuntimeError):
    """A request not sent inside bounded_hub(stop=True): one sent before it got no answer (raised
    from that one's error). Not one of httpx's errors: huggingface_hub retries those alone
    (http_backoff: TimeoutException, NetworkError, RemoteProtocolError; http_get: ConnectError,
    TimeoutException, RemoteProtocolError), so hf_hub_download ends at once, with no backoff sleeps."""


class Unanswered:
    """bounded_hub's record of the requests sent inside it that no answer came to (a timeout, a
    lost connection): each one's wait, the variable that bounds it, when it was sent and when its
    sending ended; where `stop`, the first one's error (`lost`), and later requests not sent."""

    def __init__(self, stop: bool = False):
        self.pending: list[list] = []  # [request, seconds, HF_HUB_*_TIMEOUT, thread, sent, ended (None: still)]
        self.lock = threading.Lock()  # snapshot_download sends from several threads
        self.stop, self.lost = stop, None

    def sent(self, request) -> None:  # a request hook, after bound_waits
        if self.stop and self.lost is not None:
            raise HubStopped(f"not sent: an earlier request got no answer ({one_line(self.lost)})") from self.lost
        var = TIMEOUTS.get(request.method, TIMEOUTS["GET"])
        entry = [request, request.extensions["timeout"]["read"], var, threading.get_ident(), time.monotonic(), None]
        with self.lock:
            self.pending.append(entry)

    def answered(self, response) -> None:  # a response hook: the answer's headers came
        with self.lock:
            self.pending = [p for p in self.pending if p[0] is not response.request]

    def ended(self, error: Exception | None = None) -> None:
        """The client's send returned or raised (`error`: httpx's, no answer came) in this thread: its
        requests still pending ended now (a thread sends one request at a time; httpx follows a
        redirect with a new one)."""
        thread, now = threading.get_ident(), time.monotonic()
        with self.lock:
            if self.lost is None and error is not None and not isinstance(error, HubStopped) and unreachable(error):
                self.lost = error
            for p in self.pending:
                if p[3] == thread and p[5] is None:
                    p[5] = now

    @property
    def waits(self) -> list[tuple[float, str]]:
        return [(seconds, var) for _, seconds, var, *_ in self.pending]

    def words(self) -> str:
        """'no answer to 14 requests within 1 s each, 9 s from the first to the last; set
        HF_HUB_ETAG_TIMEOUT to wait longer': the wait each (its distinct values where they differ)
        and the wall time from the first one sent to the last one ended (they overlap: snapshot_download
        sends from several threads), not their sum."""
        with self.lock:
            pending = list(self.pending)
        seconds = sorted({s for _, s, *_ in pending})
        each = (f"{seconds[0]:g}" if len(seconds) == 1
                else f"{', '.join(f'{s:g}' for s in seconds[:-1])} or {seconds[-1]:g}")
        now = time.monotonic()
        wall = max(now if p[5] is None else p[5] for p in pending) - min(p[4] for p in pending)
        names = " or ".join(dict.fromkeys(var for _, _, var, *_ in pending))
        return (f"no answer to {len(pending)} requests within {each} s each, {wall:.0f} s from the first to the last; "
                f"set {names} to wait longer")


@contextlib.contextmanager
def bounded_hub(stop: bool = False):
    """Inside, huggingface_hub's requests that set no wait (diffusers' for a Hub pipeline: model_info
    and resolve_revision's repo_info pass timeout=None, snapshot_download's list_repo_tree none;
    huggingface_hub 2.4's client has none either, so each waited forever) wait as long as
    `waited` says: HF_HUB_ETAG_TIMEOUT a HEAD, HF_HUB_DOWNLOAD_TIMEOUT the others. The client
    factory huggingface_hub builds its shared client with is wrapped, not replaced: a library
    user's own (set_client_factory: proxies, certificates) still builds it, and is put back after
    (its client rebuilt on the next request). Where `stop` (a teacher's fetch), once a request got no
    answer, later ones raise HubStopped unsent: hf_hub_download's retried HEAD and resumed GET (up
    to 6 tries and 1+2+4+8+8 s of sleeps) are not waited; the cost: a request lost to a brief
    network failure gets no retry (io_hub_requests.download: completed files stay cached, a rerun resumes). A request
    hook, not the client's timeout: an explicit timeout=None overrides that. A factory, not a hook on
    the live client: huggingface_hub closes that client after a ConnectError and builds another.
    Yields the record (Unanswered) of the requests no answer came to, for io_hub_requests.timed_out's words; an
    error raised inside carries it too (`hub_unanswered`), for words said where bounded_hub is not in
    sight (io_hub.hub_error)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = _http._GLOBAL_CLIENT_FACTORY  # huggingface_hub has no public getter for it
    record = Unanswered(stop)

    def bounded():
        client = previous()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), bound_waits, record.sent],
                              "response": [*hooks.get("response", []), record.answered]}
        send = client.send

        def timed(*args, **kwargs):  # when a request no answer came to ended: Unanswered.words' wall time
            try:
                return send(*args, **kwargs)
            except Exception as e:
                record.ended(e)  # first: its error, where it is the first unanswered one
                raise
            finally:  # every exit, a KeyboardInterrupt's too: none left pending until words' now
                record.ended()
        client.send = timed
        return client

    set_client_factory(bounded)
    try:
        yield record
    except Exception as e:
        with contextlib.suppress(AttributeError):  # an error that takes no attribute keeps its words
            e.hub_unanswered = getattr(e, "hub_unanswered", record)
        raise
    finally:
        set_client_factory(previous)


def bound_waits(request) -> None:
    """bounded_hub's request hook: every wait (connect, read, write, pool) of `request` at most its
    method's HF_HUB_*_TIMEOUT (TIMEOUTS), those it leaves unbounded that. One it sets longer is
    capped too: hf_hub_download asks a HEAD that timed out again 6 times with a 60 s wait of its
    own (file_download's _ETAG_RETRY_TIMEOUT), so a Hub that holds a pipeline's files held a load
    for minutes whatever HF_HUB_ETAG_TIMEOUT said. A user who wants longer waits raises the
    variable; a load that gets no answer ends in about the tries times it, plus huggingface_hub's
    backoff sleeps between them (1, 2, 4, 8, 8 s)."""
    from huggingface_hub import constants

    wait = getattr(constants, TIMEOUTS.get(request.method, TIMEOUTS["GET"]))
    waits = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {k: wait if waits.get(k) is None else min(waits[k], wait)
                                     for k in ("connect", "read", "write", "pool")}
