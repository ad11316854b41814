"""`dit-compress convert`: a single-file teacher checkpoint, or a folder of pickled (.bin) weights
(`pickled_folder`: save_pretrained(safe_serialization=False)'s one file or shards), written as a diffusers
transformer folder (config.json + safetensors shards + index), what `stream: true` reads, tensor by tensor.

Loading the whole file and calling `save_pretrained` would hold Flux.1-dev's 24 GB of tensors and,
while a shard is serialized, another copy of it (diffusers' shards are 10 GB): a machine needs
well over 32 GB for it. Here one tensor is read at a time (safetensors' `safe_open`; pickles are
memory-mapped where their format allows it), converted to diffusers' keys (`arch.flux_convert`,
`arch.pixart_convert`), checked against the config's empty model, and added to a shard that is
written once it reaches `shard_bytes`. The folder appears whole or not at all (`atomic_folder`), a
full disk is one line (runner_failures.DiskFull, as `run` says it), and a bar on stderr counts the tensors.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError

from compress.errors import UserError
from compress.io import INDEX, WEIGHTS
from compress.io_atomic import atomic_folder
from compress.runner_lock import hold_output
from compress.io_single import check_flux_blocks, checked_family, empty_model, key_converter, transformer_prefix
from compress.io_single_config import config_file
from compress.io_tensors import read_state_dict, unreadable
from compress.progress import NAMED_LABEL_MOST, shortened
from compress.progress import bar as progress_bar

SHARD_BYTES = 2 * 2**30  # tensors per shard before it is written (one shard is held at a time)
SHARD = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"


def convert_file(path: Path, out: Path, config: str | None = None, shard_bytes: int = SHARD_BYTES) -> dict:
    """Writes `out` from the file `path`, or the folder of .bin weights `path` (pickled_folder);
    returns {"class", "dtypes", "shards", "tensors"}. A write that fails for want of space (or quota,
    or on a read-only disk) is a DiskFull naming `out`, never safetensors' traceback."""
    from compress.io_source import check_suffix, one_shard
    from compress.runner_failures import DiskFull, disk_full_line, disk_full_words

    if not Path(path).is_dir():
        check_suffix(path, "convert reads a single-file checkpoint")
        check_not_output(path, config)
        if (shard := one_shard(Path(path))) is not None:  # its tensors are a part of the model's
            raise UserError(shard.replace("give the folder", "stream: true reads the folder"))
    else:
        check_not_output_folder(Path(path))
        check_folder_model(Path(path))
    out = Path(out).expanduser()
    made = missing_parents(out)  # atomic_folder makes them for its temp folder: removed again on a failure
    try:
        try:
            return _convert(path, out, config, shard_bytes)
        except BaseException:
            remove_empty(made)
            raise
    except Exception as e:
        if disk_full_words(e) is None:
            raise
        # the run's line (runner_failures.disk_full_line): convert takes OUT as an argument, not a flag
        line = disk_full_line(e, f"the conversion of {path}", out, "an output folder")
        raise DiskFull(f"{line} (nothing was left there)") from None


def _convert(path: Path, out: Path, config: str | None, shard_bytes: int) -> dict:
    """convert_file's work: checked against the config's empty model first, then written."""
    files = pickled_folder(path) if path.is_dir() else [path]
    with lazy_tensors(files) as (keys, get):
        prefix = transformer_prefix(keys)
        names = [k[len(prefix):] for k in keys if k.startswith(prefix)]  # the transformer's, prefix removed
        family = checked_family(path, names, None)
        cfg = config_file(files[0], config)  # a folder's: its config.json
        model = empty_model(family, cfg, path)  # errors name the checkpoint, as load_teacher's
        if family == "flux":
            check_flux_blocks(path, dict.fromkeys(names), model, cfg)
        convert_key = key_converter(family, names, model)
        expected = {k: (tuple(v.shape)) for k, v in model.state_dict().items()}
        warn_if_short_of_disk(path, out, sum(f.stat().st_size for f in files))
        # the output's lock, as a run's: a run's start clears temp folders beside an output no one holds
        with hold_output(out), atomic_folder(out) as tmp, progress_bar(True) as bar:
            model.save_config(tmp)
            label = f"convert {shortened(path.name, NAMED_LABEL_MOST - len('convert '))}"  # whole at 80 columns
            task = bar.add_task(label, total=len(names))
            written = _write_shards(tmp, path, names, lambda n: get(prefix + n), convert_key, expected, shard_bytes,
                                    lambda: bar.advance(task))
    return {"class": type(model).__name__, **written}


