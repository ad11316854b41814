"""A Hub id as a pipeline diffusers loads itself (a calibration pipeline, load_pipeline's base), read
from the Hugging Face cache where the Hub does not serve it: offline or where one bounded request
finds the Hub unreachable (`pipeline_keywords`, before the load), and where the Hub answered that
request and then stopped answering diffusers' own (`hub_or_cache`: bounded by
io_hub_bounded.bounded_hub, they time out; the load is made again from the cache). A cache that
lacks the pipeline, or holds it in part (a part, or a file a part reads: `cache_problem`), is one line
naming the cache and the hf download that fetches what it lacks; one whose refs/main names a commit
it has no snapshot of (the Hub answered that main moved on) names both commits (io_hub_cache.uncached's
moved_main): its older snapshot is not read in its place, as huggingface_hub and diffusers do not
read it offline."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from compress.errors import UserError
from compress.io_hub import hub_cache, id_problem, note_once, offline, quiet_hub
from compress.io_hub_cache import cached_snapshot, main_commit, moved_main, uncached
from compress.io_hub_bounded import bounded_hub, chain
from compress.io_hub_requests import asked_again_if_refused, cause_line, hub_head, stopped_answering, timed_out
from compress.pipeline_cache import snapshot_lacks
from compress.pipeline_snapshot import snapshot_slot
from compress.progress import no_library_bars

CACHE = "the Hugging Face cache {} (HF_HUB_CACHE, else HF_HOME/hub)"


# (cache, Hub id) -> the cause hub_or_cache noted reading the cache with, the Hub having stopped answering:
# a later load of the process reads the cache on that record (stopped_answering) without a second note
_FELL_BACK: dict[tuple[str, str], str] = {}


def hub_or_cache(source: str, what: str, load):
    """`load(**keywords)` of the pipeline `source` (`what`: 'base pipeline'), diffusers'
    from_pretrained keywords pipeline_keywords gives, inside quiet_hub and bounded_hub. Where the
    Hub answered pipeline_keywords' request and then one of diffusers' requests timed out (it held
    the load forever before bounded_hub), a Hub id whose cached_snapshot holds the whole pipeline is
    loaded again from it (local_files_only), a note saying so (and later loads of the process read
    it from the cache: hub_head's answer is that the Hub cannot be reached); one the cache lacks, or
    holds in part, is a UserError naming the timeout and what the cache holds; so is one diffusers'
    model_info could not reach the Hub for, the cache lacking it (unreached). Other errors are
    raised as they are: the caller says them. A load refused forgets that the Hub could not be
    reached (asked_again_if_refused): the user's retry, the network back, asks it again."""
    with asked_again_if_refused(source):
        return _hub_or_cache(source, what, load)


def _hub_or_cache(source: str, what: str, load):
    before = main_commit(source)  # refs/main as the load finds it: a Hub request of the load may move it
    keywords = pipeline_keywords(source, what)
    verdict: dict = {}  # _hub_answer_said's: {"said": unreached's line, or a falsy value}
    try:
        with quiet_hub(), bounded_hub() as sent, no_library_bars(text_encoders=True), \
                _hub_answer_said(lambda e: not keywords and unreached(e, source, what, before)) as verdict:
            return load(**keywords)
    except Exception as e:  # noqa: BLE001 - a Hub request's timeout is httpx's, no OSError
        if lost := verdict.get("said"):
            raise UserError(f"cannot load {what} '{source}': {lost}; check your network, or pass a local "
                            "pipeline folder") from None
        why = None if keywords else timed_out(e, sent)
        if why is None or id_problem(source) is not None:
            raise
        cause = cause_line(e, sent=sent)
    stopped_answering(source, cause)
    snapshot = cached_snapshot(source)
    if snapshot is None:
        raise UserError(f"cannot load {what} '{source}': {why}, and {CACHE.format(hub_cache())} holds "
                        f"{held(source, what, before)}; check your network, or pass a local pipeline folder")
    if problem := cache_problem(source, snapshot, what):
        raise UserError(f"cannot load {what} '{source}': {why}, and {problem}")
    note_once(f"'{source}' is read from the Hugging Face cache {hub_cache()} (the Hugging Face Hub answered, then "
              f"stopped answering: {cause}); set HF_HUB_OFFLINE=1 to skip the Hub")
    _FELL_BACK[(hub_cache(), source)] = cause  # said: later loads read the cache on this record, quietly
    with quiet_hub(), no_library_bars(text_encoders=True):
        return load(local_files_only=True)


@contextmanager
def _hub_answer_said(said=lambda e: False):
    """diffusers' warning "Couldn't connect to the Hub: 404 Client Error. Repository Not Found for url: …
    Will try to load from local cache." (6 lines, pipeline_utils' of a failed model_info) held while a
    pipeline loads: dropped where the load fails on the Hub's answer that the id is no pipeline (hub_answer:
    the caller's one line says it) or where `said(error)` (hub_or_cache's unreached: the Hub not reached
    and the cache lacking it, said in its line), logged as it was otherwise. Its logger's filter is removed after.
    Yields a dict that holds, after a failed load, `said`'s value under "said" (None where the Hub answered)."""
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    held = []

    def hold(record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Couldn't connect to the Hub"):
            return True
        held.append(record)
        return False
    logger.addFilter(hold)
    verdict: dict = {}
    try:
        yield verdict
    except Exception as e:  # noqa: BLE001 - looked at, raised as it is
        answered = hub_answer(e) is not None
        verdict["said"] = None if answered else said(e)
        if answered or verdict["said"]:
            held.clear()
        raise
    finally:
        logger.removeFilter(hold)
        for record in held:
            logger.handle(record)


def unreached(e: BaseException, source: str, what: str, before: str | None = None) -> str | None:
    """'the Hugging Face Hub cannot be reached (ConnectError: …), and the Hugging Face cache … holds no
    copy of it' (or what its snapshot lacks: cache_problem) where diffusers' model_info of the Hub id
    `source` failed without the Hub's answer on the id (a connection refused or dropped after hub_head's
    request got through; hub_answer's are said apart), it went on to the cache, and the cache lacks the
    pipeline: diffusers raised "Cannot load model …: the model is not fully cached locally (…) … Please
    check out the root cause in the stacktrace above." from the model_info error. None otherwise."""
    from huggingface_hub.errors import HfHubHTTPError

    found = next((c for c in chain(e) if isinstance(c, OSError) and "not fully cached locally" in str(c)), None)
    lost = None if found is None or hub_answer(e) is not None else found.__cause__
    if lost is None:
        return None
    how = "answered with an error" if isinstance(lost, HfHubHTTPError) else "cannot be reached"
    snapshot = cached_snapshot(source)
    lacks = (f"{CACHE.format(hub_cache())} holds {held(source, what, before)}" if snapshot is None
             else cache_problem(source, snapshot, what))
    return None if lacks is None else f"the Hugging Face Hub {how} ({cause_line(lost)}), and {lacks}"


def pipeline_keywords(source: str, what: str) -> dict:
    """diffusers' from_pretrained keywords for the pipeline `source` (`what`: 'base pipeline'): a Hub
    id offline, or where the Hub cannot be reached (hub_head's one request, without retries:
    diffusers' own, bounded by io_hub_bounded.bounded_hub, retry), is read from its cached_snapshot
    with local_files_only (diffusers otherwise says it "couldn't connect to the Hub" though offline
    was asked for); one the cache lacks is a UserError naming the cache (was diffusers' many-line
    'not fully cached locally'), one whose snapshot lacks a part its model_index.json lists names it
    and the hf download that fetches it (pipeline_snapshot.snapshot_problem). {} otherwise."""
    from compress.io_source import looks_local

    if looks_local(source) or id_problem(source) is not None:
        return {}
    cause = None if offline() else hub_head(source, "model_index.json")[0]
    if not offline() and cause is None:
        return {}  # the Hub answers: diffusers fetches what the cache lacks
    snapshot = cached_snapshot(source)
    cache = f"{CACHE.format(hub_cache())} holds {held(source, what)}"
    if snapshot is None and cause is None:
        raise UserError(f"cannot load {what} '{source}' offline (HF_HUB_OFFLINE): {cache}; check the id, fetch it "
                        "once online, or pass a local pipeline folder")
    if snapshot is None:
        raise UserError(f"cannot load {what} '{source}': the Hugging Face Hub cannot be reached ({cause}), and {cache}; "
                        "check your network, or pass a local pipeline folder")
    if cause is not None and _FELL_BACK.get((hub_cache(), source)) != cause:  # not said by hub_or_cache already
        note_once(f"'{source}' is read from the Hugging Face cache {hub_cache()} (the Hugging Face Hub cannot be "
                  f"reached: {cause}); set HF_HUB_OFFLINE=1 to skip the Hub")
    if problem := cache_problem(source, snapshot, what):  # a part model_index.json lists, or its file, not downloaded
        raise UserError(f"cannot load {what} '{source}': {problem}")
    return {"local_files_only": True}


# a Hub id the Hub answered holds no model_index.json (hub_answer), in words
NO_INDEX = "a Hub repo without model_index.json (the Hugging Face Hub answered 404 Entry Not Found for it)"


def hub_answer(e: BaseException):
    """Where a pipeline's load failed on the Hub's answer that the id is no pipeline: NO_INDEX for a repo
    without model_index.json (a transformer's repo, say), the error for one the Hub does not serve
    (Repository Not Found, private, gated: io_hub.hub_error says it), found in `e`'s chain (diffusers
    raises its own error from the Hub's); None for another failure."""
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    for cause in chain(e):
        if isinstance(cause, RepositoryNotFoundError):
            return cause
        if isinstance(cause, RemoteEntryNotFoundError) and str(cause.response.url).endswith("/model_index.json"):
            return NO_INDEX
    return None


def hub_answer_words(e: BaseException, source: str, no_pipeline, local: str) -> str | None:
    """What the Hub answered of `source`, where a pipeline's load failed on its answer that the id is no
    pipeline (hub_answer), in words: `no_pipeline(NO_INDEX)` (the caller's refusal of a repo without
    model_index.json; diffusers' line was "404 Client Error."), or io_hub.hub_error's line for one the
    Hub does not serve (`local`: what to pass instead; diffusers' was "Cannot load model …: the model is
    not fully cached locally … Please check out the root cause in the stacktrace above."); None for
    another failure."""
    from compress.io_hub import hub_error

    if (answer := hub_answer(e)) is None:
        return None
    return no_pipeline(answer) if isinstance(answer, str) else str(hub_error(source, answer, local))


def cache_problem(source: str, snapshot, what: str) -> str | None:
    """What the cache's snapshot of the Hub pipeline `source` (`what`: 'base pipeline') lacks, in
    words naming the hf download that fetches it: a part model_index.json lists
    (pipeline_snapshot.snapshot_problem), else a file a part's class reads
    (io_hub_cache_files.missing_file), with an older snapshot of the whole pipeline where the cache
    holds one (pipeline_cache.snapshot_lacks); None where it lacks neither."""
    return snapshot_lacks(source, snapshot, as_what=snapshot_slot(what))


def held(source: str, what: str, before: str | None = None) -> str:
    """io_hub_cache.uncached(source, before), its hint on a snapshot folder naming where a pipeline's goes
    (`what`: 'base pipeline' is load_pipeline's base, else calibration.pipeline: snapshot_slot)."""
    return uncached(source, before, snapshot_slot(what))


def moved_problem(source: str, what: str) -> str | None:
    """'offline (HF_HUB_OFFLINE), the Hugging Face cache … holds no snapshot of main's commit C, …'
    where the cache's refs/main of the Hub id `source` names a commit it holds no snapshot of and it
    holds others (io_hub_cache.moved_main), which pipeline_keywords refuses as the pipeline loads: said by
    pipeline_snapshot.cached_problem for plan and a run before the teacher loads. None otherwise."""
    if moved_main(source) is None:
        return None
    return (f"offline (HF_HUB_OFFLINE), {CACHE.format(hub_cache())} holds {held(source, what)}; fetch it once online, "
            "or pass a local pipeline folder")
