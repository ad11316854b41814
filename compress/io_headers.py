"""A teacher's weights checked against its config from the safetensors headers alone: plan refuses,
in the line run's load gives (io_errors, io_single), a folder whose config.json describes more blocks
than its weights hold, a folder of a config and no weights, a tensor of another shape, and an
empty, truncated or corrupted file, where it used to plan the config's numbers. Cost: safe_open
reads a file's header (its tensor names, dtypes, shapes and offsets) and checks the file is as long
as the header says; no tensor data is read (a few KB per file, also for a sharded Flux-dev). Not
checked here (their loaders say what is wrong): a toy teacher (shipped), a dit-compress output (its
own loader), pickles (.bin/.pth/.ckpt: reading their names means unpickling the data), and a Hub id
whose weights are not all in the Hugging Face cache (nothing is asked of the Hub: its config alone
plans a teacher not downloaded yet).
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress.io_tensors import unreadable

# safetensors' dtype names; the shapes are what is checked, the rest are read as float32
HEADER_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                 "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8}


def header_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype name, shape)} of a safetensors file, from its header alone; an unopenable
    file (empty, cut short, not safetensors) is io_tensors.unreadable's error, as run's loaders give it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: (s.get_dtype(), tuple(s.get_shape())) for k in f.keys() for s in [f.get_slice(k)]}
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


def header_tensors(path: Path, seen: dict[Path, set[str]] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors of its header's shapes (io_single.load_single_file's
    `read`: the file's names converted and loaded into the config's model without its data); the
    header's dtype names kept in `seen` ({path: names}) where given."""
    shapes = header_shapes(path)
    if seen is not None:
        seen[path] = {dtype for dtype, _ in shapes.values()}
    return {k: torch.empty(shape, dtype=HEADER_DTYPES.get(dtype, torch.float32), device="meta")
            for k, (dtype, shape) in shapes.items()}


def check_teacher_weights(src, model: torch.nn.Module) -> None:
    """The weights of teacher `src` (io_source_config.TeacherSource) fill `model` (the meta model plan built
    from its config) exactly, names and shapes, read from the headers; a UserError in run's words
    otherwise. The headers' dtype names are kept (TeacherSource.weights_read): the export's dtype
    warning (io_export.teacher_stored_dtype) reads them there. See the module's docstring for what is
    not checked."""
    from functools import partial

    path = Path(src.source).expanduser()
    if not reads_headers(src):
        return
    if src.kind == "file":
        from compress.arch import get_adapter
        from compress.io_single import load_single_file

        load_single_file(path, None, src.config_arg, get_adapter(model).family,
                         read=partial(header_tensors, seen=src.weights_read.dtypes))
    elif src.kind == "folder":
        from compress.io import transformer_folder

        check_folder_weights(transformer_folder(path), model, src.weights_read.dtypes)
    else:
        check_folder_weights(cached_weights(src.source), model, src.weights_read.dtypes)


def reads_headers(src) -> bool:
    """Whether check_teacher_weights reads headers of teacher `src`'s files (a meta model to check them
    against is worth building): a .safetensors file, a folder but a dit-compress output's, a Hub id's
    snapshot in the Hugging Face cache with all its safetensors weights (not with --teacher-config)."""
    if src.kind == "file":
        return Path(src.source).suffix == ".safetensors"
    if src.kind == "folder":
        return "compression" not in src.config
    return src.kind == "hub" and not src.config_arg and cached_weights(src.source) is not None


def cached_weights(repo_id: str) -> Path | None:
    """The transformer folder of a Hub id's snapshot in the Hugging Face cache (no request) where it
    holds all its safetensors weights; None where it does not (run downloads them, then checks)."""
    from compress.io_errors import broken_weights, missing_shards

    folder = cached_transformer(repo_id)
    if folder is None:
        return None
    names = safetensors_weights(folder)
    if not names or missing_shards(folder) is not None or broken_weights(folder, names) is not None:
        return None
    return folder


def cached_transformer(repo_id: str) -> Path | None:
    """The transformer folder of a Hub id's snapshot in the Hugging Face cache (no request): its
    transformer/ where it has one, else the snapshot itself; None where the cache holds no snapshot."""
    from compress.io_hub_cache import cached_snapshot

    snapshot = cached_snapshot(repo_id)
    if snapshot is None:
        return None
    return snapshot / "transformer" if (snapshot / "transformer").is_dir() else snapshot


def pickled_folder(src) -> Path | None:
    """The transformer folder of teacher `src` (a folder, not an output; a Hub id's snapshot in the Hugging
    Face cache, no request) where the weights from_pretrained reads there are pickles (.bin, one or
    sharded): their names and shapes are not read before run loads them (check_folder_weights passes
    them by); None otherwise (a Hub id whose cache holds none of its weights: the Hub says which run reads)."""
    from compress.io import transformer_folder
    from compress.io_variants import variant_weights, weights_variant

    folder = (transformer_folder(Path(src.source).expanduser()) if src.kind == "folder" and reads_headers(src)
              else cached_transformer(src.source) if src.kind == "hub" else None)
    if folder is None or not folder.is_dir():
        return None
    names = variant_weights([f.name for f in folder.iterdir()], weights_variant(folder))
    return folder if names and not safetensors_weights(folder) else None


def safetensors_weights(folder: Path) -> list[str]:
    """The weight files from_pretrained reads in `folder` (io_variants.variant_weights) where they are
    safetensors; [] for none, or .bin ones."""
    from compress.io_variants import variant_weights, weights_variant

    names = variant_weights([f.name for f in folder.iterdir()], weights_variant(folder))
    return names if names and not any(n.endswith(".bin") for n in names) else []


def check_folder_weights(folder: Path, model: torch.nn.Module, seen: dict[Path, set[str]] | None = None) -> None:
    """A transformer folder's safetensors weights (the file, or the shards its index lists) fill
    `model`, as run's from_pretrained finds them: no weight file at all (io_errors.no_weights: a
    config alone planned the config's numbers), a missing or cut shard, then a tensor of another
    shape (io_errors.other_shape), then missing or unexpected names (io_errors.check_loading_info).
    `seen`: where given, {file: its header's dtype names} of the files read."""
    from compress.io_variants import variant_weights, weights_variant
    from compress.io_errors import check_loading_info, no_weights, other_shape
    from compress.stream_files import weight_map

    variant = weights_variant(folder)
    if not variant_weights([f.name for f in folder.iterdir()], variant):
        raise no_weights(folder, variant)  # a config and no weights: run's refusal (io._load_folder)
    if not safetensors_weights(folder):
        return
    files = weight_map(folder)  # shards missing, links gone, a file that does not open: run's words
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(set(files.values())):
        header = header_shapes(f)
        shapes |= {k: shape for k, (_, shape) in header.items()}
        if seen is not None:
            seen[f] = {dtype for dtype, _ in header.values()}
    wanted = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    for name in sorted(shapes.keys() & wanted.keys()):
        if shapes[name] != wanted[name]:
            raise other_shape(type(model), folder, name, shapes[name], wanted[name])
    check_loading_info(folder, {"missing_keys": sorted(wanted.keys() - shapes.keys()),
                                "unexpected_keys": sorted(shapes.keys() - wanted.keys())})