def check_not_output(path: Path, config: str | None = None) -> None:
    """A weight file of a dit-compress output (its header, or the config.json beside it, records the
    compression section: io_source.output_weights), or a --teacher-config of one, is refused in one
    line before diffusers reads the config: an output's folder is already a diffusers folder with
    factorized keys, which no single-file converter maps (diffusers printed a page of warnings about
    the compression config before the real error)."""
    from compress.io_single_config import config_file
    from compress.io_source import config_record, output_weights

    if path.is_file() and output_weights(path):
        folder = weights_folder(path)
        if folder is not None:
            raise UserError(f"{path} is a weight file of the dit-compress output {folder}, which is already a "
                            "diffusers folder: nothing to convert (load that folder with load_transformer, or give "
                            "it to eval / bench / lora)")
        raise UserError(f"{path} is the weight file of a dit-compress output, copied out of its folder: an output "
                        "is already a diffusers folder, nothing to convert; use the output folder it came from (load "
                        "it with load_transformer, or give it to eval / bench / lora)")
    if config and path.is_file() and config_record(cfg := config_file(path, config)) is not None:
        raise UserError(f"--teacher-config {config}: {cfg} is the config of a dit-compress output (its compression "
                        "section): an output's folder is already a diffusers folder, nothing to convert (load it with "
                        "load_transformer); a teacher's file converts with the teacher's config")


def check_not_output_folder(folder: Path) -> None:
    """A folder of .bin weights whose config.json records the compression section is a dit-compress output
    re-saved with save_pretrained(safe_serialization=False): refused in one line before diffusers reads the
    config (it printed a page of warnings about the compression config, then 'tensor ...down.weight is not
    in the config's model')."""
    from compress.io_source import config_record

    if config_record(folder / "config.json") is not None:
        raise UserError(f"{folder} is a dit-compress output (its config.json has a compression section), already a "
                        "diffusers folder: nothing to convert; load it with compress.load_transformer (convert is "
                        "for teachers' checkpoints)")


def check_folder_model(folder: Path) -> None:
    """A folder whose config.json (io.transformer_place's: a pipeline folder's transformer/) names another
    model than a PixArt or Flux transformer (a VAE's, a UNet's, a transformers config) is refused in the
    words run has for it (io.supported_class: 'T/vae holds an AutoencoderKL (not a PixArt or Flux
    transformer): give the pipeline folder or its transformer/ folder'), before convert says what a folder of
    weights is. One naming no class (a single file's config beside it) or an output's is left to convert."""
    from compress.io import read_config, supported_class, transformer_place

    place = transformer_place(folder)
    config = read_config(place / "config.json") if place is not None else {}
    named = config.get("_class_name") is not None or "model_type" in config or "architectures" in config
    if named and "compression" not in config:
        supported_class(config, place / "config.json")


def weights_folder(path: Path) -> Path | None:
    """The output folder whose weight file `path` is (through a link to one, the linked file's), not a
    copy of one elsewhere (in a folder that is no output, or beside another output's own files)."""
    from compress.io_atomic import output_part
    from compress.output_names import is_output

    real = path.resolve() if path.is_symlink() else path
    return real.parent if is_output(real.parent) and output_part(real) else None


