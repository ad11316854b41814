"""Hub access for teachers: a Hub id's transformer folder fetched (`hub_folder`: its config first,
then the weight files of the one variant from_pretrained would read), its config.json alone
(`hub_config_file`, for checks before any download; `cached_config` from the cache alone), the
repo's file list, and one-line errors for failed fetches with huggingface_hub's retry warnings kept
quiet (`quiet_hub`, `hub_error`). io's `load_teacher` loads the folder `hub_folder` returns as a
local one.

The Hugging Face cache answers offline (HF_HUB_OFFLINE) and, for a repo it holds, where one
request without retries finds the Hub unreachable (`hub_unreachable`): then no other Hub call is
made in that load (huggingface_hub retries a file list for about 23 s without network).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from compress.errors import UserError
from compress.io import WEIGHTS, model_class, read_config, variant_of, variant_weights
from compress.io_tensors import one_line

SUBS = ("transformer/", "")  # where a repo's transformer config.json is: a pipeline's, a transformer-only one's
OFFLINE = "offline: HF_HUB_OFFLINE"
_NOTED: set[str] = set()  # notes said once per process


def hub_folder(repo_id: str) -> Path:
    """The local copy of a Hub teacher's transformer folder: its config.json and the weight files
    of the one variant from_pretrained would read of it (variant_of, as for a local folder), not
    the other variants' nor the pipeline's other components. The class is checked before any
    weights download. From the cache (the cached snapshot's folder, nothing fetched) where
    hub_config says why the Hub is not asked, or where the Hub's file list fails."""
    from huggingface_hub import snapshot_download

    cfg, sub, why = hub_config(repo_id)
    model_class(read_config(cfg).get("_class_name", "<missing _class_name>"))
    where = f"'{repo_id}'" + (f" ({sub})" if sub else "")
    names = None
    if why is None:
        try:
            names = repo_names(repo_id, sub)
        except Exception as e:  # noqa: BLE001 - as hf_hub_download, the cache answers then
            why = f"the Hub's file list failed: {cause_line(e)}"
    if names is None:
        names = sorted(f.name for f in cfg.parent.iterdir() if f.is_file())
    wanted = variant_weights(names, variant_of(names, where))
    if not wanted:
        if why is not None:  # the names are the cache's: the repo may well hold them
            raise UserError(f"the Hugging Face cache holds no weights of {where} beside its config.json ({why}): "
                            "fetch it once online, or pass a local folder or file")
        raise UserError(f"{where} holds no {WEIGHTS} (nor its shards, a variant's or .bin ones) beside its config.json")
    if why is not None:
        return cfg.parent  # the cached snapshot: a missing shard is said as it loads (io.not_loaded)
    try:
        with quiet_hub():
            root = Path(snapshot_download(repo_id, allow_patterns=[sub + n for n in ["config.json", *wanted]]))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
    return root / sub


def hub_config_file(repo_id: str) -> tuple[Path, str]:
    """(the local copy of a Hub repo's transformer config.json, the repo folder that holds it):
    'transformer/' of a pipeline repo, '' of a transformer-only one (config.json and weights at its
    root, as fine-tunes are shared). A few KB; the root's is fetched only where the Hub has no
    transformer/config.json. From the cache offline or without network (hub_config)."""
    return hub_config(repo_id)[:2]


def hub_config(repo_id: str) -> tuple[Path, str, str | None]:
    """hub_config_file, and why it came from the cache without asking the Hub (None where the Hub
    answered): offline, or the Hub unreachable for a repo the cache holds (noted once)."""
    check_hub_id(repo_id)
    found = cached_config(repo_id)
    if offline():
        if found is None:
            raise not_cached(repo_id)
        return (*found, OFFLINE)
    if found is not None and (cause := hub_unreachable(repo_id, found[1] + "config.json")) is not None:
        why = f"the Hugging Face Hub cannot be reached: {cause}"
        note_once(f"'{repo_id}' is read from the Hugging Face cache {hub_cache()} ({why}); "
                  "set HF_HUB_OFFLINE=1 to skip the Hub")
        return (*found, why)
    if found is None and (cause := hub_unreachable(repo_id, "config.json")) is not None:
        raise UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({cause}), and the Hugging Face cache "
                        f"{hub_cache()} (HF_HUB_CACHE, else HF_HOME/hub) does not hold it; pass a local folder or file, "
                        "or check your network")  # at once, not after huggingface_hub's ~23 s of retries
    return (*fetch_config(repo_id), None)


def fetch_config(repo_id: str) -> tuple[Path, str]:
    """hub_config_file from the Hub (hf_hub_download, which falls back to the cache on its own)."""
    from huggingface_hub import hf_hub_download

    errors = []
    for sub in SUBS:
        try:
            with quiet_hub():
                return Path(hf_hub_download(repo_id, "config.json", subfolder=sub.rstrip("/") or None)), sub
        except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
            errors.append(e)
            if not not_in_repo(e):
                break
    if len(errors) == 2 and all(map(not_in_repo, errors)):
        raise UserError(f"'{repo_id}' has neither transformer/config.json nor config.json: expected a "
                        "diffusers pipeline or transformer repo, or pass a local folder or file")
    raise hub_error(repo_id, next((e for e in errors if not not_in_repo(e)), errors[0]), "a local folder or file")


