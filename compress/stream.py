"""Block weights streamed from a diffusers checkpoint, for models bigger than memory (issue 8).

`empty_transformer(folder)` builds the checkpoint's transformer class on the meta device (no
weights); `CheckpointBlocks(model, folder, spill)` is the svd pass's `BlockLoader` for it:
- `load_top()` reads every tensor outside the blocks once (embedders, modulation, output head);
- `materialize(group, index, block)` reads one block's tensors when the calibration reaches it;
- `release(group, index, block)` writes the block as the pass left it (factors included) to
  `spill/<group>-<index>.safetensors`, points later reads of that block there, and sends its
  memory back to meta (`unload`). A loader without `spill` only unloads (a read-only teacher).
So only the top level and one block are resident at a time. The checkpoint is one
`diffusion_pytorch_model.safetensors` or the shards its `.index.json` lists (as `save_pretrained`
writes them), with diffusers key names; `checkpoint_of(source)` finds them for a teacher source.
`streamed(model, loader)` runs whole-model forwards (sampling, held-out predictions) with each
block read just before it runs; `save_streamed` writes the output folder as index shards, one block
per shard, never holding more than one block.

    model = empty_transformer(folder, torch.bfloat16)
    loader = CheckpointBlocks(model, folder, spill)
    loader.load_top()
    SVDPass(SVDConfig(fisher="block"), loader).run(model, ctx)  # the prediction's Fisher needs it all
    save_streamed(model, loader, out)
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from compress.errors import NumericError, UserError
from compress.io import (INDEX, WEIGHTS, atomic_folder, canonical_header, cast, compressed_config,
                         header_metadata, model_class, read_json, write_texts)


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        index = read_json(folder / INDEX)
        return {k: folder / f for k, f in index["weight_map"].items()}
    if (folder / WEIGHTS).is_file():
        return file_map(folder / WEIGHTS)
    raise UserError(f"{folder} has neither {WEIGHTS} nor {INDEX}: not a diffusers checkpoint to stream")


def file_map(path: Path) -> dict[str, Path]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict.fromkeys(f.keys(), Path(path))


def checkpoint_of(source: str) -> tuple[dict, dict[str, Path]]:
    """(diffusers config, tensor name -> file) of a teacher source that can be streamed: a toy
    teacher, a local transformer or pipeline folder, or a Hugging Face id (its transformer/
    folder, downloaded once)."""
    if source.startswith("toy:"):
        from compress.toy.weights import toy_files

        config_path, weights = toy_files(source[4:])
        return read_json(config_path), file_map(weights)
    path = Path(source).expanduser()
    if not path.exists() and not source.startswith((".", "/", "~")) and source.count("/") == 1:
        path = _download(source)
    if not path.is_dir():
        raise UserError(f"stream: true reads a diffusers folder (a pipeline's transformer/ or a "
                        f"transformer saved with save_pretrained), a toy teacher or a Hugging Face id; "
                        f"{source} is {'a single file' if path.is_file() else 'not found'}")
    if (path / "model_index.json").is_file():
        path = path / "transformer"
    if (path / "config.json").is_file() and "compression" in read_json(path / "config.json"):
        raise UserError(f"{path} is a dit-compress output; stream a teacher checkpoint")
    return read_json(path / "config.json"), weight_map(path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["model_index.json", "transformer/*"]))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({type(e).__name__}); "
                        "pass a local folder, or check the id and your network") from None


def empty_transformer(folder_or_config: Path | dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The transformer of a config (or folder/config.json) on the meta device, parameters in `dtype`."""
    from accelerate import init_empty_weights

    config = folder_or_config if isinstance(folder_or_config, dict) else \
        read_json(Path(folder_or_config) / "config.json")
    cls = model_class(config.get("_class_name", "<missing _class_name>"))
    with init_empty_weights():
        model = cls.from_config(config)
    return cast(model, dtype)


