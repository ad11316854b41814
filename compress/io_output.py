"""Compressed outputs back in: `load_transformer(out)` gives the ordinary diffusers class with
LowRankLinear where factorized, bit-identical to the model that was saved; `load_pipeline` puts it
in a diffusers pipeline (compress.io_pipeline). The output folder is DESIGN.md's (written by `io_export.save_compressed`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from compress.activation_range import warn_loaded_range
from compress.dtype_range import DTYPES, check_castable, check_finite_file
from compress.errors import UserError
from compress.fuse import fuse_gelu
from compress.io import (FORMAT, INDEX, WEIGHTS, cast, config_model_class, from_config, pipeline_without_transformer,
                         read_config, transformer_place, weight_index)
from compress.io_errors import load_error
from compress.io_atomic import OUTPUT_SHARD
from compress.io_live import register_compression
from compress.output_names import is_output, missing_folder_words, without_refusal
from compress.io_fused import without_fused_projections
from compress.io_tensors import read_state_dict
from compress.lowrank import LowRankLinear

# the weights save_pretrained writes beside config.json: safetensors, or .bin (safe_serialization=False),
# plain or a variant (variant="fp16"), one file or an index of shards:
# diffusion_pytorch_model.fp16.safetensors, diffusion_pytorch_model.safetensors.index.fp16.json
WEIGHT_FILE = re.compile(r"diffusion_pytorch_model(?:\.(\w+))?\.(safetensors|bin)")  # (variant, format)
INDEX_FILE = re.compile(r"diffusion_pytorch_model\.(safetensors|bin)\.index(?:\.(\w+))?\.json")  # (format, variant)


def output_folder(out) -> Path:
    """`out`, or the folder in it that holds the output's config.json as load_teacher finds a teacher's
    (io.transformer_place): the transformer/ of a pipeline folder (a pipeline's save_pretrained writes
    its compressed transformer there) or of a download of that subfolder alone. Anything else (a file,
    a Hub id, a folder without a config.json) stays `out`, which the caller refuses in its words."""
    out = Path(out).expanduser()
    return (transformer_place(out) if out.is_dir() else None) or out


def hub_output(source, what: str) -> UserError | None:
    """The error for a Hub id (ORG/NAME, not there as a path) given to `what` (load_transformer, lora),
    which take a local output folder: where the Hugging Face cache holds it (io_hub_cache.cached_snapshot,
    as for a teacher), the folder to pass (its snapshot's, or that it is no output); else what the
    cache holds of it and how to download it. None for a path."""
    if not hub_like(source):
        return None
    said = f"{source}: {what} takes a local dit-compress output folder, not a Hub id"
    snapshot, spelt = cached_copy(source)
    if snapshot is None:
        return UserError(f"{not_here(source)}: {what} takes a local dit-compress output folder, not a Hub id; "
                         f"download it first (hf download {source} --local-dir DIR) and give DIR")
    cached = output_folder(snapshot)
    held = f"give {cached}" if is_output(cached) else f"at {cached}, {NO_OUTPUT}"
    return UserError(f"{said}; the Hugging Face cache holds it{spelt}: {held}")


NO_OUTPUT = "which is no dit-compress output (its config.json has no compression section)"


def cached_output(source: str, what: str) -> Path | None:
    """For a command that reads an output (`what`: inspect, bench, eval) given a Hub id (ORG/NAME, not there
    as a path): the Hugging Face cache's snapshot of it (io_hub_cache.cached_snapshot, as for a teacher),
    where that is a dit-compress output; else a UserError saying what `what` reads and how to
    download it. None for a path (but for ORG/NAME whose ORG is a folder here, which missing_output let through:
    the cache holds it)."""
    from compress.output_names import owner_is_a_folder

    if not hub_like(source) and not owner_is_a_folder(source):
        return None
    snapshot, spelt = cached_copy(source)
    if snapshot is None:
        raise UserError(f"{not_here(source)}: {what} reads a local output folder or the cache's copy of a Hub id; "
                        f"download it (hf download {source}) and give {source} again, or give a local folder")
    if not is_output(output_folder(snapshot)):
        raise UserError(f"{source}: the Hugging Face cache holds it{spelt} at {output_folder(snapshot)}, {NO_OUTPUT}")
    READ_FOR[Path(os.path.abspath(snapshot))] = source
    return snapshot


# the cache's snapshots `cached_output` gave a command -> the Hub id it was given: what load_transformer
# says of their files names them by it (`shown`), as the command's other lines do
READ_FOR: dict[Path, str] = {}


def shown(path: Path) -> str:
    """`path` as load_transformer's warnings and errors name it: a file of a Hub output a command reads
    from the cache (`cached_output`: a note has named the snapshot) by the id the user gave and its
    place there ("acme/out's diffusion_pytorch_model.safetensors"), anything else as it is."""
    at = Path(os.path.abspath(path))  # not resolved: the cache's snapshot files link to its blobs
    for snapshot, source in READ_FOR.items():
        if at == snapshot or snapshot in at.parents:
            return source if at == snapshot else f"{source}'s {at.relative_to(snapshot)}"
    return str(path)


def hub_like(source) -> bool:
    """Whether `source` reads as a Hub id (io_source.looks_local), not a toy."""
    from compress.io_source import looks_local

    return isinstance(source, str) and not looks_local(source) and not source.startswith("toy:")


def cached_copy(source: str) -> tuple[Path | None, str]:
    """(the Hugging Face cache's snapshot of the Hub id `source`, or of the same id spelt in other
    letters, the one the cache holds; ' (spelt ORG/NAME)' where it is that one, else '')."""
    from compress.io_hub import id_problem
    from compress.io_hub_cache import cache_folder, cached_snapshot, spelt_otherwise

    snapshot = cached_snapshot(source)
    other = spelt_otherwise(cache_folder(source)) if snapshot is None and id_problem(source) is None else None
    if other is not None and (snapshot := cached_snapshot(other)) is not None:  # the cache's spelling: its folder
        return snapshot, f" (spelt {other})"
    return snapshot, ""


def not_here(source: str) -> str:
    """'SOURCE: no such output folder, and the Hugging Face cache DIR holds no copy of it' (or what it
    holds of it: other revisions' snapshots, other spellings), for a Hub id (ORG/NAME) it has no snapshot of."""
    from compress.io_hub import hub_cache
    from compress.io_hub_cache import uncached

    return f"{source}: no such output folder, and the Hugging Face cache {hub_cache()} holds {uncached(source)}"


def weight_files(out, variant: str | None = None) -> list[Path]:
    """The weight files of an output folder: one file, or the shards its index lists. `variant`
    ('fp16', as save_pretrained's variant=): that variant's, a UserError naming those there where it
    is missing; else the plain weights where there are any, else the one variant there is (two
    variants: a UserError naming them and variant=)."""
    out = Path(out).expanduser()
    entries = weight_entries(out) if out.is_dir() else {}
    if variant is not None:
        entry = entries.get(variant)
        if entry is None and entries:
            held = ", ".join(sorted(v or "plain" for v in entries))
            raise UserError(f"{out} holds no weight variant {variant!r} (it holds: {held})")
    elif None not in entries and len(entries) > 1:
        raise UserError(f"{out} holds the weight variants {', '.join(sorted(entries))} and no plain "
                        f"{WEIGHTS}; pass variant= one of them")
    else:
        entry = entries.get(None) or next(iter(entries.values()), None)
    if entry is None:
        raise no_weights(out)
    if not entry.name.endswith(".json"):
        return [entry]
    shards = sorted(set(weight_index(entry).values()))
    missing = [s for s in shards if not (out / s).is_file()]
    if missing or not shards:
        raise UserError(f"{entry} lists missing shards: {', '.join(missing[:3]) or 'none listed'}")
    return [out / s for s in shards]


def weight_entries(out: Path) -> dict[str | None, Path]:
    """Per variant (None: the plain weights) the file its weights are read from, the first of: a
    safetensors index, a safetensors file (as diffusers, safetensors before .bin), a .bin index, a .bin file."""
    ranked = {}
    for f in out.iterdir():
        if m := INDEX_FILE.fullmatch(f.name):
            (kind, variant), index = m.groups(), True
        elif m := WEIGHT_FILE.fullmatch(f.name):
            (variant, kind), index = m.groups(), False
        else:
            continue
        rank = (kind != "safetensors", not index)
        if f.is_file() and (variant not in ranked or rank < ranked[variant][0]):
            ranked[variant] = (rank, f)
    return {variant: f for variant, (_, f) in ranked.items()}


def no_weights(out: Path) -> UserError:
    """The error for an output folder without weight files: what it lacks, and what it holds instead."""
    shards = sorted(p.name for p in out.glob("*.safetensors") if OUTPUT_SHARD.fullmatch(p.name))
    if shards:
        return UserError(f"{out / INDEX} is missing: the output's weights are in {len(shards)} shards "
                         f"({shards[0]} …) and the index says which tensor is in which; copy the output again")
    if not (out / "config.json").is_file():
        return UserError(f"{out} is not a dit-compress output folder (needs config.json and {WEIGHTS} or {INDEX})")
    held = sorted(p.name for p in out.iterdir() if p.name != "config.json")
    listed = ", ".join(held[:4]) + (" …" if len(held) > 4 else "") if held else "nothing else"
    return UserError(f"{out} has config.json but no weights: no {WEIGHTS}, {INDEX} or a variant or .bin "
                     f"of them (the folder holds {listed})")


def empty_compressed(out) -> nn.Module:
    """The model of an output folder on the meta device: the diffusers class with LowRankLinear
    (down, up) at every rank of its compression section; no weights. A pipeline folder: its transformer/."""
    out = output_folder(out)
    if (refused := pipeline_without_transformer(out)) is not None:  # as load_teacher says it
        raise refused
    if not (out / "config.json").is_file():
        raise UserError(f"{out} is not a dit-compress output folder (needs config.json and {WEIGHTS} or {INDEX})")
    config = read_config(out / "config.json")
    if "compression" not in config:
        raise UserError(f"{out} is a plain diffusers model, not a dit-compress output (its config.json "
                        "has no compression section)")
    compression = config.pop("compression")
    config = without_refusal(config)  # (from_config would ignore it; register_compression gives it the model's)
    if isinstance(compression, dict):
        check_format(compression.get("format", FORMAT), out)
    ranks = compression.get("ranks", {}) if isinstance(compression, dict) else None
    if not isinstance(ranks, dict):
        raise UserError(f"{out / 'config.json'}: compression.ranks must map layer names to ranks")
    cls = config_model_class(config, out / "config.json")
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = from_config(cls, config, out / "config.json")
        for name, rank in ranks.items():
            _swap_lowrank(model, name, rank, out)
    model.compression_meta = {k: v for k, v in compression.items() if k not in ("format", "ranks", "dtype")}
    if model.compression_meta.get("block_map") and "teacher_blocks" not in model.compression_meta:
        from compress.report_teacher import reported_blocks

        if (before := reported_blocks(out)):  # an output written before config.json recorded it: its report's
            model.compression_meta["teacher_blocks"] = before
    return model


def check_format(found, out: Path) -> None:
    """The output format an output's config.json records (compression.format) must be one this
    dit-compress reads: 1 to FORMAT (every format so far; a missing one is read as the current)."""
    if type(found) is not int or found < 1:
        raise UserError(f"{out / 'config.json'}: compression.format must be a format number "
                        f"(this dit-compress reads 1 to {FORMAT}), got {found!r}")
    if found > FORMAT:
        raise UserError(f"{out} was written by a newer dit-compress (format {found}; this one reads up "
                        f"to {FORMAT}): upgrade dit-compress")


def as_dtype(dtype, what: str = "load_transformer") -> torch.dtype | None:
    """A floating torch dtype, or one of its names as diffusers takes them ('float16'); None stays None."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    name = dtype.removeprefix("torch.") if isinstance(dtype, str) else None
    if name in DTYPES:
        return DTYPES[name]
    raise UserError(f"{what}: dtype must be a floating torch dtype or one of {', '.join(map(repr, DTYPES))}, "
                    f"got {dtype!r}")


def available_devices() -> list[str]:
    """The devices torch can place a model on here: cpu, then each CUDA GPU (cuda:N), then mps."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


def as_device(device, what: str = "load_transformer") -> torch.device:
    """`device` (default cpu) as a torch.device; a one-line UserError naming it and the devices there
    are where it is no device, or a CUDA / MPS device this machine lacks (torch lists every device
    type it knows, or fails with an AssertionError); other accelerators are left to torch."""
    here = available_devices()
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise UserError(f"{what}: device {device!r} is not a torch device; this machine has "
                        f"{', '.join(here)}") from None
    name = dev.type if dev.type == "mps" else f"cuda:{dev.index or 0}"
    if dev.type in ("cuda", "mps") and name not in here:  # other types (xpu, hpu, ...): .to() says
        raise UserError(f"{what}: device {device!r} is not on this machine (torch {torch.__version__}); it has "
                        f"{', '.join(here)}")
    return dev


def one_dtype(dtype, torch_dtype, what: str = "load_transformer") -> torch.dtype | None:
    """`dtype`, or diffusers' name for it `torch_dtype`, as a torch dtype; both given and different:
    a UserError (one of them was silently ignored)."""
    dtype, torch_dtype = as_dtype(dtype, what), as_dtype(torch_dtype, what)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise UserError(f"{what}: dtype={str(dtype).removeprefix('torch.')} and torch_dtype="
                        f"{str(torch_dtype).removeprefix('torch.')} disagree; pass one of them")
    return dtype or torch_dtype


def one_device(device, device_map, what: str = "load_transformer"):
    """The device to load on from `device` or diffusers' `device_map` where that names one device (a
    device, 'cpu', 'cuda:0', an index, or {"": device}): the whole model goes there. A map that
    spreads it ('auto', 'balanced', per module) is a UserError: an output loads whole on one device."""
    if device_map is None:
        return device
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, (dict, bool)) or device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise UserError(f"{what}: device_map={device_map!r} is not supported: an output loads whole on one "
                        "device; pass device= (or device_map=) a single device such as 'cpu' or 'cuda:0'")
    device_map = f"cuda:{device_map}" if isinstance(device_map, int) else device_map
    if device is not None and _same_place(as_device(device, what)) != _same_place(as_device(device_map, what)):
        raise UserError(f"{what}: device={device!r} and device_map={device_map!r} disagree; pass one of them")
    return device_map


def _same_place(dev: torch.device) -> tuple[str, int]:
    """A device as where tensors go: 'cuda' is cuda:0, 'cpu:0' is cpu (torch.device compares them unequal)."""
    return dev.type, 0 if dev.type == "cpu" else (dev.index or 0)


def load_transformer(out, dtype: torch.dtype | None = None, device: str | None = None,
                     torch_dtype: torch.dtype | None = None, nonfinite: str = "error", variant: str | None = None,
                     device_map=None, low_cpu_mem_usage: bool | None = None,
                     subfolder: str | None = None) -> nn.Module:
    """The ordinary diffusers class, with LowRankLinear where factorized; bit-identical to the
    model that was saved (same dtype unless `dtype`, or diffusers' `torch_dtype`, is given: a torch
    dtype or its name, 'float16'), on `device` (default cpu; one this machine has). One weight file
    or index shards, safetensors or .bin, plain or one variant (as save_pretrained writes them); a
    pipeline folder's transformer/; an output written in a newer format than FORMAT is refused.
    `model.compression_meta` keeps what the run recorded (teacher, block map), so saving the model
    again keeps it. A NaN/Inf in a weight is a NumericError naming
    the tensor and its file (`nonfinite="warn"`: a warning, for looking at a damaged output); a
    finite one `dtype` cannot hold (float16 stops at 65504), a UserError naming it: never Inf from the cast;
    loaded in float16 (given or stored) where report.json's export.activation_max records an activation
    beyond its range, a warning naming it (activation_range.loaded_range_words: a forward gives inf/NaN).
    As diffusers' from_pretrained: `variant` picks a weight variant ('fp16'); `device_map` may name
    one device (as `device`; 'auto' or a per-module map: a UserError); `low_cpu_mem_usage` is
    accepted and changes nothing: the model is always built empty and takes the file's tensors;
    `subfolder` is a folder in `out` to read (a pipeline folder's is found without it)."""
    if nonfinite not in ("error", "warn"):
        raise ValueError(f"load_transformer: nonfinite must be 'error' or 'warn', got {nonfinite!r}")
    if low_cpu_mem_usage not in (None, True, False):
        raise UserError(f"load_transformer: low_cpu_mem_usage must be True or False, got {low_cpu_mem_usage!r}")
    dtype = one_dtype(dtype, torch_dtype)
    device = as_device(one_device(device, device_map))
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"load_transformer: out must be the output folder (a str or a path), got {out!r}")
    if subfolder:  # as diffusers' from_pretrained(dir, subfolder="transformer")
        out = os.path.join(out, subfolder)
    missing = missing_folder(out)
    hub = missing or hub_output(out, "load_transformer")
    if hub is not None:
        raise hub
    given, out = out, output_folder(out)
    model = empty_compressed(out)  # first: the format it was written in is checked before its files
    files = weight_files(out, variant)
    sd = {}
    for f in files:
        tensors = read_state_dict(f)
        check_finite_file(shown(f), tensors, warn=nonfinite == "warn")
        if dtype is not None:  # before the cast, which would make them Inf
            check_castable(shown(f), tensors, dtype)
        sd.update(tensors)
    where = shown(files[0] if len(files) == 1 else out)
    sd = without_fused_projections(model, sd, where)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise UserError(f"{where} does not match its config.json: {load_error(e)}") from None
    fuse_gelu(model)  # the FFN's tanh-GELU runs inside the factorized layer (kernel epilogue)
    register_compression(model)
    if dtype is not None:
        model = cast(model, dtype)
    if device.type != "meta" and any(p.is_meta for p in model.parameters()):  # (torch's .to: a traceback)
        raise UserError("load_transformer: the weights were put on the meta device as they were taken (accelerate's "
                        "init_empty_weights around the call?); load_transformer builds the model empty itself: call "
                        "it outside, or pass device='meta' for a model without weights")
    warn_loaded_range(given, out, model.dtype)  # float16: activations its run recorded beyond 65504
    return model.to(device).eval()


def missing_folder(out) -> UserError | None:
    """A local path `out` that is not there, said as the commands that read an output say it
    (output_names.missing_folder_words: no such folder, the name meant); a pathlib.Path is always local.
    None where it is there, or reads as a Hub id (`hub_output`)."""
    said = missing_folder_words(out)
    return None if said is None else UserError(said)


def _swap_lowrank(model: nn.Module, name: str, rank, out: Path) -> None:
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise UserError(f"{out / 'config.json'}: compression.ranks names '{name}', which the model "
                        "does not have") from None
    if not isinstance(old, nn.Linear) or type(rank) is not int or not 0 < rank <= min(old.in_features,
                                                                                      old.out_features):
        raise UserError(f"{out / 'config.json'}: compression.ranks gives '{name}' rank {rank!r}; "
                        "expected a positive integer rank of a linear layer")
    model.set_submodule(name, LowRankLinear(old.in_features, old.out_features, rank,
                                            bias=old.bias is not None))


