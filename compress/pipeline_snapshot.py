"""The Hugging Face cache's snapshot of a Hub id given as a pipeline (calibration pipeline, load_pipeline's
base), read offline, checked as pipeline_folder checks a local folder before it loads: a part it lacks
(`snapshot_problem`), its model_index.json where the cache's file list of the commit names it or it
holds transformer/ alone (`index_lacking`), a file a part reads (`cached_problem`, through
io_hub_cache_files), named with the hf download that fetches it; refs/main moved on to a commit the
cache holds no snapshot of (io_hub_pipeline.moved_problem), and an older snapshot holding the whole
pipeline where refs/main's lacks model_index.json, a part or a file (`whole_elsewhere`)."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.pipeline_folder import folder_index, index_problem


def cached_problem(source: str, what: str = "", passed: tuple[str, ...] = ("transformer",)) -> str | None:
    """What the Hugging Face cache's snapshot a Hub id `source` is read from offline (HF_HUB_OFFLINE)
    lacks, as its load says it (io_hub_pipeline.cache_problem): a part (snapshot_problem), else a file a
    part's class reads (io_hub_cache_files.missing_file), with an older snapshot of the whole pipeline
    (pipeline_cache.snapshot_lacks); where the cache holds no snapshot of the commit its refs/main
    names, but others, both commits (io_hub_pipeline.moved_problem). None where `source` is read
    otherwise, the cache holds no copy of it, or the snapshot lacks neither."""
    from compress.io_source import looks_local
    from compress.io_hub import id_problem, offline
    from compress.io_hub_cache import cached_snapshot
    from compress.pipeline_cache import snapshot_lacks

    if not offline() or looks_local(source) or id_problem(source) is not None:
        return None
    snapshot = cached_snapshot(source)
    if snapshot is None:  # refs/main moved on to a commit not downloaded: its load refuses it (moved_main)
        from compress.io_hub_pipeline import moved_problem

        return moved_problem(source, "base pipeline" if "base pipeline" in what else "calibration pipeline")
    return snapshot_lacks(source, snapshot, what, passed, snapshot_slot(what))


def snapshot_problem(source: str, snapshot: Path, what: str = "",
                     passed: tuple[str, ...] = ("transformer",)) -> str | None:
    """index_problem of `snapshot`, the Hugging Face cache's copy of the Hub id `source` a pipeline
    is read from (offline, or the Hub unreachable: io_hub_pipeline.pipeline_keywords), in words naming the
    snapshot and the hf download that fetches the parts it lacks (`hf download ID --include
    'transformer/*'` leaves the tokenizers out), or its model_index.json where it lacks that
    (index_lacking); None where nothing is wrong, or it holds no model_index.json and is no pipeline's.
    pipeline_cache.snapshot_lacks adds an older snapshot of the whole pipeline (whole_elsewhere)."""
    index = folder_index(str(snapshot), what)
    if index is None:
        return index_lacking(source, snapshot)

    def fetch(lacking: list[str]) -> str:
        include = " ".join(f"--include '{part}/*'" for part in lacking)
        return f"download {'it' if len(lacking) == 1 else 'them'} online (hf download {source} {include} " \
               f"--revision {snapshot.name})"
    problem = index_problem(str(snapshot), index, passed, fetch)
    return None if problem is None else f"the Hugging Face cache's snapshot {snapshot} of it: {problem}"


def index_lacking(source: str, snapshot: Path) -> str | None:
    """'the Hugging Face cache's snapshot S of it lacks model_index.json, …; download it online (hf
    download ID model_index.json --revision COMMIT) …' where the snapshot `snapshot` of the Hub id
    `source` holds no model_index.json and is a pipeline's: the cache's file list of the commit
    names it (an interrupted snapshot_download: diffusers ended in huggingface_hub's 'The cached
    snapshot … is incomplete'), or it holds transformer/ (a Hub teacher's load fetches that alone:
    diffusers ended in "We couldn't connect to 'https://huggingface.co' …", offline too). None
    otherwise (a transformer repo's config.json at its root: diffusers says)."""
    from compress.io_hub_cache_files import cached_listing

    if "model_index.json" in cached_listing(source, snapshot.name):
        why = " and the cache's file list of the commit names"
    elif (snapshot / "transformer").is_dir():
        why = "; it holds transformer/ (which a Hub teacher's load, or hf download --include 'transformer/*', fetches alone)"
    else:
        return None
    return (f"the Hugging Face cache's snapshot {snapshot} of it lacks model_index.json, which diffusers reads first"
            f"{why}; download it online (hf download {source} model_index.json --revision {snapshot.name}), then the "
            "parts it lists that the snapshot lacks (named here once it is there)")


def whole_elsewhere(source: str, snapshot: Path, as_what: str = "calibration.pipeline") -> str:
    """'; the whole pipeline, of another commit, is in the snapshot P (v1) (pass a snapshot folder as
    AS_WHAT)' where the cache holds, beside `snapshot` (refs/main's, lacking model_index.json, a part
    or a file a part reads: a Hub teacher's load moved refs/main and fetched transformer/ alone, or a
    download of main's new commit was cut short), snapshots of the Hub id
    `source` holding a whole pipeline (model_index.json, every part it lists, the files they read);
    '' otherwise. `as_what`: where a snapshot folder goes (snapshot_slot)."""
    from compress.io_hub_cache import cache_folder, held_snapshots, named_snapshots
    from compress.io_hub_cache_files import missing_file

    whole = [p for p in held_snapshots(source) if p != snapshot and (p / "model_index.json").is_file()
             and _quiet(lambda p=p: snapshot_problem(source, p) or missing_file(source, p)) is None]
    if not whole:
        return ""
    return f"; the whole pipeline, of another commit, is in {named_snapshots(cache_folder(source), whole, as_what)}"


def _quiet(problem):
    """problem(), a UserError (an unreadable model_index.json) taken as one."""
    try:
        return problem()
    except UserError as e:
        return str(e)


def snapshot_slot(what: str) -> str:
    """Where a pipeline's snapshot folder goes, for io_hub_cache.named_snapshots' hint ('pass a snapshot
    folder as …'): load_pipeline's base where `what` names the base pipeline, else calibration.pipeline."""
    return "load_pipeline's base" if "base pipeline" in what else "calibration.pipeline"