def cached_config(repo_id: str) -> tuple[Path, str] | None:
    """(the cached transformer config.json of a Hub repo, its folder in the repo), as
    hub_config_file finds it (transformer/ first), from the Hugging Face cache alone; None where
    the cache holds neither (no request is made)."""
    from huggingface_hub import try_to_load_from_cache

    for sub in SUBS:
        found = try_to_load_from_cache(repo_id, sub + "config.json")
        if isinstance(found, str):  # not None, nor the cache's note that the repo lacks it
            return Path(found), sub
    return None


def hub_unreachable(repo_id: str, name: str) -> str | None:
    """Why the Hub cannot be reached ('ConnectError: …'), from one request for the repo's file
    `name` without huggingface_hub's retries; None where the Hub answers (with an error too: the
    fetch says it then)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        with quiet_hub():
            get_hf_file_metadata(hf_hub_url(repo_id, name))
    except Exception as e:  # noqa: BLE001 - the transport's errors vary with huggingface_hub's version
        return cause_line(e) if unreachable(e) else None
    return None


def unreachable(e: Exception) -> bool:
    """A request that failed for the network or the Hub's state (no connection, a timeout, a proxy,
    the Hub down), not because of the repo or the user's access."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return status is None or status >= 500 or status in (408, 429)
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_cache() -> str:
    """The folder of the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def not_in_repo(e: Exception) -> bool:
    """A fetch that failed because the repo lacks the file (offline: its cached copy does), not
    because of the network or access; trying another file then costs no retries."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    return isinstance(e, RemoteEntryNotFoundError) or (isinstance(e, LocalEntryNotFoundError) and offline())


def repo_names(repo_id: str, sub: str) -> list[str]:
    """The names of the files in the repo folder `sub`, from the Hub's list."""
    from huggingface_hub import HfApi

    with quiet_hub():
        files = HfApi().list_repo_files(repo_id)
    return [f[len(sub):] for f in files if f.startswith(sub) and "/" not in f[len(sub):]]


def note_once(text: str) -> None:
    from compress.report import note

    if text not in _NOTED:
        _NOTED.add(text)
        note(text)


# ---- ids and errors ---------------------------------------------------------------------------
def id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a Hugging Face id, in words (None where it is one): a revision after @
    is not read (a snapshot folder pins one), OWNER/NAME has one '/'."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        return None
    except HFValidationError as e:
        if "@" in repo_id:
            name = repo_id.split("@")[0]
            folder = Path(hub_cache()) / f"models--{name.replace('/', '--')}" / "snapshots" / "COMMIT"
            return (f"a revision is not given with @: pin one by giving its snapshot folder as a local teacher "
                    f"({folder}, once downloaded)")
        if repo_id.count("/") != 1:
            return "a Hugging Face id is OWNER/NAME, with one '/'"
        return one_line(e)


def check_hub_id(repo_id: str) -> None:
    problem = id_problem(repo_id)
    if problem is not None:
        raise UserError(f"'{repo_id}' is not a Hugging Face id: {problem}")


def not_cached(repo_id: str) -> UserError:
    """The error for a Hub id the cache lacks offline: the cache folder looked in, and what of the
    repo it holds."""
    held = (Path(hub_cache()) / f"models--{repo_id.replace('/', '--')}").is_dir()
    what = "a copy of it without transformer/config.json or config.json" if held else "no copy of it"
    return UserError(f"cannot fetch '{repo_id}' offline (HF_HUB_OFFLINE), and the Hugging Face cache {hub_cache()} "
                     f"(HF_HUB_CACHE, else HF_HOME/hub) holds {what}: check the id, fetch it once online, or pass "
                     "a local folder or file")


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub retries a failed request 5 times over about 23 s and logs two warnings for
    each try (12 lines where there is no network); `hub_error` says why it failed instead."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cause_line(e: Exception) -> str:
    """'TYPE: message' of the error under a failed Hub call (LocalEntryNotFoundError wraps the network's)."""
    cause = e.__cause__ if e.__cause__ is not None else e
    return f"{type(cause).__name__}: {one_line(cause)}"


def hub_error(repo_id: str, e: Exception, local: str) -> UserError:
    """A one-line error for a failed Hub fetch; local: what to pass instead."""
    from huggingface_hub.errors import GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        return UserError(f"'{repo_id}' is gated on the Hugging Face Hub: accept its license on "
                         f"https://huggingface.co/{repo_id} and log in (hf auth login), or pass {local}")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"'{repo_id}' is not on the Hugging Face Hub (or is private: log in); check "
                         f"the id, or pass {local}")
    if isinstance(e, HFValidationError):  # nothing was asked of the Hub
        return UserError(f"'{repo_id}' is not a Hugging Face id: {id_problem(repo_id) or one_line(e)}; pass {local}")
    cached = f" and the Hugging Face cache {hub_cache()} does not hold it" if isinstance(e, LocalEntryNotFoundError) else ""
    if offline():
        return UserError(f"cannot fetch '{repo_id}' offline (HF_HUB_OFFLINE){cached}; pass {local}, check the id, "
                         "or fetch it once online")
    return UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({cause_line(e)}){cached}; pass {local}, "
                     "or check the id and your network")
