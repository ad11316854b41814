"""The Hugging Face cache's copy of a Hub repo, one rule for teachers, outputs, LoRAs and pipelines
(`cached_snapshot`: the snapshot of the commit refs/main names, a folder without a file in it none),
read without asking the Hub, and what the cache holds otherwise in words (`uncached`, or
`held_otherwise`: None where it holds nothing of the repo: other revisions' snapshots, the id spelt
otherwise; `moved_main`: refs/main naming a commit it has no snapshot of, the Hub having answered that
main moved on). Split from io_hub, which fetches what the cache lacks."""

from __future__ import annotations

from pathlib import Path

from compress.io_hub import hub_cache, id_problem

LOCAL = "a local one"  # named_snapshots' hint for a teacher: pass a snapshot folder as a local one


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The folder of a Hub repo's copy in the Hugging Face cache, as huggingface_hub finds it offline:
    the snapshot of the commit refs/<revision> names (default main; a commit names itself); None
    where the cache holds none, or `repo_id` is no Hub id. A snapshot folder without a file in it is
    none (hf_hub_download makes SUB/ in the snapshot of the commit a HEAD answered before its GET
    fails: main moved on and the Hub stopped answering). Nothing is asked of the Hub."""
    if id_problem(repo_id) is not None:
        return None
    repo = cache_folder(repo_id)
    ref = repo / "refs" / (revision or "main")
    snapshot = repo / "snapshots" / (ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision or "main")
    return snapshot if holds_files(snapshot) else None


def holds_files(snapshot: Path) -> bool:
    """Whether the snapshot folder `snapshot` holds a file (a link to a blob that is gone counts:
    io_hub_snapshots.check_cached names it), not only empty folders."""
    return snapshot.is_dir() and any(p.is_symlink() or p.is_file() for p in snapshot.rglob("*"))


def main_commit(repo_id: str) -> str | None:
    """The commit the cache's refs/main of the Hub id `repo_id` names; None where it names none."""
    ref = cache_folder(repo_id) / "refs" / "main" if id_problem(repo_id) is None else None
    return ref.read_text(encoding="utf-8").strip() if ref is not None and ref.is_file() else None


def cache_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps a model repo (models--ORG--NAME)."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(hub_cache()) / repo_folder_name(repo_id=repo_id, repo_type="model")


def uncached(repo_id: str, before: str | None = None, as_what: str = LOCAL) -> str:
    """What the cache holds of `repo_id` where cached_snapshot finds nothing, in words: 'no copy of
    it', or what held_otherwise says (`before`: refs/main's commit as the load began, for moved_main;
    `as_what`: named_snapshots')."""
    return held_otherwise(repo_id, before, as_what) or "no copy of it"


def held_otherwise(repo_id: str, before: str | None = None, as_what: str = LOCAL) -> str | None:
    """What the cache holds of `repo_id` where cached_snapshot finds nothing, in words: the snapshots
    of other revisions (`hf download --revision` writes no refs/main), which load as local folders,
    or the repo spelt in other letters; None where it holds nothing of it. Where refs/main names a
    commit it holds no snapshot of (the Hub answered a request of hf_hub_download that main is at
    it: huggingface_hub moves refs/main then, a 404 too), both commits are named (moved_main).
    `as_what`: named_snapshots'."""
    repo = cache_folder(repo_id) if id_problem(repo_id) is None else None
    snapshots = held_snapshots(repo_id)
    if not snapshots:
        spelt = other_spelling(repo)
        return "no copy of it" + spelt if spelt else None
    return (moved_main(repo_id, before, as_what)
            or f"no copy of its main revision, only {named_snapshots(repo, snapshots, as_what)}")


def held_snapshots(repo_id: str) -> list[Path]:
    """The cache's snapshot folders of the Hub id `repo_id` that hold files (holds_files), sorted."""
    repo = cache_folder(repo_id) if id_problem(repo_id) is None else None
    return sorted(p for p in (repo / "snapshots").glob("*") if holds_files(p)) if repo is not None else []


def moved_main(repo_id: str, before: str | None = None, as_what: str = LOCAL) -> str | None:
    """'no snapshot of main's commit C, which its refs/main names (this load's request to the Hub
    moved it from B), only the snapshot P (…); offline (HF_HUB_OFFLINE=1) reads refs/main's commit
    too, as huggingface_hub does' where refs/main names a commit none of the cache's snapshots
    (held_snapshots) is of and it holds others: huggingface_hub and diffusers read refs/main's commit
    alone offline, so neither HF_HUB_OFFLINE=1 nor a fall-back to the cache reads an older snapshot in
    its place (another model); passed as a local folder, one loads, pinned. `before`: refs/main's
    commit as the load began, where a request of the load moved it; `as_what`: named_snapshots'.
    None otherwise."""
    main, snapshots = main_commit(repo_id), held_snapshots(repo_id)
    if main is None or not snapshots or any(p.name == main for p in snapshots):
        return None
    moved = f" (this load's request to the Hub moved it from {before})" if before not in (None, main) else ""
    return (f"no snapshot of main's commit {main}, which its refs/main names{moved}, only "
            f"{named_snapshots(cache_folder(repo_id), snapshots, as_what)}; offline (HF_HUB_OFFLINE=1) reads "
            "refs/main's commit too, as huggingface_hub does")


def named_snapshots(repo: Path, snapshots: list[Path], as_what: str = LOCAL) -> str:
    """'the snapshot P (v1) (pass a snapshot folder as AS_WHAT)': the snapshots of the repo's cache
    folder `repo` (two named, the refs that name them beside them); `as_what`: where a snapshot
    folder goes (a teacher's: 'a local one'; a pipeline's: 'calibration.pipeline')."""
    refs = {f.read_text(encoding="utf-8").strip(): f.relative_to(repo / "refs").as_posix()
            for f in (repo / "refs").rglob("*") if f.is_file()}
    named = [f"{p} ({refs[p.name]})" if p.name in refs else str(p) for p in snapshots]
    return (f"{'the snapshot' if len(named) == 1 else 'the snapshots'} {', '.join(named[:2])}"
            f"{' …' if len(named) > 2 else ''} (pass a snapshot folder as {as_what})")


def other_spelling(repo: Path | None) -> str:
    """' (it holds ORG/NAME, spelt otherwise: give that id)' where the cache holds the repo folder
    `repo` in other letter cases (the Hub finds an id in any case, the cache only in the one downloaded)."""
    other = spelt_otherwise(repo)
    return "" if other is None else f" (it holds {other}, spelt otherwise: give that id)"


def spelt_otherwise(repo: Path | None) -> str | None:
    """The id (ORG/NAME) of a repo folder the cache holds beside `repo` in other letter cases; None if none."""
    if repo is None or not repo.parent.is_dir():
        return None
    other = next((f.name for f in sorted(repo.parent.iterdir()) if f.name.lower() == repo.name.lower()
                  and f.name != repo.name and (f / "snapshots").is_dir()), None)
    return None if other is None else "/".join(other.split("--")[1:])