def missing_parents(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet, deepest first."""
    missing = []
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Removes `folders` (deepest first) while they are empty: what a failed convert made, never what
    another process put there since."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def warn_if_short_of_disk(path: Path, out: Path, need: int | None = None) -> None:
    """The folder takes about the file's size (`need`: a folder's files' together; its own dtypes): say
    so before writing if the disk of `out` has less free, as `run` does (runner_memory.warn_if_short_of_disk).
    The warning names the folder measured: `out`'s parent, or the nearest one above it that exists."""
    from compress.calib_footprint import human_sizes
    from compress.report import warn
    from compress.runner_memory import free_bytes

    missing = missing_parents(out)
    measured = missing[-1].parent if missing else out.parent
    need, have = path.stat().st_size if need is None else need, free_bytes(measured)
    if have is not None and need > have:
        need_words, have_words = human_sizes(need, have)
        warn(f"the converted folder takes about {need_words} (the size of {path.name}) and "
             f"{have_words} are free under {measured}; give an output folder on a bigger disk")


@contextlib.contextmanager
def lazy_tensors(files: list[Path]) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor]]]:
    """(tensor names, name -> tensor) of a checkpoint file, or of a folder's pickled shards (names file
    by file), reading each tensor when asked."""
    if len(files) > 1:
        yield from _shards_tensors(files)
        return
    path = files[0]
    if path.suffix != ".safetensors":
        sd = read_state_dict(path, mmap=True)
        yield list(sd), sd.__getitem__
        return
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="pt")
        keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        raise unreadable(path, e) from None
    yield keys, f.get_tensor


def _shards_tensors(files: list[Path]) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor]]]:
    """lazy_tensors of pickled shards: each shard's names read once (mapped), then its tensors with one
    shard's dict held at a time (the names come shard by shard). A name in two shards is one line."""
    where: dict[str, Path] = {}
    for f in files:
        for k in read_state_dict(f, mmap=True):
            if k in where:
                raise UserError(f"{f.parent}: {where[k].name} and {f.name} both hold tensor {k}")
            where[k] = f
    held: dict[Path, dict] = {}

    def get(name: str) -> torch.Tensor:
        if where[name] not in held:
            held.clear()
            held[where[name]] = read_state_dict(where[name], mmap=True)
        return held[where[name]][name]
    yield list(where), get


_BIN_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.bin")


def pickled_folder(folder: Path) -> list[Path]:
    """The .bin weight files of a folder convert writes as safetensors: where from_pretrained reads .bin
    there (io_variants.variant_weights: save_pretrained(safe_serialization=False)), the one file or the shards its
    index lists; else the shards another .bin index lists (transformers' pytorch_model.bin.index.json), or
    NAME-0000i-of-0000N.bin shards of one NAME and N without an index. [] where the folder holds none of
    these (a single file in it: commands.not_a_file names it); a UserError naming the shards it lacks."""
    from compress.io import weight_index
    from compress.io_variants import variant_weights, weights_variant
    from compress.io_errors import shards_not_there

    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    read = variant_weights(names, weights_variant(folder))
    if read and not any(n.endswith(".bin") for n in read):
        return []  # safetensors: what stream: true reads already
    index = [n for n in read if n.endswith(".json")] if read else [n for n in names if n.endswith(".bin.index.json")]
    if read and not index:
        return [folder / read[0]]
    if len(index) == 1:
        listed = weight_index(folder / index[0])
        if not listed:
            raise UserError(f"{folder / index[0]} has no weight_map")
        shards = sorted(set(listed.values()))
        if missing := [s for s in shards if not (folder / s).is_file()]:
            raise UserError(shards_not_there(folder / index[0], folder, missing))
        return [folder / s for s in shards]
    groups = {(m[1], m[3]) for n in names if (m := _BIN_SHARD.fullmatch(n))}
    if len(groups) != 1 or index:
        return []
    (name, of), = groups
    shards = [f"{name}-{i:0{len(of)}d}-of-{of}.bin" for i in range(1, int(of) + 1)]
    if missing := [s for s in shards if s not in names]:
        raise UserError(f"{folder} holds shards {name}-…-of-{of}.bin without an index, and lacks {len(missing)} of them: "
                        f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} (an incomplete download?)")
    return [folder / s for s in shards]


