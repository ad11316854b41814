"""The requests a Hub teacher's load sends, each with a bounded wait: whether the Hub answers and at
which commit (`hub_head`, one HEAD for a repo while its answer holds), the repo's file list
(`repo_files`; `placed`: where a copy of the repo has its transformer, by that list) and the
transformer's files (`fetch_files`); and a failed request in words (`cause_line`: one that timed out
names the seconds waited and the environment variable that lengthens them).

huggingface_hub 2.4's client has no timeout of its own: `HfApi.list_repo_files` and
`snapshot_download`'s repo_info / list_repo_tree send none, so a network that accepts the
connection and never answers held a load forever. The list is read from `model_info` (which takes
a timeout: HF_HUB_DOWNLOAD_TIMEOUT) and the files are fetched one by one with `hf_hub_download`
(its HEAD waits HF_HUB_ETAG_TIMEOUT, its download HF_HUB_DOWNLOAD_TIMEOUT between reads), each
after one HEAD of ours without huggingface_hub's retries (`download`: a Hub that stopped answering
fails at once, not after ~23 s of backoff sleeps); once a request of a teacher's fetch got no
answer, its later requests are not sent (bounded_hub(stop=True), `HubStopped`): a Hub that stops
answering after our HEAD fails in about one timeout too, not after hf_hub_download's retries.

The bounds themselves (`bounded_hub`, its record of the requests no answer came to, a timeout's
words) are io_hub_bounded's; `timed_out` says a request that ran out in words."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

from compress.io_hub_bounded import HubStopped, Unanswered, bounded_hub, unreachable, waited
from compress.io_tensors import one_line

_HEADS: dict[tuple[str, str], tuple[float, tuple[str | None, str | None]]] = {}  # (cache, repo) -> (when, answer)
KEPT_S = {True: 600.0, False: 60.0}  # how long hub_head's answer holds: the Hub answered, it could not be reached


def hub_head(repo_id: str, name: str) -> tuple[str | None, str | None]:
    """One request for the repo's file `name` without huggingface_hub's retries: (why the Hub cannot
    be reached ('ConnectError: …'), None) where it cannot; else (None, the commit of main where the
    answer names it: a repo without `name` answers 404 with it too; an error of the repo or the
    user's access is said by the fetch that follows). Sent once for a repo's main in a cache while
    the answer holds (KEPT_S: 10 min, 1 min where the Hub could not be reached, until a load after it is
    refused: forget_lost): a run's source check
    and its load share it, and a notebook that loads again later, after the network came back or the
    Hub moved on, asks again."""
    from compress.io_hub import hub_cache

    key, now = (hub_cache(), repo_id), time.monotonic()
    if key not in _HEADS or now - _HEADS[key][0] > KEPT_S[_HEADS[key][1][0] is None]:
        _HEADS[key] = (now, head_request(repo_id, name))
    return _HEADS[key][1]


def stopped_answering(repo_id: str, cause: str) -> None:
    """hub_head's answer for `repo_id` made 'the Hub cannot be reached (`cause`)' from now (KEPT_S:
    for 1 min): the Hub answered its request, then a request of the load that followed timed out
    (io_hub_pipeline.hub_or_cache); the process's next loads of it read the cache without waiting again,
    until one is refused (asked_again_if_refused)."""
    from compress.io_hub import hub_cache

    _HEADS[(hub_cache(), repo_id)] = (time.monotonic(), (cause, None))


def head_request(repo_id: str, name: str) -> tuple[str | None, str | None]:
    """hub_head's request, sent (reach's): (why the Hub cannot be reached, None) or (None, the commit)."""
    try:
        return None, reach(repo_id, name)
    except Exception as e:  # noqa: BLE001 - reach raises where the Hub cannot be reached alone
        return cause_line(e, "HEAD"), None


def reach(repo_id: str, name: str, revision: str | None = None) -> str | None:
    """One HEAD for the repo's file `name` (of `revision`, else main) without huggingface_hub's
    retries, waiting HF_HUB_ETAG_TIMEOUT at most (get_hf_file_metadata's default): the commit its
    answer names (a 404 names it too; None where none is named, or the repo or the user's access
    failed it: the fetch that follows says those); its error raised where the Hub cannot be reached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    from compress.io_hub import quiet_hub

    try:
        with quiet_hub():
            answer = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=revision),
                                          timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the transport's errors vary with huggingface_hub's version
        if unreachable(e):
            raise
        headers = getattr(getattr(e, "response", None), "headers", None) or {}
        return headers.get("X-Repo-Commit")
    return getattr(answer, "commit_hash", None)


