"""Block weights streamed from a diffusers checkpoint, for models bigger than memory (issue 8).

`empty_transformer(folder)` builds the checkpoint's transformer class on the meta device (no
weights); `CheckpointBlocks(model, folder, spill)` is the svd pass's `BlockLoader` for it:
- `load_top()` reads every tensor outside the blocks once (embedders, modulation, output head);
- `materialize(group, index, block)` reads one block's tensors when the calibration reaches it;
- `release(group, index, block)` writes the block as the pass left it (factors included) to
  `spill/<group>-<index>-<part>.safetensors`, points later reads of that block there, and sends its
  memory back to meta (`unload`). A loader without `spill` only unloads (a read-only teacher).
So only the top level and one block are resident at a time. The checkpoint is one
`diffusion_pytorch_model.safetensors` or the shards its `.index.json` lists (as `save_pretrained`
writes them), with diffusers key names; `stream_files.checkpoint_of(source)` finds them for a
teacher source.
`streamed(model, loader)` runs whole-model forwards (sampling, held-out predictions) with each
block read just before it runs; `save_streamed` writes the output folder as index shards (no shard
spans two blocks), never holding more than one shard.

    model = empty_transformer(folder, torch.bfloat16)
    loader = CheckpointBlocks(model, folder, spill)
    loader.load_top()
    SVDPass(SVDConfig(fisher="block"), loader).run(model, ctx)  # the prediction's Fisher needs it all
    save_streamed(model, loader, out)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from compress.errors import NumericError, UserError
from compress.interrupts import interrupts_held
from compress.io import INDEX, cast, config_model_class, from_config, read_config
from compress.io_atomic import CLI_OVERWRITE, atomic_folder
from compress.io_export import canonical_header, compressed_config, export_cast, header_metadata, write_texts
from compress.dtype_range import compute_beyond_words, largest_beyond
from compress.io_tensors import nonfinite
from compress.stream_files import by_file, opened, tensor_ends, weight_map


def empty_transformer(folder_or_config: Path | dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The transformer of a config (or folder/config.json) on the meta device, parameters in `dtype`."""
    from accelerate import init_empty_weights

    config = folder_or_config if isinstance(folder_or_config, dict) else \
        read_config(Path(folder_or_config) / "config.json")
    cls = config_model_class(config, None if isinstance(folder_or_config, dict) else
                             Path(folder_or_config) / "config.json")
    with init_empty_weights():
        model = from_config(cls, config, folder_or_config if not isinstance(folder_or_config, dict)
                            else "the teacher's config")
    return cast(model, dtype)