class CheckpointBlocks:
    """A `BlockLoader` (compress.calib) reading a diffusers checkpoint block by block."""

    resident = False  # whole-model work (the prediction's Fisher, global's sensitivities) is refused

    def __init__(self, model: nn.Module, files: Path | dict[str, Path], spill: Path | None = None,
                 device: str | torch.device = "cpu"):
        from compress.arch import get_adapter

        self.model, self.adapter, self.device = model, get_adapter(model), device
        self.files = dict(files) if isinstance(files, dict) else weight_map(files)
        self.spill = Path(spill) if spill is not None else None
        if self.spill is not None:
            self.spill.mkdir(parents=True, exist_ok=True)
        self.dtype = next(model.parameters()).dtype

    def _prefix(self, group: str, index: int) -> str:
        return self.adapter.block_prefix(group, index)

    def _blocks(self) -> tuple[str, ...]:
        return tuple(self._prefix(g, i) for g, i, _ in self.adapter.iter_blocks(self.model))

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Tensors by name from their files, in the loader's dtype; NaN/Inf is an error naming them."""
        from safetensors import safe_open

        by_file, out = defaultdict(list), {}
        for k in keys:
            by_file[self.files[k]].append(k)
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for k in names:
                    t = f.get_tensor(k)
                    if t.is_floating_point():
                        if not torch.isfinite(t).all():
                            raise NumericError(f"weight {k} in {path} has "
                                               f"{(~torch.isfinite(t)).sum().item()} NaN/Inf values")
                        t = t.to(self.dtype)
                    out[k] = t
        return out

    def _load(self, keys: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for k, t in self.read(keys).items():
            set_module_tensor_to_device(self.model, k, self.device, value=t)

    def load_top(self) -> None:
        self._load(self.top_keys())

    def top_keys(self) -> list[str]:
        blocks = self._blocks()
        return [k for k in self.files if not k.startswith(blocks)]

    def block_keys(self, group: str, index: int) -> list[str]:
        prefix = self._prefix(group, index)
        keys = [k for k in self.files if k.startswith(prefix)]
        if not keys:
            raise UserError(f"the checkpoint has no tensors for {prefix[:-1]}")
        return keys

    def materialize(self, group: str, index: int, block: nn.Module) -> None:
        self._load(self.block_keys(group, index))

    def release(self, group: str, index: int, block: nn.Module) -> None:
        if self.spill is not None:
            from safetensors.torch import save_file

            prefix, path = self._prefix(group, index), self.spilled(group, index)
            state = {prefix + k: v.detach().contiguous() for k, v in block.state_dict().items()}
            save_file(state, str(path))
            self.files = {k: f for k, f in self.files.items() if not k.startswith(prefix)}
            self.files.update(dict.fromkeys(state, path))
        self.unload(group, index, block)

    def unload(self, group: str, index: int, block: nn.Module) -> None:
        block.to("meta")

    def spilled(self, group: str, index: int) -> Path:
        """Where `release` wrote the block."""
        return self.spill / f"{group}-{index}.safetensors"


@contextmanager
def streamed(model: nn.Module, loader: CheckpointBlocks):
    """Whole-model forwards with each block read just before it runs and unloaded once another
    block starts or the context ends (so a forward stopped by an exception leaks nothing)."""
    adapter, live, handles = loader.adapter, [], []

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
                  overwrite: bool = False) -> Path:
    """The output folder of `save_compressed` for a streamed model, atomically: the top level
    (resident) in the first shard, then one shard per block read from `loader`, and the
    `.index.json` that `load_transformer` and diffusers' `from_pretrained` read."""
    from safetensors.torch import save_file

    adapter = loader.adapter
    blocks = [(g, i) for g, i, _ in adapter.iter_blocks(model)]
    n = len(blocks) + 1
    config = compressed_config(model, extra, dtype)
    meta = header_metadata(config)

    def cast_all(state: dict) -> dict:
        return {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().contiguous()
                for k, v in state.items()}

    with atomic_folder(out, overwrite) as tmp:
        weight_map, total = {}, 0
        prefixes = loader._blocks()
        top = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
        parts = [lambda: top] + [lambda g=g, i=i: loader.read(loader.block_keys(g, i)) for g, i in blocks]
        for j, part in enumerate(parts, start=1):
            state = cast_all(part())
            if any(v.device.type == "meta" for v in state.values()):
                raise RuntimeError("save_streamed: the top level has tensors on meta (load_top first)")
            name = shard_name(j, n)
            save_file(state, str(tmp / name), metadata=meta)
            canonical_header(tmp / name)
            weight_map.update(dict.fromkeys(state, name))
            total += sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        write_texts(tmp, config, files)
    return Path(out)
