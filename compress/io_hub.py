"""Hub access for teachers: a Hub id's transformer folder fetched (`hub_folder`: its config first,
then the weight files of the one variant from_pretrained would read), its config.json alone
(`hub_config_file`, for checks before any download), the repo's file list, and one-line errors for
failed fetches with huggingface_hub's retry warnings kept quiet (`quiet_hub`, `hub_error`). io's
`load_teacher` loads the folder `hub_folder` returns as a local one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from compress.errors import UserError
from compress.io import WEIGHTS, model_class, read_config, variant_of, variant_weights
from compress.io_tensors import one_line


def hub_folder(repo_id: str) -> Path:
    """The local copy of a Hub teacher's transformer folder: its config.json and the weight files
    of the one variant from_pretrained would read of it (variant_of, as for a local folder), not
    the other variants' nor the pipeline's other components. The class is checked before any
    weights download."""
    from huggingface_hub import snapshot_download

    cfg, sub = hub_config_file(repo_id)
    model_class(read_config(cfg).get("_class_name", "<missing _class_name>"))
    where = f"'{repo_id}'" + (f" ({sub})" if sub else "")
    names = hub_file_names(repo_id, cfg.parent, sub)
    wanted = variant_weights(names, variant_of(names, where))
    if not wanted:
        if offline():  # the names are the cache's: the repo may well hold them
            raise UserError(f"the Hugging Face cache holds no weights of {where} beside its config.json (offline: "
                            "HF_HUB_OFFLINE): fetch it once online, or pass a local folder or file")
        raise UserError(f"{where} holds no {WEIGHTS} (nor its shards, a variant's or .bin ones) beside its config.json")
    try:
        with quiet_hub():
            root = Path(snapshot_download(repo_id, allow_patterns=[sub + n for n in ["config.json", *wanted]]))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
    return root / sub


def hub_config_file(repo_id: str) -> tuple[Path, str]:
    """(the local copy of a Hub repo's transformer config.json, the repo folder that holds it):
    'transformer/' of a pipeline repo, '' of a transformer-only one (config.json and weights at its
    root, as fine-tunes are shared). A few KB; the root's is fetched only where the Hub (or,
    offline, the cache) has no transformer/config.json."""
    from huggingface_hub import hf_hub_download

    errors = []
    for sub in ("transformer/", ""):
        try:
            with quiet_hub():
                return Path(hf_hub_download(repo_id, "config.json", subfolder=sub.rstrip("/") or None)), sub
        except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
            errors.append(e)
            if not not_in_repo(e):
                break
    if len(errors) == 2 and all(map(not_in_repo, errors)) and not offline():  # offline: the cache lacks it
        raise UserError(f"'{repo_id}' has neither transformer/config.json nor config.json: expected a "
                        "diffusers pipeline or transformer repo, or pass a local folder or file")
    raise hub_error(repo_id, errors[0], "a local folder or file")


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def not_in_repo(e: Exception) -> bool:
    """A fetch that failed because the repo lacks the file (offline: its cached copy does), not
    because of the network or access; trying another file then costs no retries."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    return isinstance(e, RemoteEntryNotFoundError) or (isinstance(e, LocalEntryNotFoundError) and offline())


def hub_file_names(repo_id: str, cached: Path, sub: str) -> list[str]:
    """The names of the files in the repo folder `sub`: the Hub's list; offline, or where the Hub
    cannot be listed after the config came from the cache, those of its cached copy `cached` (what
    can be loaded without the Hub)."""
    if not offline():
        from huggingface_hub import HfApi

        try:
            with quiet_hub():
                files = HfApi().list_repo_files(repo_id)
            return [f[len(sub):] for f in files if f.startswith(sub) and "/" not in f[len(sub):]]
        except Exception:  # noqa: BLE001, S110 - as hf_hub_download, the cache answers then
            pass
    return sorted(f.name for f in cached.iterdir() if f.is_file())


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


def hub_error(repo_id: str, e: Exception, local: str) -> UserError:
    """A one-line error for a failed Hub fetch; local: what to pass instead."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        return UserError(f"'{repo_id}' is gated on the Hugging Face Hub: accept its license on "
                         f"https://huggingface.co/{repo_id} and log in (hf auth login), or pass {local}")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"'{repo_id}' is not on the Hugging Face Hub (or is private: log in); check "
                         f"the id, or pass {local}")
    cause = e.__cause__ if e.__cause__ is not None else e  # LocalEntryNotFoundError wraps the network's
    return UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({type(cause).__name__}: "
                     f"{one_line(cause)}); pass {local}, or check the id and your network")