_LISTS: dict[tuple[str, str, str], list[str]] = {}  # (cache, repo, commit) -> its files: a commit's never change
_LOST: dict[tuple[str, str, str, float], tuple[float, Exception]] = {}  # (cache, repo, revision, wait) -> (when, error)


def repo_files(repo_id: str, **revision) -> list[str]:
    """The names of the repo's files (of `revision`, where given), from the Hub's list: model_info's
    siblings, asked with HF_HUB_DOWNLOAD_TIMEOUT (list_repo_files takes none); a commit's asked once
    a process for a cache (a run's source check and its load share it). A list the Hub did not answer
    (unreachable: a timeout, a lost connection) is not asked again for KEPT_S[False] (1 min) at the
    same HF_HUB_DOWNLOAD_TIMEOUT (its words, `waited`'s, name that wait): ListLost is raised at once
    (run's load waited a second timeout after its check's), until a load that read the cache after
    it is refused (`forget_lost`: the user's retry asks again)."""
    from huggingface_hub import HfApi, constants

    from compress.io_hub import hub_cache, quiet_hub

    key = (hub_cache(), repo_id, revision.get("revision") or "")
    lost = (*key, constants.HF_HUB_DOWNLOAD_TIMEOUT)  # a wait raised since (as the words advise): asked again
    if key in _LISTS:
        return _LISTS[key]
    if lost in _LOST and (ago := time.monotonic() - _LOST[lost][0]) <= KEPT_S[False]:
        raise ListLost(_LOST[lost][1], ago)
    try:
        with quiet_hub():
            info = HfApi().model_info(repo_id, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, **revision)
    except Exception as e:  # noqa: BLE001 - the transport's errors vary with huggingface_hub's version
        if unreachable(e):
            _LOST[lost] = (time.monotonic(), e)
        raise
    files = [s.rfilename for s in info.siblings or ()]
    if key[2]:
        _LISTS[key] = files
    return files


class ListLost(RuntimeError):
    """repo_files' list not asked again: the Hub did not answer it `ago` seconds before (`lost`, its
    error); cause_line says both."""

    def __init__(self, lost: Exception, ago: float):
        super().__init__(f"{type(lost).__name__}: {one_line(lost)}")
        self.lost, self.ago = lost, ago


def forget_lost(repo_id: str) -> None:
    """repo_files' remembered losses of `repo_id`'s lists (in this cache) forgotten, and hub_head's
    'cannot be reached' for it: a load that read the cache after one was refused, and the user's
    retry, the network back, asks the Hub again."""
    from compress.io_hub import hub_cache

    for key in [k for k in _LOST if k[:2] == (hub_cache(), repo_id)]:
        del _LOST[key]
    if _HEADS.get(head := (hub_cache(), repo_id), (0, (None,)))[1][0] is not None:
        del _HEADS[head]  # the Hub's answer (a commit) still holds


@contextlib.contextmanager
def asked_again_if_refused(repo_id: str):
    """Inside, an error raised (a refusal the user sees) forgets `repo_id`'s lost lists and head (forget_lost)."""
    try:
        yield
    except Exception:
        forget_lost(repo_id)
        raise


def in_folder(files: list[str], sub: str) -> list[str]:
    """The names of the files of the repo folder `sub` among the repo's `files` (not its subfolders')."""
    return [f[len(sub):] for f in files if f.startswith(sub) and "/" not in f[len(sub):]]


def placed(repo_id: str, config: Path, sub: str, files: list[str], **revision) -> tuple[Path, str]:
    """(the transformer config.json io.transformer_sub's rule picks by the repo's list `files`, as a
    local copy of the repo reads it; its folder in the repo): `config` (io_hub.hub_config's, of the
    folder `sub`) where it is that one, else the other fetched (of `revision`). Where model_index.json
    decides (beside a config.json at the root), it is fetched too, so that the cache's snapshot reads
    alike as a Hub id (io_hub.cached_config), as an output's and as a local copy."""
    from compress.io import transformer_sub
    from compress.io_hub import quiet_hub

    place = transformer_sub(set(files).__contains__)
    index = place == "transformer/" and "config.json" in files  # model_index.json says transformer/
    if place in (None, sub) and not index:
        return config, sub
    with quiet_hub(), bounded_hub(stop=True):
        if index:
            download(repo_id, "", "model_index.json", **revision)
        if place not in (None, sub):
            config, sub = Path(download(repo_id, place, "config.json", **revision)), place
    return config, sub


