"""Block weights streamed from a diffusers checkpoint, for models bigger than memory (issue 8).

`empty_transformer(folder)` builds the checkpoint's transformer class on the meta device (no
weights); `CheckpointBlocks(model, folder, spill)` is the svd pass's `BlockLoader` for it:
- `load_top()` reads every tensor outside the blocks once (embedders, modulation, output head);
- `materialize(group, index, block)` reads one block's tensors when the calibration reaches it;
- `release(group, index, block)` writes the block as the pass left it (factors included) to
  `spill/<group>-<index>.safetensors` and sends its memory back to meta.
So only the top level and one block are resident at a time. The checkpoint is one
`diffusion_pytorch_model.safetensors` or the shards its `.index.json` lists (as `save_pretrained`
writes them), with diffusers key names.

    model = empty_transformer(folder, torch.bfloat16)
    loader = CheckpointBlocks(model, folder, spill)
    loader.load_top()
    SVDPass(SVDConfig(fisher="block"), loader).run(model, ctx)  # the prediction's Fisher needs it all
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
from compress.io import WEIGHTS, cast, model_class, read_json

INDEX = WEIGHTS + ".index.json"


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        return {k: folder / f for k, f in index["weight_map"].items()}
    if (folder / WEIGHTS).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            return dict.fromkeys(f.keys(), folder / WEIGHTS)
    raise UserError(f"{folder} has neither {WEIGHTS} nor {INDEX}: not a diffusers checkpoint to stream")


def empty_transformer(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The transformer of folder/config.json on the meta device, parameters in `dtype`."""
    from accelerate import init_empty_weights

    config = read_json(Path(folder) / "config.json")
    cls = model_class(config.get("_class_name", "<missing _class_name>"))
    with init_empty_weights():
        model = cls.from_config(config)
    return cast(model, dtype)


class CheckpointBlocks:
    """A `BlockLoader` (compress.calib) reading a diffusers checkpoint block by block."""

    resident = False  # whole-model work (the prediction's Fisher, global's sensitivities) is refused

    def __init__(self, model: nn.Module, folder: Path, spill: Path, device: str | torch.device = "cpu"):
        from compress.arch import get_adapter

        self.model, self.adapter, self.device = model, get_adapter(model), device
        self.files = weight_map(folder)
        self.spill = Path(spill)
        self.spill.mkdir(parents=True, exist_ok=True)
        self.dtype = next(model.parameters()).dtype

    def _prefix(self, group: str, index: int) -> str:
        return self.adapter.block_prefix(group, index)

    def _load(self, keys: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device
        from safetensors import safe_open

        by_file = defaultdict(list)
        for k in keys:
            by_file[self.files[k]].append(k)
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for k in names:
                    t = f.get_tensor(k)
                    set_module_tensor_to_device(self.model, k, self.device,
                                                value=t.to(self.dtype) if t.is_floating_point() else t)

    def load_top(self) -> None:
        blocks = tuple(self._prefix(g, i) for g, i, _ in self.adapter.iter_blocks(self.model))
        self._load([k for k in self.files if not k.startswith(blocks)])

    def materialize(self, group: str, index: int, block: nn.Module) -> None:
        prefix = self._prefix(group, index)
        keys = [k for k in self.files if k.startswith(prefix)]
        if not keys:
            raise UserError(f"the checkpoint has no tensors for {prefix[:-1]}")
        self._load(keys)

    def release(self, group: str, index: int, block: nn.Module) -> None:
        from safetensors.torch import save_file

        prefix = self._prefix(group, index)
        state = {prefix + k: v.detach().contiguous() for k, v in block.state_dict().items()}
        save_file(state, str(self.spilled(group, index)))
        block.to("meta")

    def spilled(self, group: str, index: int) -> Path:
        """Where `release` wrote the block."""
        return self.spill / f"{group}-{index}.safetensors"
