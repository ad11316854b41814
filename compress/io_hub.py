"""Hub access for teachers: a Hub id's transformer folder fetched (`hub_folder`: its config first,
then the weight files of the one variant from_pretrained would read), its config.json alone
(`hub_config_file`, for checks before any download; `cached_config` from the cache alone), the
repo's file list, and one-line errors for failed fetches with huggingface_hub's retry warnings kept
quiet (`quiet_hub`, `hub_error`). The cache's copy of a repo, and what it holds otherwise in words,
are io_hub_cache's (one rule for teachers, outputs, LoRAs and pipelines). io's `load_teacher` loads
the folder `hub_folder` returns as a local one.

The Hugging Face cache answers offline (HF_HUB_OFFLINE) and, for a repo it holds, where one
request without retries finds the Hub unreachable (`hub_head`, sent once a process for a repo):
then no other Hub call is made in that load (huggingface_hub retries a file list for about 23 s
without network). Where the Hub answers, that request's commit pins the load: a config or weights
the cache holds of it are not asked for again. The requests themselves, each with a bounded wait,
are io_hub_requests'; a Hub pipeline diffusers loads is io_hub_pipeline's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from compress.errors import UserError
from compress.io import WEIGHTS, config_model_class, read_config
from compress.io_hub_cache_files import cached_place
from compress.io_hub_bounded import bounded_hub
from compress.io_hub_requests import (asked_again_if_refused, cause_line, download, fetch_files, hub_head, in_folder,
                                      placed, repo_files)
from compress.io_tensors import one_line
from compress.io_variants import variant_of, variant_weights

SUBS = ("transformer/", "")  # where a repo's transformer config.json is: a pipeline's, a transformer-only one's
OFFLINE = "offline: HF_HUB_OFFLINE"
_NOTED: set[str] = set()  # notes said once per process


def hub_folder(repo_id: str) -> Path:
    """The local copy of a Hub teacher's transformer folder: its config.json and the weight files
    of the one variant from_pretrained would read of it (variant_of, as for a local folder), not
    the other variants' nor the pipeline's other components. The class is checked before any
    weights download. From the cache (the cached snapshot's folder, nothing fetched) where
    hub_config says why the Hub is not asked, or where the Hub's file list fails; online, the files
    of the commit the config came from (pinned), and nothing fetched where its cached snapshot holds them.
    The transformer is where a copy of the repo has it (io.transformer_place), by the Hub's list
    (io_hub_requests.placed), else by the cached snapshot's files (cached_config)."""
    with asked_again_if_refused(repo_id):  # a list lost before: the retry asks it again
        return _hub_folder(repo_id)


def hub_shown(repo_id: str, sub: str, cfg: Path) -> tuple[str, str]:
    """io.supported_class's `shown` for the Hub repo `repo_id`'s config `cfg` (in its folder `sub`): the id
    as given, its folder and the cache's copy ("'acme/vae' (transformer/, in the Hugging Face cache at
    <cache>/models--acme--vae/snapshots/SHA/transformer)"), and what to give instead (io.GIVE_HUB)."""
    from compress.io import GIVE_HUB

    return f"'{repo_id}' ({sub + ', ' if sub else ''}in the Hugging Face cache at {cfg.parent})", GIVE_HUB


def _hub_folder(repo_id: str) -> Path:
    cfg, sub, why, names = hub_placed(repo_id)
    pin = pinned(cfg)
    config_model_class(read_config(cfg), cfg, hub_shown(repo_id, sub, cfg))  # another model's: the repo named
    where = f"'{repo_id}'" + (f" ({sub})" if sub else "")
    if why is not None:  # the cached snapshot, checked: its weights there and whole
        from compress.io_hub_snapshots import check_cached

        check_cached(repo_id, sub, cfg.parent, why)
        return cfg.parent
    wanted = variant_weights(names, variant_of(names, where))
    if not wanted:
        raise UserError(f"{where} holds no {WEIGHTS} (nor its shards, a variant's or .bin ones) beside its config.json")
    if pin and all((cfg.parent / n).is_file() for n in wanted):
        return cfg.parent  # the cached snapshot is the Hub's commit
    try:
        return fetch_files(repo_id, sub, ["config.json", *wanted], **pin)
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        from compress.io_hub_snapshots import whole_elsewhere

        raise hub_error(repo_id, e, "a local folder or file", whole_elsewhere(repo_id, sub, pin.get("revision"))) from None


def hub_config_file(repo_id: str) -> tuple[Path, str]:
    """(the local copy of a Hub repo's transformer config.json, the repo folder that holds it):
    'transformer/' of a pipeline repo, '' of a transformer-only one (config.json and weights at its
    root, as fine-tunes are shared), as a local copy of the repo has it (io.transformer_place; the
    Hub's file list says which files it holds: io_hub_requests.placed). A few KB. From the cache
    offline or without network (hub_config), or where the list failed (said); placed's failure raised, as the load's."""
    return hub_placed(repo_id)[:2]  # what hub_folder reads: run's check reads the config its load does


def hub_placed(repo_id: str, cached: bool = True) -> tuple[Path, str, str | None, list[str]]:
    """(the transformer's config.json, its folder in the repo, why the Hub was not asked or failed,
    the names of that folder's files by the Hub's list: [] where why): hub_config, then, where the
    Hub answered, its list of the commit the config came from (pinned) and the folder that list
    places the transformer in (io_hub_requests.placed: io.transformer_place's rule, the other
    config fetched where it is not hub_config's). hub_config's errors are raised as they are, and
    hub_error's one line where placed's downloads fail; where the list fails, with `cached`
    hub_config's config and why, in a note naming it; without (lora_teacher's) hub_error's line. A
    list lost within the minute before is not asked again (io_hub_requests.repo_files: why says so),
    unless a refusal followed (raised here or by hub_folder: asked_again_if_refused)."""
    with asked_again_if_refused(repo_id):
        return _hub_placed(repo_id, cached)


def _hub_placed(repo_id: str, cached: bool) -> tuple[Path, str, str | None, list[str]]:
    cfg, sub, why = hub_config(repo_id)
    if why is not None:
        return cfg, sub, why, []
    pin = pinned(cfg)
    try:
        files = repo_files(repo_id, **pin)
    except Exception as e:  # noqa: BLE001 - as hf_hub_download, the cache answers then
        if not cached:
            raise hub_error(repo_id, e, "a local folder or file") from None
        cfg, sub = cached_config(repo_id, pin.get("revision")) or (cfg, sub)  # placed as offline: files held, listed
        lost = f"the Hub's file list failed: {cause_line(getattr(e, 'lost', e))}"  # the check's note, not again
        note_once(f"'{repo_id}' is read from the Hugging Face cache: {cfg} and the weights beside it ({lost})")
        return cfg, sub, f"the Hub's file list failed: {cause_line(e)}", []  # ListLost: '…; not asked again'
    try:
        placed_cfg, placed_sub = placed(repo_id, cfg, sub, files, **pin)
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
    return placed_cfg, placed_sub, None, in_folder(files, placed_sub)


def hub_config(repo_id: str) -> tuple[Path, str, str | None]:
    """hub_config_file, and why it came from the cache without asking the Hub (None where the Hub
    answered): offline, or the Hub unreachable for a repo the cache holds (noted once). Online, one
    request (hub_head) says both whether the Hub answers and the commit main is at: where the
    cache's main is that commit, its config.json is used as it is, else fetched."""
    from compress.io_hub_cache import uncached

    check_hub_id(repo_id)
    found = cached_config(repo_id, lacking=not offline())  # its file lacking: fetched, else refused
    if offline():
        if found is None:
            raise not_cached(repo_id)
        return (*found, OFFLINE)
    cause, commit = hub_head(repo_id, (found[1] if found else "") + "config.json")
    if found is not None and cause is not None:
        found, why = cached_config(repo_id), f"the Hugging Face Hub cannot be reached: {cause}"  # lacking: refused
        note_once(f"'{repo_id}' is read from the Hugging Face cache {hub_cache()} ({why}); "
                  "set HF_HUB_OFFLINE=1 to skip the Hub")
        return (*found, why)
    if found is None and cause is not None:
        raise unfetched(repo_id, cause, uncached(repo_id), "a local folder or file")  # at once, not after ~23 s of retries
    if found is not None and found[0].is_file() and commit is not None and pinned(found[0]) == {"revision": commit}:
        return (*found, None)  # the cache's main is the Hub's: its config is not asked for again
    return (*fetch_config(repo_id), None)


def fetch_config(repo_id: str) -> tuple[Path, str]:
    """hub_config_file from the Hub (io_hub_requests.download: one HEAD without retries, then
    hf_hub_download, which falls back to the cache on its own and moves the cache's refs/main to the
    commit its HEAD answered, before its GET: where that fails, the error names both commits and the
    snapshot the cache holds, moved_main)."""
    from compress.io_hub_cache import main_commit, moved_main

    before, errors = main_commit(repo_id), []
    for sub in SUBS:
        try:
            with quiet_hub(), bounded_hub(stop=True):
                return Path(download(repo_id, sub, "config.json")), sub
        except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
            errors.append(e)
            if not not_in_repo(e):
                break
    if len(errors) == 2 and all(map(not_in_repo, errors)):
        raise UserError(f"'{repo_id}' has neither transformer/config.json nor config.json: expected a "
                        "diffusers pipeline or transformer repo, or pass a local folder or file")
    raise hub_error(repo_id, next((e for e in errors if not not_in_repo(e)), errors[0]), "a local folder or file",
                    moved_main(repo_id, before))


def cached_config(repo_id: str, revision: str | None = None, lacking: bool = False) -> tuple[Path, str] | None:
    """(the cached transformer config.json of a Hub repo, its folder in the repo) in its cached_snapshot,
    placed by the files it holds and lists (io_hub_cache_files.cached_place: refused where the snapshot
    lacks it, unless `lacking`); None where it holds and lists no config.json (no request is made)."""
    from compress.io_hub_cache import cached_snapshot

    snapshot = cached_snapshot(repo_id, revision)
    sub = cached_place(repo_id, snapshot, lacking) if snapshot is not None else None
    return None if sub is None else (snapshot / sub / "config.json", sub)


def pinned(config: Path) -> dict:
    """{'revision': COMMIT} where `config` (hub_config's) is in the cache's snapshot of COMMIT, so the
    repo's list and files come from the commit its config did; else {} (main, as the Hub has it then)."""
    try:
        parts = config.relative_to(hub_cache()).parts  # models--ORG--NAME, snapshots, COMMIT, …
    except ValueError:
        return {}
    return {"revision": parts[2]} if len(parts) > 3 and parts[1] == "snapshots" else {}


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def cache_only(who: str) -> str:
    """Why `who` (a command that reads the Hugging Face cache alone: plan) found nothing of a Hub id
    but the cache's, in words: offline where HF_HUB_OFFLINE says so; else it does not ask the Hub
    (not that the Hub was unreachable, nor offline: no request was made)."""
    return "offline (HF_HUB_OFFLINE)" if offline() else f"without the Hugging Face Hub, which {who} does not ask"


def hub_cache() -> str:
    """The folder of the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def not_in_repo(e: Exception) -> bool:
    """A fetch that failed because the repo lacks the file (offline: its cached copy does), not
    because of the network or access; trying another file then costs no retries."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    return isinstance(e, RemoteEntryNotFoundError) or (isinstance(e, LocalEntryNotFoundError) and offline())


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
    from compress.io_hub_cache import cached_snapshot, uncached

    held = "a copy of it without transformer/config.json or config.json" if cached_snapshot(repo_id) else \
        uncached(repo_id)
    return UserError(f"cannot fetch '{repo_id}' offline (HF_HUB_OFFLINE), and the Hugging Face cache {hub_cache()} "
                     f"(HF_HUB_CACHE, else HF_HOME/hub) holds {held}: check the id, fetch it once online, or pass "
                     "a local folder or file")


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub retries a failed request 5 times over about 23 s and logs two warnings for
    each try (12 lines where there is no network); `hub_error` says why it failed instead. Its
    UserWarning that `local_dir_use_symlinks` is deprecated is dropped too: diffusers (0.42's
    ConfigMixin.load_config) passes that argument to each hf_hub_download of a Hub id, we never do."""
    import logging
    import warnings

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated",
                                    category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def hub_error(repo_id: str, e: Exception, local: str, held: str | None = None) -> UserError:
    """A one-line error for a failed Hub fetch; local: what to pass instead; `held`: what the cache
    holds in words (moved_main's, io_hub_snapshots.whole_elsewhere's), said after a failure of the
    network or the Hub's."""
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
    if held is not None:
        return unfetched(repo_id, cause_line(e), held, local)
    return UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({cause_line(e)}){cached}; pass {local}, "
                     "or check the id and your network")


def unfetched(repo_id: str, cause: str, held: str, local: str) -> UserError:
    """'cannot fetch ID from the Hugging Face Hub (`cause`), and the Hugging Face cache … holds `held`;
    pass `local`, or check your network'."""
    return UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({cause}), and the Hugging Face cache "
                     f"{hub_cache()} (HF_HUB_CACHE, else HF_HOME/hub) holds {held}; pass {local}, or check your network")