def _write_shards(folder: Path, path: Path, names: list[str], get, convert_key, expected: dict,
                  shard_bytes: int, tick=lambda: None) -> dict:
    """Converts and writes the tensors in shards of about `shard_bytes`, then names them -of-N and
    writes the index. Every diffusers tensor must be expected (name and shape) and come once.
    `tick` is called once per tensor of the file (the progress bar)."""
    from safetensors.torch import save_file

    shards, current, size, seen, dtypes, total = [], {}, 0, set(), set(), 0

    def flush():
        nonlocal current, size
        if current:
            shards.append((folder / f"shard-{len(shards):05d}.tmp", list(current)))
            save_file(current, str(shards[-1][0]), metadata={"format": "pt"})
        current, size = {}, 0

    for name in names:
        try:
            parts = convert_key(name, get(name))
        except (KeyError, ValueError) as e:
            raise UserError(f"{path}: {e.args[0]}") from None
        for key, tensor in parts.items():
            _check_tensor(path, key, tensor, expected, seen)
            current[key] = tensor.contiguous()
            size += tensor.numel() * tensor.element_size()
            total += tensor.numel() * tensor.element_size()
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
        if size >= shard_bytes:
            flush()
        tick()
    flush()
    missing = sorted(expected.keys() - seen)
    if missing:
        raise UserError(lacks(path, missing))
    _name_shards(folder, shards, total)
    return {"dtypes": sorted(dtypes), "shards": len(shards), "tensors": len(seen)}


GUIDANCE = "time_text_embed.guidance_embedder."  # FLUX.1-dev's; schnell has none (config guidance_embeds)


def lacks(path: Path, missing: list[str]) -> str:
    """The error for tensors of the config's model the file lacks. The guidance embedder alone (which
    the config's model has only with guidance_embeds: true) is a schnell file given a dev config."""
    words = f"{path} lacks {len(missing)} tensor(s) of the config's model, e.g. {missing[0]}"
    if all(k.startswith(GUIDANCE) for k in missing):
        words += ("; they are the guidance embedder, which the config has (guidance_embeds: true): a file "
                  "without one (FLUX.1-schnell) needs a config with guidance_embeds: false")
    return words


def _name_shards(folder: Path, shards: list, total: int) -> None:
    """The shards under diffusers' names: one file alone, else -0000i-of-0000N and the index."""
    if len(shards) == 1:
        shards[0][0].rename(folder / WEIGHTS)
        return
    weight_map = {}
    for i, (tmp_name, keys) in enumerate(shards):
        final = SHARD.format(i + 1, len(shards))
        tmp_name.rename(folder / final)
        weight_map.update(dict.fromkeys(keys, final))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _check_tensor(path: Path, key: str, tensor: torch.Tensor, expected: dict, seen: set) -> None:
    if key not in expected and key.startswith(GUIDANCE):
        raise UserError(f"{path}: tensor {key} is not in the config's model: the file has a guidance embedder "
                        "(FLUX.1-dev) and the config says guidance_embeds: false; give a config with "
                        "guidance_embeds: true")
    if key not in expected:
        raise UserError(f"{path}: tensor {key} is not in the config's model (another model or config?)")
    if tuple(tensor.shape) != expected[key]:
        raise UserError(f"{path}: tensor {key} has shape {tuple(tensor.shape)}, the config's model "
                        f"{expected[key]}")
    if key in seen:
        raise UserError(f"{path}: two tensors give {key}")
    seen.add(key)