class CheckpointBlocks:
    """A `BlockLoader` (compress.calib_store) reading a diffusers checkpoint block by block."""

    resident = False  # whole-model work (the prediction's Fisher, global's sensitivities) is refused

    def __init__(self, model: nn.Module, files: Path | dict[str, Path], spill: Path | None = None,
                 device: str | torch.device = "cpu", stored: dict[str, str] | None = None,
                 what: str = "checkpoint"):
        """`stored`: the names in their files of tensors stored under other names (`renumber`);
        `what`: whose weights the files hold, for errors ("the teacher's weight ...")."""
        from compress.arch import get_adapter

        self.model, self.adapter, self.device, self.what = model, get_adapter(model), device, what
        self.point_to(dict(files) if isinstance(files, dict) else weight_map(files))
        self.stored = dict(stored or {})
        self.spill = Path(spill) if spill is not None else None
        if self.spill is not None:
            self.spill.mkdir(parents=True, exist_ok=True)
        self.dtype = next(model.parameters()).dtype
        lean_heap()

    def point_to(self, files: dict[str, Path]) -> None:
        """Read every tensor from `files` (name -> file) from now on."""
        self.files, self.stored = files, {}  # stored: name -> its name in the file, where they differ

    def renumber(self, keep: dict[str, list[int]]) -> None:
        """After `adapter.remove_blocks` on the model: block i of group g is read from where block
        keep[g][i] was; removed blocks are forgotten."""
        files, stored = {}, {}
        for k, path in self.files.items():
            new = self.adapter.renumbered(k, keep)
            if new is not None:
                files[new], stored[new] = path, self.stored.get(k, k)
        self.files, self.stored = files, {k: v for k, v in stored.items() if k != v}

    def _prefix(self, group: str, index: int) -> str:
        return self.adapter.block_prefix(group, index)

    def block_prefixes(self) -> tuple[str, ...]:
        """The name prefix of every block of the model ('transformer_blocks.0.', ...)."""
        return tuple(self._prefix(g, i) for g, i, _ in self.adapter.iter_blocks(self.model))

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Tensors by name from their files, in the loader's dtype; NaN/Inf, or a finite value the
        dtype cannot hold (float16 stops at 65504), is an error naming the tensor and its file."""
        return dict(self.each(keys))

    def each(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time. Each read opens its file afresh: safetensors maps the file,
        and the pages a read touched count as resident until the mapping closes. A file removed or
        damaged since it was mapped is a UserError naming it (`opened`)."""
        for k in keys:
            path = self.files[k]
            with opened(path, mapped=True) as f, interrupts_held():  # a Ctrl-C (SIGTERM, SIGHUP) in it was a ValueError
                t = f.get_tensor(self.stored.get(k, k))
            if t.is_floating_point():
                self._check_castable(k, path, t)
                t = t.to(self.dtype)
            yield k, t

    def _check_castable(self, name: str, path: Path, t: torch.Tensor) -> None:
        """`t` (the stored `name` of `path`) finite, and held by the loader's dtype: else a
        NumericError, in runner_setup.check_finite's words for a resident teacher."""
        bad = nonfinite(t)
        if bad:
            raise NumericError(f"{self.what} weight {name} in {path} has {bad} NaN/Inf values")
        big = largest_beyond(t, self.dtype)
        if big is not None:
            raise NumericError(compute_beyond_words(self.what, name, path, big, self.dtype))

    def ends(self, keys: list[str], n: int = 8) -> dict[str, torch.Tensor]:
        """`tensor_ends` of the named tensors the loader reads from a file: what
        `calib.model_digest` sees of streamed blocks, so an earlier pass that wrote other values of
        the same shapes gives another digest."""
        return tensor_ends({k: self.files[k] for k in keys if k in self.files}, self.stored, n)

    def _load(self, keys: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for k, t in self.each(keys):
            set_module_tensor_to_device(self.model, k, self.device, value=t)

    def load_top(self) -> None:
        """The tensors outside the blocks, onto the loader's device: those of the checkpoint, and
        the buffers it does not hold (non-persistent: PixArt-Σ's positional embedding), which the
        model built at init on the CPU."""
        from accelerate.utils import set_module_tensor_to_device

        blocks = self.block_prefixes()
        self.check_shapes()
        want = [k for k in self.model.state_dict() if not k.startswith(blocks)]
        self._load(self._matching(want, self.top_keys(), "the top level"))
        for name, buf in list(self.model.named_buffers()):
            if not name.startswith(blocks) and buf.device.type != "meta":
                set_module_tensor_to_device(self.model, name, self.device, value=buf)

    def check_shapes(self) -> None:
        """Every stored tensor the model has has its shape and a floating dtype where the model's is
        floating, from the files' headers (no data read), so a config that does not match the
        weights is a UserError naming a tensor before any block runs, not accelerate's ValueError
        when its block is reached (or an integer tensor silently cast to the model's dtype)."""
        model = self.model.state_dict()
        for path, names in by_file(self.files, [k for k in self.files if k in model]).items():
            with opened(path, mapped=True) as f:
                for k in names:
                    part = f.get_slice(self.stored.get(k, k))
                    shape, want = tuple(part.get_shape()), tuple(model[k].shape)
                    if shape != want:
                        raise UserError(f"{path}: {k} has shape {list(shape)}, the model's config gives "
                                        f"it {list(want)}: the config does not match the weights")
                    if model[k].is_floating_point() and part.get_dtype() not in FLOAT_DTYPES:
                        raise UserError(f"{path}: {k} is stored as {part.get_dtype()}, not as floating "
                                        "point: not a plain diffusers checkpoint (quantized?)")

    def _matching(self, want: list[str], have: list[str], what: str) -> list[str]:
        """`have` if it holds exactly the tensors `want` names, else a UserError naming the difference."""
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            files = sorted({str(self.files[k]) for k in have})[:1] or ["the checkpoint"]
            raise UserError(f"{files[0]} does not match the model's config for {what}: "
                            + "; ".join(f"{n} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                                        for n, keys in (("missing", missing), ("unexpected", extra)) if keys))
        return have

    def top_keys(self) -> list[str]:
        blocks = self.block_prefixes()
        return [k for k in self.files if not k.startswith(blocks)]

    def block_keys(self, group: str, index: int) -> list[str]:
        prefix = self._prefix(group, index)
        keys = [k for k in self.files if k.startswith(prefix)]
        if not keys:
            raise UserError(f"the checkpoint has no tensors for {prefix[:-1]}")
        return keys

    def materialize(self, group: str, index: int, block: nn.Module) -> None:
        prefix = self._prefix(group, index)
        want = [prefix + k for k in block.state_dict()]
        self._load(self._matching(want, self.block_keys(group, index), prefix[:-1]))
        if torch.device(self.device).type != "meta":  # a tensor no checkpoint holds (unload lost it)
            missing = [n for n, t in (*block.named_parameters(), *block.named_buffers()) if t.is_meta]
            if missing:
                raise RuntimeError(f"{prefix}{missing[0]} is not in the checkpoint and cannot be streamed")

    def release(self, group: str, index: int, block: nn.Module) -> None:
        if self.spill is not None:
            prefix = self._prefix(group, index)
            for path in self.spilled(group, index):
                path.unlink()
            state = {prefix + k: v for k, v in block.state_dict().items()}
            self.files = {k: f for k, f in self.files.items() if not k.startswith(prefix)}
            self.stored = {k: v for k, v in self.stored.items() if not k.startswith(prefix)}
            for part, keys in enumerate(pieces(state, SHARD_BYTES)):
                path = self.spill / f"{group}-{index}-{part}.safetensors"
                save_pieces(path, {k: state[k] for k in keys})
                self.files.update(dict.fromkeys(keys, path))
        self.unload(group, index, block)

    def unload(self, group: str, index: int, block: nn.Module) -> None:
        block.to("meta")
        trim_heap()

    def spilled(self, group: str, index: int) -> list[Path]:
        """The files `release` wrote the block to (pieces of at most SHARD_BYTES)."""
        return sorted(self.spill.glob(f"{group}-{index}-*.safetensors"))


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def lean_heap() -> None:
    """Allocations of 1 MiB and more are mapped and unmapped on their own (glibc's mallopt; a no-op
    elsewhere). glibc's adaptive threshold otherwise rises to 32 MiB, a 3072² bf16 weight, and its
    arenas keep the freed weights of every block streamed so far: on full-width Flux the resident
    set then grew with depth (tools/bench_compile.py --via run: 2.11 -> 2.59 GiB for twice the
    blocks). Process-wide; streaming trades some allocation speed for a flat resident set."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 2**20)


M_MMAP_THRESHOLD = -3  # glibc malloc.h


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


# safetensors' names of the floating dtypes (safe_open's get_slice(k).get_dtype())
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
SHARD_BYTES = 256 * 2**20  # safetensors' writer copies a file's tensors into memory: bound that copy


def pieces(state: dict[str, torch.Tensor], limit: int, itemsize: int | None = None) -> list[list[str]]:
    """Consecutive groups of `state`'s keys of at most `limit` bytes each (a bigger tensor alone);
    sizes at `itemsize` bytes per floating element if given (the dtype they will be written in)."""
    groups, size = [[]], 0
    for k, v in state.items():
        n = v.numel() * (itemsize if itemsize and v.is_floating_point() else v.element_size())
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    return [g for g in groups if g]


def save_pieces(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=metadata)


@contextmanager
def streamed(model: nn.Module, loader: CheckpointBlocks, adapter=None):
    """Whole-model forwards with each block read just before it runs and unloaded once another
    block starts or the context ends (so a forward stopped by an exception leaks nothing).
    `loader`: any `BlockLoader` (`adapter`: the model's, where the loader has none)."""
    adapter, live, handles = adapter or loader.adapter, [], []

    def pre_hook(group, index):
        def hook(block, args):
            while live:
                loader.unload(*live.pop())
            loader.materialize(group, index, block)
            live.append((group, index, block))
        return hook

    try:
        for group, index, block in adapter.iter_blocks(model):
            handles.append(block.register_forward_pre_hook(pre_hook(group, index)))
        yield model
    finally:
        for h in handles:
            h.remove()
        while live:
            loader.unload(*live.pop())


def shard_name(i: int, n: int) -> str:
    return f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"


def save_streamed(model: nn.Module, loader: CheckpointBlocks, out, dtype: torch.dtype | None = None,
                  extra: dict | None = None, files: dict[str, str] | None = None,
                  overwrite: bool = False, overwrite_flag: str = CLI_OVERWRITE,
                  on_written: Callable[[Path], None] | None = None) -> Path:
    """The output folder of `save_compressed` for a streamed model, atomically: index shards of at
    most SHARD_BYTES, the top level (resident) first, then each block's tensors read from `loader`
    (a block never shares a shard with another), and the `.index.json` that `load_transformer`
    and diffusers' `from_pretrained` read. At most one shard's tensors are in memory at a time.
    `on_written`: as save_compressed's (called once the folder is in place, one step with its rename)."""
    state = model.state_dict()  # names and shapes; block tensors are on meta
    prefixes = loader.block_prefixes()
    units = [{k: v for k, v in state.items() if not k.startswith(prefixes)}]
    units += [{k: v for k, v in state.items() if k.startswith(p)} for p in prefixes]
    itemsize = dtype.itemsize if dtype else None
    shards = [(unit, keys) for unit in units for keys in pieces(unit, SHARD_BYTES, itemsize)]
    config = compressed_config(model, extra, dtype)
    with atomic_folder(out, overwrite, overwrite_flag, on_written) as tmp:
        weight_map, total = {}, 0
        for j, (unit, keys) in enumerate(_track(shards, f"write {Path(out).name}"), start=1):
            on_meta = [k for k in keys if unit[k].device.type == "meta"]
            tensors = {**{k: unit[k] for k in keys}, **loader.read(on_meta)}
            tensors = {k: export_cast(k, v, dtype) for k, v in tensors.items()}
            name = shard_name(j, len(shards))
            save_pieces(tmp / name, tensors, header_metadata(config))
            canonical_header(tmp / name)
            weight_map.update(dict.fromkeys(tensors, name))
            total += sum(v.numel() * v.element_size() for v in tensors.values())
            del tensors
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        write_texts(tmp, config, files)
    return Path(out)


def _track(items: list, what: str):
    from rich.progress import track

    from compress.progress import drawn
    from compress.report import console

    if not drawn(console):  # rich would leave a blank line in the log (or on a dumb terminal)
        return items
    return track(items, description=what, console=console, transient=True)