def fetch_files(repo_id: str, sub: str, names: list[str], **revision) -> Path:
    """The local folder of the repo folder `sub` once its files `names` are fetched (of `revision`,
    where given), one `download` each: snapshot_download's own list has no timeout. Inside
    bounded_hub(stop=True): once a request of the fetch got no answer (the Hub stops answering between
    download's HEAD and hf_hub_download's own), its later ones, hf_hub_download's retries among them,
    are not sent (HubStopped): each file left comes from the cache, or the fetch fails with that
    request's error (`download`)."""
    from compress.io_hub import quiet_hub

    folder = None
    with quiet_hub(), bounded_hub(stop=True):
        for name in names:
            folder = Path(download(repo_id, sub, name, **revision)).parent
    return folder


def download(repo_id: str, sub: str, name: str, **revision) -> str:
    """hf_hub_download of the repo file SUB+`name` (of `revision`), its HEAD asked first with reach's
    one request: hf_hub_download asks a HEAD the Hub did not answer again 5 times, with 1+2+4+8+8 s of
    backoff sleeps between (~23 s where the Hub stopped answering after an earlier request; minutes
    where it holds the requests: 60 s waits of its own outside bounded_hub), before its error. Where
    that request finds the Hub unreachable, or one of hf_hub_download's own went unanswered inside
    bounded_hub(stop=True) (HubStopped: its retries not sent), the cache's copy (`cache_or_lost`). A
    file the cache holds of the commit `revision` names is not asked for. The cost of stop: a request
    lost to a brief network failure is not retried (nor a later one sent), so a file the cache lacks
    fails the load where hf_hub_download's retries might have fetched it; files completed stay cached,
    and a rerun resumes from them."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    commit = revision.get("revision")
    kept = try_to_load_from_cache(repo_id, sub + name, revision=commit) if commit else None
    if isinstance(kept, str):
        return kept
    fetch = functools.partial(hf_hub_download, repo_id, name, subfolder=sub.rstrip("/") or None, **revision)
    try:
        reach(repo_id, sub + name, commit)
    except Exception as e:  # noqa: BLE001 - reach raises where the Hub cannot be reached alone
        return cache_or_lost(fetch, f"{repo_id}'s {sub}{name}", e)
    try:
        return fetch()
    except HubStopped as e:
        return cache_or_lost(fetch, f"{repo_id}'s {sub}{name}", e)


def cache_or_lost(fetch, what: str, e: Exception) -> str:
    """The cache's copy of `what` (`fetch`, hf_hub_download's, local_files_only: its own fall-back,
    no request), where the Hub cannot be reached (`e`); else LocalEntryNotFoundError raised from the
    error of the request that went unanswered, as hf_hub_download's (`e`, or what a HubStopped `e`
    is raised from)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    lost = e.__cause__ if isinstance(e, HubStopped) and e.__cause__ is not None else e
    try:
        return fetch(local_files_only=True)
    except LocalEntryNotFoundError:
        raise LocalEntryNotFoundError(f"the Hub cannot be reached for {what}, and the cache holds no copy of "
                                      "it") from lost


def cause_line(e: Exception, method: str | None = None, sent: Unanswered | None = None) -> str:
    """'TYPE: message' of the error under a failed Hub call (LocalEntryNotFoundError wraps the
    network's), and for a request that timed out how long it waited and what waits longer
    (`method`: the request's, where the caller knows it: a timeout's innermost cause names none;
    `sent`: bounded_hub's record, where several requests went unanswered); a ListLost's with when
    it was lost ('under 1 s before' where it was: a run's load just after its check) and that it was
    not asked again."""
    if isinstance(e, ListLost):
        ago = "under 1 s" if e.ago < 1 else f"{e.ago:.0f} s"
        return f"{cause_line(e.lost, method, sent)}, {ago} before; not asked again"
    cause = e.__cause__ if e.__cause__ is not None else e
    return f"{type(cause).__name__}: {one_line(cause)}{waited(e, method, sent)}"


def timed_out(e: BaseException, sent: Unanswered | None = None) -> str | None:
    """'the Hugging Face Hub did not answer (ReadTimeout: … (no answer within 10 s; set
    HF_HUB_DOWNLOAD_TIMEOUT to wait longer))' where a request under `e` timed out (cause_line's
    words; `sent`: bounded_hub's record); None for any other error."""
    return f"the Hugging Face Hub did not answer ({cause_line(e, sent=sent)})" if waited(e) else None
