"""Where a streamable teacher's tensors are, without loading them: `checkpoint_of(source)` gives the
diffusers config and the tensor name -> safetensors file map of a toy teacher, a local transformer or
pipeline folder, or a Hugging Face id (its transformer/ downloaded once); `weight_map(folder)` that
map for one `diffusion_pytorch_model.safetensors` (or a variant's) or the shards its `.index.json`
lists. `tensor_ends` reads a few values of each tensor (what `calib.model_digest` sees of streamed
blocks). `stream.CheckpointBlocks` reads the blocks through these maps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from compress.errors import UserError
from compress.io import INDEX, WEIGHTS, read_config, read_json, transformer_folder, weight_index
from compress.io_errors import broken_weights, shards_not_there
from compress.io_hub import hub_folder
from compress.io_source import looks_local
from compress.io_tensors import one_line, unreadable
from compress.io_variants import variant_weights, weights_variant


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    folder = Path(folder)
    variant = weights_variant(folder) if folder.is_dir() else None
    index, weights = (INDEX, WEIGHTS) if variant is None else \
        (INDEX.replace(".json", f".{variant}.json"), WEIGHTS.replace(".safetensors", f".{variant}.safetensors"))
    older = WEIGHTS + f".{variant}.index.json"  # a variant's index by diffusers' older name, which it still reads
    if variant is not None and not (folder / index).is_file() and (folder / older).is_file():
        index = older
    check_links(folder, [index, weights])
    if (folder / index).is_file():
        files = {k: folder / f for k, f in weight_index(folder / index).items()}
        missing = sorted({f.name for f in files.values() if not f.is_file()})
        if missing:
            check_links(folder, missing)
            raise UserError(shards_not_there(folder / index, folder, missing))
        check_readable(files)
        return files
    if (folder / weights).is_file():
        return file_map(folder / weights)
    raise UserError(f"{folder} has neither {WEIGHTS} nor {INDEX}: no diffusers weights to read there"
                    f"{holds_pickled_weights(folder) or holds_single_file(folder)}")


def check_links(folder: Path, names: list[str]) -> None:
    """A weight file of `folder` that links to a file that is gone (a Hugging Face cache snapshot whose
    blob was removed) is one UserError naming it and how to fetch it again (io_errors.broken_weights,
    as the resident load says it), not 'no diffusers weights' nor 'an incomplete download?'."""
    if (broken := broken_weights(folder, names)) is not None:
        raise UserError(broken)


# diffusers' own weight files: diffusion_pytorch_model[.VARIANT].safetensors, its shards (save_pretrained
# writes ...[.VARIANT]-00001-of-00003.safetensors, older tools -00001-of-00003[.VARIANT]) and their
# index (...safetensors.index[.VARIANT].json); no single-file checkpoint is named so
_SHARDS = r"diffusion_pytorch_model(?:\.\w+)?(?:-\d+-of-\d+)?(?:\.\w+)?\.safetensors"
_INDEX = r"diffusion_pytorch_model\.safetensors\.index(?:\.\w+)?\.json"
DIFFUSERS_WEIGHT_FILE = rf"{_SHARDS}|{_INDEX}"
# of these, a folder's whole weights: the one file or the shards' index (shards without their index are
# no readable folder: a single file beside them is still named)
DIFFUSERS_WEIGHTS_OR_INDEX = rf"diffusion_pytorch_model(?:\.\w+)?\.safetensors|{_INDEX}"


def holds_diffusers_weights(folder: Path) -> bool:
    """Whether `folder` holds a diffusers folder's weight file or shard index (any variant's), a
    transformer/ or a pipeline's model_index.json: what stream: true reads, whatever lies beside."""
    folder = Path(folder)
    if (folder / "transformer").is_dir() or (folder / "model_index.json").is_file():
        return True
    return any(re.fullmatch(DIFFUSERS_WEIGHTS_OR_INDEX, p.name) for p in folder.iterdir())


def single_files_in(folder: Path) -> list[Path]:
    """The single-file checkpoints in `folder`: docs/STREAMING.md ("The teacher") lays one out as the file with its
    config.json beside it, a folder users then give where a diffusers folder is read. diffusers' own
    weight files and shards are none (converting one is no way to read their folder)."""
    from compress.io_tensors import SINGLE_FILE_SUFFIXES

    return sorted(p for p in Path(folder).iterdir() if p.suffix in SINGLE_FILE_SUFFIXES and p.is_file()
                  and not re.fullmatch(DIFFUSERS_WEIGHT_FILE, p.name))


def convertible_files(folder: Path) -> list[Path]:
    """The single files in `folder` to give `convert`: none where it holds diffusers' weight files
    (a shard or another variant's are no single file to convert; the folder is what stream reads)."""
    return [] if holds_diffusers_weights(folder) else single_files_in(folder)


def holds_pickled_weights(folder: Path) -> str:
    """'; it holds diffusers' .bin weights ...: write them once as safetensors with CMD, then stream
    --teacher FOLDER', where the weights from_pretrained reads in `folder` (io_variants.variant_weights) are .bin
    (save_pretrained(safe_serialization=False)): `convert` of the one file (which reads the config.json
    beside it), or of the folder, whose shards it converts whole (io_convert.pickled_folder). '' where
    they are not."""
    variant = weights_variant(folder)
    names = variant_weights([p.name for p in Path(folder).iterdir()], variant)
    if not names or any(".safetensors" in n for n in names):
        return ""
    if len(names) == 1:
        what = given = Path(folder) / names[0]
    else:
        what, given = f"in {len(names) - 1} shards", folder
    return (f"; it holds diffusers' .bin weights ({what}), which stream: true does not read: write them once as "
            f"safetensors with `dit-compress convert {given} FOLDER`, then stream --teacher FOLDER")


