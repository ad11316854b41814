"""What the Hugging Face cache's snapshots of a Hub teacher hold, for a load that reads the cache
without the Hub (offline, or the Hub unreachable): main's snapshot checked before it loads
(`check_cached`: weight files that link to a blob the cache no longer has, no weights at all), and
the snapshots of other revisions that hold the whole transformer (`complete_elsewhere`), named
where main's lacks it, or where a download of main's weights failed (`whole_elsewhere`). Nothing
is asked of the Hub."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.io import transformer_place
from compress.io_errors import broken_weights, missing_shards
from compress.io_hub_cache import cache_folder, cached_snapshot, named_snapshots
from compress.io_variants import variant_of, variant_weights


def check_cached(repo_id: str, sub: str, folder: Path, why: str) -> None:
    """main's cached snapshot folder of a Hub teacher (`folder`, its transformer's: `sub` in the
    repo), read without the Hub (`why`, in words): a UserError naming a weight file whose blob is
    gone (it read as 'no weights') and how to download it again, or, where the folder holds no
    weights, the other revisions' snapshots that hold them. A shard its index lists and the folder
    lacks is said as it loads (io_errors.not_loaded)."""
    where = f"'{repo_id}'" + (f" ({sub})" if sub else "")
    names = sorted(f.name for f in folder.iterdir() if f.is_file() or f.is_symlink())  # broken links too
    wanted = variant_weights(names, variant_of(names, where))
    if (broken := broken_weights(folder, wanted)) is not None:
        raise UserError(f"the Hugging Face cache's copy of {where} is broken ({why}): {broken}, or pass a local "
                        "folder or file")
    if not wanted:  # the names are the cache's: the repo may well hold them
        raise UserError(f"the Hugging Face cache holds no weights of {where} beside its config.json ({why})"
                        f"{complete_elsewhere(repo_id)}: fetch it once online, or pass a local folder or file")


def complete_elsewhere(repo_id: str) -> str:
    """'; it holds them in the snapshot P (v1) (pass a snapshot folder as a local one)' where the
    cache holds snapshots of revisions other than main's with a whole transformer (holds_transformer);
    '' where it holds none."""
    complete = complete_snapshots(repo_id)
    return f"; it holds them in {named_snapshots(cache_folder(repo_id), complete)}" if complete else ""


def complete_snapshots(repo_id: str) -> list[Path]:
    """The cache's snapshots of revisions other than main's that hold a whole transformer (holds_transformer)."""
    main = cached_snapshot(repo_id)
    snapshots = sorted(p for p in (cache_folder(repo_id) / "snapshots").glob("*") if p.is_dir() and p != main)
    return [p for p in snapshots if holds_transformer(p)]


def whole_elsewhere(repo_id: str, sub: str, commit: str | None) -> str | None:
    """'main's commit C without its weights (transformer/), and the whole transformer only in the
    snapshot P (…)' where a download of the weights of main's commit `commit` (`sub`: the transformer's
    folder in the repo) failed and the cache holds a whole transformer of other commits (main moved
    on since it was downloaded): what hub_error says it holds; None where it holds none."""
    complete = complete_snapshots(repo_id) if commit is not None else []
    if not complete:
        return None
    return (f"main's commit {commit} without its weights{f' ({sub})' if sub else ''}, and the whole transformer only in "
            f"{named_snapshots(cache_folder(repo_id), complete)}")


def holds_transformer(snapshot: Path) -> bool:
    """Whether a snapshot holds a transformer's config.json (where a copy of it has it:
    io.transformer_place, as io_hub.cached_config finds it) and the weight files of the variant
    from_pretrained would read, each shard its index lists among them, none a broken link."""
    folder = transformer_place(snapshot)
    if folder is None:
        return False
    names = [f.name for f in folder.iterdir() if f.is_file()]
    try:
        wanted = variant_weights(names, variant_of(names, folder))
    except UserError:  # two variants: which one loads is the user's choice
        return False
    return bool(wanted) and missing_shards(folder) is None
