"""The files each part of a Hub pipeline's cached snapshot needs, checked before it loads from the
cache (offline, or the Hub unreachable or no longer answering: io_hub_pipeline): a part whose
folder is there but lacks the file its class reads (an interrupted `hf download`, a blob removed)
failed with huggingface_hub's or diffusers' own line, a traceback (a text encoder without its
config.json), or loaded wrong without a word (a tokenizer without its vocabulary: every word one
unknown id); and a file of a part the cache's list of the commit's files names (`cached_listing`,
written by an online snapshot_download), which diffusers asks for offline and huggingface_hub
refused in its own line ("The cached snapshot … is incomplete"). `missing_file` names the file and
the hf download that fetches it. A part's folder missing or empty is pipeline_snapshot.snapshot_problem's.
Where a Hub teacher's snapshot has its transformer is read from its files and that list too (`cached_place`)."""

from __future__ import annotations

from pathlib import Path

from compress import json_read

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def missing_file(source: str, snapshot: Path, passed: tuple[str, ...] = ("transformer",)) -> str | None:
    """'the Hugging Face cache's snapshot S of it: its tokenizer/ lacks spiece.model (or tokenizer.json),
    which T5Tokenizer reads; download it online (hf download ID --include 'tokenizer/*' --revision
    COMMIT)' for the first part of the snapshot (of the Hub id `source`) that lacks a file its class
    needs (part_lacks); None where none does, or the snapshot holds no model_index.json. `passed`:
    parts given to from_pretrained, not read from the snapshot."""
    from compress.pipeline_folder import folder_index, listed_parts

    index = folder_index(str(snapshot))
    listed = cached_listing(source, snapshot.name)
    for part, (library, name) in sorted(listed_parts(index or {}).items()):
        folder = snapshot / part
        if part in passed or not folder.is_dir():
            continue
        lacks = part_lacks(folder, library, name)
        reads = f"which {name} reads"
        if lacks is None and (lacking := listed_lacks(folder, part, listed)):
            lacks, reads = lacking, "which the cache's file list of the commit names and diffusers reads"
        if lacks is not None:
            return (f"the Hugging Face cache's snapshot {snapshot} of it: its {part}/ lacks {lacks}, {reads}; download "
                    f"it online (hf download {source} --include '{part}/*' --revision {snapshot.name})")
    return None


def cached_place(source: str, snapshot: Path, lacking: bool = False) -> str | None:
    """Where the cached snapshot `snapshot` of the Hub id `source` has its transformer (io.transformer_sub's
    rule) by the files it holds and those the cache's list of its commit's files names (`cached_listing`:
    an `hf download --include 'transformer/*'` lists the whole repo), so that offline reads it where
    online the Hub's list does (a root config.json beside transformer/, no model_index.json: the root's).
    A UserError where the snapshot lacks that folder's config.json, unless `lacking` (online: fetched)."""
    from compress.errors import UserError
    from compress.io import transformer_sub

    listed = set(cached_listing(source, snapshot.name))
    sub = transformer_sub(lambda name: (snapshot / name).is_file() or name in listed)
    if sub is None or lacking or (snapshot / sub / "config.json").is_file():
        return sub
    files = f"--include '{sub}*'" if sub else "--include '*' --exclude '*/*'"
    raise UserError(f"the Hugging Face cache's snapshot {snapshot} of '{source}' lacks {sub}config.json, where the "
                    "cache's file list of its commit places the transformer (transformer/ of a pipeline or of a repo "
                    "without a config.json of its own, else the root's, as a copy of the repo and the Hub read it): "
                    f"download it online (hf download {source} {files} --revision {snapshot.name}), or pass a local "
                    "folder or file")