def listed(files: list[Path], most: int = 3) -> str:
    """'a, b, c …': the first `most` of `files`, for a message."""
    return ", ".join(str(f) for f in files[:most]) + (" …" if len(files) > most else "")


def holds_single_file(folder: Path) -> str:
    """'; it holds the single file F: ...' (what to do with it), or '' where it holds none to convert
    (`convertible_files`)."""
    files = convertible_files(folder)
    if not files:
        return ""
    what = f"the single file {files[0]}" if len(files) == 1 else f"single files ({listed(files)})"
    return (f"; it holds {what}: write it once as a folder with `dit-compress convert {files[0]} FOLDER`, then "
            "stream --teacher FOLDER")


def file_map(path: Path) -> dict[str, Path]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict.fromkeys(f.keys(), Path(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


def check_readable(files: dict[str, Path]) -> None:
    """Every file of a weight map opens (safe_open reads only its header, and checks the file holds
    all the bytes the header lists), so a truncated or corrupted shard is refused, named, before
    anything is computed rather than when its block is reached."""
    for path in sorted(set(files.values())):
        with opened(path):
            pass


@contextmanager
def opened(path: Path, mapped: bool = False) -> Iterator:
    """safe_open(path) for reading tensors; a file that cannot be opened or read (truncated,
    corrupted, gone) is one UserError naming it: `unreadable`, or, where the file was `mapped` (read
    when its weights were mapped, as weight_map does), `changed`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise (changed(path, e) if mapped else unreadable(path, e)) from None


class WeightsChanged(UserError):
    """A weight file read when it was mapped that cannot be read now: no mistake of the recipe's (the
    runner names no recipe line for it), and the run folder keeps what was done."""


def changed(path: Path, e: Exception) -> WeightsChanged:
    """The error for a weight file that read when it was mapped and does not now (removed, truncated
    or rewritten meanwhile): streamed weights are read from their files block by block as work goes."""
    now = "is gone" if not Path(path).exists() else f"can no longer be read ({one_line(e)})"
    return WeightsChanged(f"{path} {now}: it changed while dit-compress read streamed weights from it block by "
                          "block; leave it in place, unchanged, until dit-compress ends")


def checkpoint_of(source: str) -> tuple[dict, dict[str, Path]]:
    """(diffusers config, tensor name -> file) of a teacher source that can be streamed: a toy
    teacher, a local transformer or pipeline folder, or a Hugging Face id (its transformer folder,
    downloaded once)."""
    if source.startswith("toy:"):
        from compress.toy.weights import toy_files

        config_path, weights = toy_files(source[4:])
        return read_json(config_path), file_map(weights)
    path = Path(source).expanduser()
    if not path.exists() and not looks_local(source) and source.count("/") == 1:
        path = hub_folder(source)  # its transformer folder: config and one variant's weights, as load_teacher reads it
    if not path.is_dir():
        raise not_streamable(source, path.is_file())
    path = transformer_folder(path)
    config = read_config(path / "config.json")
    if "compression" in config:
        raise streamed_output(path)
    return config, weight_map(path)


def not_streamable(source: str, is_file: bool) -> UserError:
    """The error for streaming a source that is a single file (or not there)."""
    what = (f"a single file: write it once as a folder with `dit-compress convert {source} FOLDER` "
            "(--teacher-config as for run), then stream --teacher FOLDER") if is_file else "not found"
    return UserError(f"stream: true reads a diffusers folder (a pipeline's transformer/ or a "
                     f"transformer saved with save_pretrained), a toy teacher or a Hugging Face id; "
                     f"{source} is {what}")


def streamed_output(path) -> UserError:
    """The error for streaming a dit-compress output: stream: true reads a dense checkpoint's
    tensors a block at a time, and the output's factorized layers are not those tensors."""
    return UserError(f"{path} is a dit-compress output: its factorized layers (down and up factors) are "
                     "not the dense per-block tensors stream: true reads a block at a time; compress it "
                     "further resident (stream: false in the recipe, or --set stream=false)")


def check_streamable(src) -> None:
    """What checkpoint_of refuses, from a checked source (io_source_config.TeacherSource) alone, before
    anything is read: `plan` says it as `run` does."""
    if src.kind == "file":
        raise not_streamable(src.source, True)
    if src.kind == "folder" and "compression" in src.config:
        raise streamed_output(transformer_folder(Path(src.source).expanduser()))


def by_file(files: dict[str, Path], names) -> dict[Path, list[str]]:
    """`names` grouped by the file `files` says holds each (so each file is opened once)."""
    out: dict[Path, list[str]] = {}
    for k in names:
        out.setdefault(files[k], []).append(k)
    return out


def tensor_ends(files: dict[str, Path], stored: dict[str, str] | None = None,
                n: int = 8) -> dict[str, torch.Tensor]:
    """name -> the first and last n values (float32, flattened) of each tensor of `files` (name ->
    file; `stored`: its name in the file where that differs), reading little more than those (a
    tensor's first and last rows). Each file is opened once (a `mapped` one: `opened`)."""
    out = {}
    for path, names in by_file(files, files).items():
        with opened(path, mapped=True) as f:
            for k in names:
                part = f.get_slice((stored or {}).get(k, k))
                shape = part.get_shape()
                if not shape or 0 in shape:
                    continue
                first, last = (n, shape[0] - n) if len(shape) == 1 else (1, shape[0] - 1)
                head, tail = part[:first].reshape(-1)[:n], part[max(last, 0):].reshape(-1)[-n:]
                out[k] = torch.cat([head, tail]).float()
    return out
