"""What the Hugging Face cache holds of a Hub id given as a pipeline (calibration.pipeline, a
sampled-in Hub teacher, load_pipeline's base), read before it loads without a request to the Hub:
refs/main's snapshot's model_index.json, offline and online (`cached_index`: the family check of
pipeline_folder.check_calibration_pipeline and of io_pipeline.load_pipeline's base); a transformer's
repo given as a pipeline (`cached_transformer_repo`, said by `transformer_repo_words`); what that snapshot lacks, with the older
snapshot of the whole pipeline where the cache holds one (`snapshot_lacks`). Where the cache holds
no copy there is nothing to read: nothing is checked, and the load says what the Hub answers."""

from __future__ import annotations

from pathlib import Path


def cached_index(source: str) -> tuple[Path, dict] | None:
    """(refs/main's snapshot of the Hub id `source` in the Hugging Face cache, its model_index.json)
    where the cache holds both, offline or online: online the Hub's main may have moved on since the
    cache's was downloaded, not to a pipeline of another family (a repo keeps its model). None where
    `source` is a local path or no Hub id, or the cache holds no snapshot or no model_index.json of it
    (nothing to read without asking the Hub, which plan and the pre-run check do not), or its
    model_index.json cannot be read (offline pipeline_snapshot.cached_problem says so first, as
    load_pipeline's pipeline_keywords does; online the Hub may serve another)."""
    from compress.errors import UserError
    from compress.io_source import looks_local
    from compress.io_hub import id_problem
    from compress.io_hub_cache import cached_snapshot
    from compress.pipeline_folder import folder_index

    if looks_local(source) or id_problem(source) is not None or (snapshot := cached_snapshot(source)) is None:
        return None
    try:
        index = folder_index(str(snapshot))
    except UserError:
        return None
    return None if index is None else (snapshot, index)


def cached_transformer_repo(source: str) -> Path | None:
    """refs/main's snapshot of the Hub id `source` in the Hugging Face cache where it is a
    transformer's repo: config.json at its root, no model_index.json, nor one the cache's file list
    of the commit names (the local folder without model_index.json's like: diffusers ended, after the
    teacher had loaded, in "We couldn't connect to 'https://huggingface.co' …model_index.json"
    offline, in its 404 for model_index.json online). Online too, read without a request: the cache's
    main is the one last downloaded (a repo that became a pipeline's since passes once `hf download
    ID model_index.json` moves it). None otherwise."""
    from compress.io_source import looks_local
    from compress.io_hub import id_problem
    from compress.io_hub_cache import cached_snapshot
    from compress.io_hub_cache_files import cached_listing

    if looks_local(source) or id_problem(source) is not None:
        return None
    snapshot = cached_snapshot(source)
    if snapshot is None or (snapshot / "model_index.json").exists() or not (snapshot / "config.json").is_file():
        return None
    return None if "model_index.json" in cached_listing(source, snapshot.name) else snapshot


def transformer_repo_words(snapshot: Path) -> str:
    """What a Hub id whose cached_transformer_repo is `snapshot` is, in words (calibration.pipeline's
    refusal, load_pipeline's base's): read offline, or online main's as last downloaded."""
    from compress.io_hub import offline

    read = "read offline" if offline() else "main's as last downloaded (the Hub not asked)"
    return (f"a transformer's repo (the Hugging Face cache's snapshot of it, {read}, holds config.json at its "
            f"root and no model_index.json: {snapshot})")


def snapshot_lacks(source: str, snapshot: Path, what: str = "", passed: tuple[str, ...] = ("transformer",),
                   as_what: str = "calibration.pipeline") -> str | None:
    """What refs/main's snapshot `snapshot` of the Hub pipeline `source` lacks, as its load from the
    cache says it: its model_index.json or a part (pipeline_snapshot.snapshot_problem; `what`: its
    folder_index's), else a file a part reads (io_hub_cache_files.missing_file); and where the cache
    holds an older snapshot of the whole pipeline (main moved on, its new commit downloaded in part),
    that one (pipeline_snapshot.whole_elsewhere; `as_what`: where a snapshot folder goes). None where it
    lacks nothing. `passed`: parts given to from_pretrained."""
    from compress.io_hub_cache_files import missing_file
    from compress.pipeline_snapshot import snapshot_problem, whole_elsewhere

    problem = snapshot_problem(source, snapshot, what, passed) or missing_file(source, snapshot, passed)
    return None if problem is None else problem + whole_elsewhere(source, snapshot, as_what)