def cached_listing(source: str, commit: str) -> list[str]:
    """The repo's files at `commit` as the cache's tree listing holds them (huggingface_hub's
    get_cached_repo_tree: written by an online snapshot_download, read by diffusers offline, which
    refuses a snapshot lacking one it asks for with huggingface_hub's IncompleteSnapshotError); []
    where none is cached or it cannot be read (the listing is optional: the files held place the
    transformer then). huggingface_hub 2.4's reader catches OSError, ValueError, KeyError and TypeError
    alone (and logs 'Ignoring corrupted tree cache file', kept quiet here): a trees/COMMIT.json of
    another shape (`[]`, a list of files) raised AttributeError through every Hub teacher's load."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:  # a huggingface_hub before the tree listing
        return []
    from compress.io_hub import quiet_hub

    try:
        with quiet_hub():
            return [f.path for f in get_cached_repo_tree(source, revision=commit)]
    except Exception:  # noqa: BLE001 - not cached (CachedRepoTreeNotFoundError), or not as this version reads it
        return []


def listed_lacks(folder: Path, part: str, listed: list[str]) -> str | None:
    """The files of the part `part` the cache's tree listing `listed` names and its snapshot `folder`
    lacks, in words ('tokenizer_config.json and 1 more'), as diffusers asks for them: every file of a
    part without weights (a scheduler, a tokenizer), only config.json of one with weights (their variant
    is diffusers' choice: part_lacks checks them); None where it lacks none."""
    files = [f[len(part) + 1:] for f in listed if f.startswith(f"{part}/")]
    if any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        files = [f for f in files if f == "config.json"]
    lacking = sorted(f for f in files if not _present(folder / f))
    return _some(lacking) if lacking else None


def _some(names: list[str]) -> str:
    """'a' / 'a and b' / 'a and 2 more'."""
    return " and ".join(names) if len(names) <= 2 else f"{names[0]} and {len(names) - 1} more"


def part_lacks(folder: Path, library: str, name: str) -> str | None:
    """The file (in words) the pipeline part `folder` of class `name` (of `library`: diffusers,
    transformers) needs and lacks: a scheduler's or model's config file, a model's weights (or a shard
    its index lists), a tokenizer's vocabulary (its slow files, or tokenizer.json); None where it
    lacks none, or the class is none of these (a feature extractor: its own loader says)."""
    cls = _part_class(library, name)
    kind = _kind(cls)
    if kind is None:
        return None
    if kind == "tokenizer":
        return _vocabulary_lacks(folder, cls.vocab_files_names)
    config = getattr(cls, "config_name", None) or "config.json"  # transformers' models have no config_name
    if not _present(folder / config):
        return config
    return _weights_lacks(folder) if kind == "model" else None


def _part_class(library: str, name: str):
    """The class `library`.`name` (diffusers, transformers); None where it has none or is not installed."""
    import importlib

    if library not in ("diffusers", "transformers"):
        return None
    try:
        cls = getattr(importlib.import_module(library), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) else None


def _kind(cls) -> str | None:
    """'scheduler', 'model' or 'tokenizer' for a part class whose files part_lacks knows; else None."""
    if cls is None:
        return None
    import diffusers

    if issubclass(cls, diffusers.SchedulerMixin):
        return "scheduler"
    if issubclass(cls, diffusers.ModelMixin):
        return "model"
    try:
        import transformers
    except ImportError:
        return None
    if issubclass(cls, transformers.PreTrainedModel):
        return "model"
    return "tokenizer" if issubclass(cls, transformers.PreTrainedTokenizerBase) else None


def _vocabulary_lacks(folder: Path, names: dict) -> str | None:
    """A tokenizer's vocabulary in `folder`: tokenizer.json (its `tokenizer_file`), else every slow
    file (`vocab_file`, `merges_file`, …); what it lacks in words ('spiece.model (or tokenizer.json)')."""
    fast = names.get("tokenizer_file")
    slow = [f for key, f in names.items() if key != "tokenizer_file"]
    if (fast and _present(folder / fast)) or (slow and all(_present(folder / f) for f in slow)) or not (fast or slow):
        return None
    lacking = " and ".join(f for f in slow if not _present(folder / f))
    if not lacking:
        return fast
    return f"{lacking} (or {fast})" if fast else lacking


def _weights_lacks(folder: Path) -> str | None:
    """A model's weights in `folder`: a shard an index (*.index.json) lists and the folder lacks;
    else no weight file at all (none ending in .safetensors or .bin)."""
    files = [f for f in folder.iterdir() if _present(f)]
    for index in (f for f in files if f.name.endswith(".index.json")):
        try:
            shards = set(json_read.read(index).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue  # a damaged index: the loader says
        if lacking := sorted(s for s in shards if isinstance(s, str) and not _present(folder / s)):
            return f"{_some(lacking)} (listed in {index.name})"
    if not any(f.name.endswith(WEIGHT_SUFFIXES) for f in files):
        return "weights (no .safetensors or .bin file)"
    return None


def _present(path: Path) -> bool:
    """A file there whose contents can be read (a cache's link to a blob that is gone is not)."""
    return path.is_file()
