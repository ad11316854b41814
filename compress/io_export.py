"""Compact students out: `save_compressed` writes the output folder of DESIGN.md atomically (a temp
folder beside it, renamed on success: `io_atomic.atomic_folder`), with its config.json (the compression
section: format, ranks, what the run recorded) and byte-identical safetensors headers. Factorized layers are
stored only as `<module>.down.weight` [r, in], `<module>.up.weight` [out, r], `<module>.up.bias`. The pieces
(`export_cast`, `canonical_header` ...) are shared with `stream.save_streamed`; the export dtype's checks
and warnings (`round_to_export`, `warn_if_export_wider`) are here too; `io_output.load_transformer` reads
the folder back."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from compress.errors import NumericError, UserError
from compress.io import FORMAT, WEIGHTS, taken_keys
from compress.io_atomic import API_OVERWRITE, atomic_folder
from compress.io_tensors import nonfinite
from compress.lowrank import LowRankLinear
from compress.output_names import REFUSAL, REFUSAL_KEY, without_refusal


def ranks_of(model: nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def student_config(model: nn.Module, extra: dict | None = None) -> dict:
    own = without_refusal(dict(model.config))  # a loaded output's refusal: written again below where it has factors
    config = {k: v for k, v in taken_keys(type(model), own).items()  # not an older PixArt repo's
              if not k.startswith(("_use_default", "_name_or_path"))}
    config = json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    config["_class_name"] = type(model).__name__
    extra = getattr(model, "compression_meta", None) if extra is None else extra  # a loaded output's
    config["compression"] = {"format": FORMAT, "ranks": ranks_of(model), **(extra or {})}
    if config["compression"]["ranks"]:  # blocks removed alone: plain from_pretrained loads it
        config[REFUSAL_KEY] = dict(REFUSAL)
    return config


def meta_weights(model: nn.Module) -> tuple[list, list[str]]:
    """(name, tensor) of what `model`.state_dict() holds, read without calling it (a state_dict pre-hook asks),
    and the names of those on the meta device."""
    saved = [(f"{at}.{n}" if at else n, t) for at, m in model.named_modules()
             for n, t in [*m._parameters.items(), *m._buffers.items()]
             if t is not None and n not in m._non_persistent_buffers_set]
    return saved, [n for n, t in saved if t.is_meta]


def check_materialized(model: nn.Module, what: str) -> None:
    """A UserError naming the first tensor of `model` on the meta device (one `what`, e.g. save_compressed,
    cannot write): offloaded by accelerate (`offloaded_weights`), or not materialized, as
    load_transformer(out, device='meta') leaves every weight."""
    saved, meta = meta_weights(model)
    if meta:
        offloaded_weights(model, what, meta[0])
        held = "the model holds no weights" if len(meta) == len(saved) else \
            f"{len(meta)} of the model's {len(saved)} weights are not there"  # (R3 stop 51: one swapped for meta)
        raise UserError(f"{what}: {held} ({meta[0]} is on the meta device, not materialized, as "
                        "load_transformer(out, device='meta') leaves them); load it on a real device to save it")


def offloaded_weights(model: nn.Module, what: str, on_meta: str) -> None:
    """A model accelerate offloaded (cpu_offload, disk_offload, dispatch_model: its weights in the hooks' map, meta in
    the model; T4 stop 51): a UserError saying so, and what saves it, not 'load it on a real device' (R1 stop 52:
    save_compressed said that; and not accelerate.utils' get_state_dict_offloaded_model, no import path, whose dict
    load_transformer cannot read). `on_meta`: the first weight on the meta device."""
    if any(hasattr(m, "_hf_hook") for m in model.modules()):  # accelerate's hooks
        raise UserError(f"{what}: the model's weights are offloaded by accelerate ({on_meta} is on the meta device, "
                        "its value in the offload hooks' map): save it before offloading, or once "
                        "accelerate.hooks.remove_hook_from_module(model, recurse=True) has put its weights back (or "
                        "load the output again with compress.load_transformer, without offloading, and save that)")


# what a refusal of a weight beyond the export dtype's range (export_cast) says keeps it, by how the caller's dtype
# is given: a run's recipe key, save_compressed's argument
EXPORT_ADVICE = "export it as bfloat16 or float32 (export.dtype)"
SAVE_ADVICE = "save it as bfloat16 or float32 (dtype=)"


def save_compressed(model: nn.Module, out, dtype: torch.dtype | str | None = None, *, extra: dict | None = None,
                    files: dict[str, str] | None = None, overwrite: bool = False,
                    overwrite_flag: str = API_OVERWRITE, on_written: Callable[[Path], None] | None = None,
                    caller: str = "save_compressed", advice: str = SAVE_ADVICE) -> Path:
    """Write the output folder atomically (temp folder + rename). `dtype`: a floating torch dtype or
    its name ('bfloat16'), as load_transformer takes it; None keeps each tensor's. The rest are keyword-only
    (docs/OUTPUTS.md gives `overwrite=`; a fourth positional argument was `extra`). `files`: extra text
    files. A torch.compile'd model is saved as the model it wraps (`unwrapped`). `overwrite_flag`: how
    the caller gives `overwrite`, as a refusal of an existing `out` names it (the run's --overwrite).
    `on_written`: called with `out` once it is in place, one step with the rename (`atomic_folder`).
    `caller`, `advice`: who asked (a run's export, lora) and what keeps a weight beyond `dtype`'s range, as
    its refusal says them (export_cast)."""
    from compress.io_output import as_dtype  # io_output imports this module

    dtype = as_dtype(dtype, "save_compressed")  # before anything is written
    model = unwrapped(model)
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"save_compressed: model must be a diffusers transformer (its class from diffusers, "
                        f"with a config), got {type(model).__name__}")
    check_materialized(model, "save_compressed")
    out = Path(out).expanduser()
    with atomic_folder(out, overwrite, overwrite_flag, on_written) as tmp:
        config = compressed_config(model, extra, dtype)
        sd = {k: export_cast(k, v, dtype, caller, advice).detach().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS), metadata=header_metadata(config))
        canonical_header(tmp / WEIGHTS)
        write_texts(tmp, config, files)
    return out


def unwrapped(model: nn.Module) -> nn.Module:
    """The model a torch.compile wrapper (OptimizedModule) holds as `_orig_mod`, as diffusers'
    save_pretrained and accelerate's extract_model_from_parallel unwrap it; else `model`. Saved as it
    is, its class and every key would be the wrapper's (`_orig_mod.`…), which nothing loads back."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # imported by torch.compile; none: no wrapper
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


def export_cast(name: str, tensor: torch.Tensor, dtype: torch.dtype | None, caller: str = "export",
                advice: str = EXPORT_ADVICE) -> torch.Tensor:
    """`tensor` in the export dtype; a NumericError naming it where finite values leave that
    dtype's range (float16 stops at 65504), never a file holding inf, in the words of the `caller` that
    asked ('export': a run's; 'save_compressed'; 'lora'), ending with its `advice` (what keeps it: EXPORT_ADVICE
    where the dtype is a recipe's export.dtype, SAVE_ADVICE where it is save_compressed's argument)."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    out = tensor.to(dtype)
    big = beyond_range(tensor, out)
    if big is not None:
        raise NumericError(f"{caller}: {name} holds values up to {big:.3g}, beyond the range of "
                           f"{str(dtype).removeprefix('torch.')} (max {torch.finfo(dtype).max:.3g}); {advice}")
    return out


@torch.no_grad()
def round_to_export(model: nn.Module, dtype: torch.dtype) -> None:
    """`model`'s weights (those it saves) rounded in place to what `save_compressed` writes in `dtype`
    (export_cast: a NumericError where one leaves its range), each held in its own dtype, so that forwards
    compute what the exported model computes once loaded in that dtype (eval's). Weights on meta (streamed
    blocks) are left."""
    for name, tensor in unwrapped(model).state_dict().items():
        if tensor.is_floating_point() and tensor.dtype != dtype and tensor.device.type != "meta":
            tensor.copy_(export_cast(name, tensor, dtype))


def beyond_range(tensor: torch.Tensor, cast: torch.Tensor) -> float | None:
    """The largest magnitude of a finite `tensor` whose `cast` to a narrower dtype overflows, else None
    (also for tensors on meta, which hold no values)."""
    if cast.device.type == "meta" or not nonfinite(cast) or nonfinite(tensor):
        return None
    return float(tensor.detach().abs().max())


def warn_if_beyond_export_range(model: nn.Module, dtype: str) -> None:
    """Before compute, with export.dtype float16: a weight `export_cast` would refuse (beyond
    float16's range) fails the export unless a pass changes it; a warning naming the first one.
    Weights on meta (streamed blocks) are not read."""
    if dtype != "float16":
        return
    for name, p in model.named_parameters():
        big = beyond_range(p, p.detach().to(torch.float16)) if p.is_floating_point() else None
        if big is not None:
            from compress.report import warn

            warn(f"export.dtype float16: the teacher's {name} holds values up to {big:.3g}, beyond float16's "
                 "range (max 65504); the export fails unless a pass changes it (export.dtype: bfloat16 or "
                 "float32 keeps it)")
            return


def compressed_config(model: nn.Module, extra: dict | None, dtype: torch.dtype | None) -> dict:
    config = student_config(model, extra)
    if dtype is not None:
        config["compression"]["dtype"] = str(dtype).removeprefix("torch.")
    return config


def header_metadata(config: dict) -> dict[str, str]:
    """The safetensors header metadata of every weight file: the compression section."""
    return {"format": "pt", "compression": json.dumps(config["compression"], sort_keys=True)}


def write_texts(folder: Path, config: dict, files: dict[str, str] | None) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name, text in (files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, in place (same length), so identical models
    give byte-identical files (safetensors writes its metadata map in hash order)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > n:
            raise RuntimeError(f"cannot canonicalize the header of {path}")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def wider_export_words(export: torch.dtype, stored: torch.dtype | None) -> str | None:
    """Why an export in `export` is larger than the parameter ratio says: the teacher's weights are
    `stored` in a narrower dtype (bfloat16 exported as float32: twice the bytes per parameter); None
    where it is not wider, or the stored dtype is unknown."""
    if stored is None or not stored.is_floating_point or export.itemsize <= stored.itemsize:
        return None
    name, theirs = str(export).removeprefix("torch."), str(stored).removeprefix("torch.")
    return (f"export.dtype is {name}, but the teacher stores its weights in {theirs}: the output's file takes "
            f"{export.itemsize // stored.itemsize}x the bytes per parameter of the teacher's, larger than the "
            f"parameter ratio says (it can exceed the teacher's); set export.dtype: {theirs} (or --set "
            f"export.dtype={theirs}) to store it as the teacher does")


def teacher_stored_dtype(src) -> torch.dtype | None:
    """The dtype a teacher's weights are stored in, from its files' headers alone (io_variants.stored_dtype),
    for `src` (io_source_config.TeacherSource) a folder or a single safetensors file; None for the others
    (a toy, a Hub id, a pickle) and where the files cannot say (mixed dtypes, unreadable: the run's
    own checks say what is wrong). The headers the teacher's checks read (TeacherSource.dtype_names)
    are not read again."""
    from compress.io import transformer_folder
    from compress.io_variants import TORCH_DTYPES, stored_dtype, weights_variant

    path = Path(src.source).expanduser()
    try:
        if src.kind == "folder":
            folder = transformer_folder(path)
            return stored_dtype(folder, weights_variant(folder), src.dtype_names)
        if src.kind == "file" and path.suffix == ".safetensors":
            found = {TORCH_DTYPES.get(t) for t in src.dtype_names(path) if t.startswith(("F", "BF"))}
            return found.pop() if len(found) == 1 and None not in found else None
    except (UserError, OSError):
        return None
    return None


def warn_if_export_wider(recipe, src) -> None:
    """plan's and run's warning, before any compute, of an export.dtype wider than the dtype the
    teacher `src` (io_source_config.TeacherSource) stores its weights in, at the recipe's export.dtype key
    (the recipe, where the default float32 stands)."""
    from compress.recipe_where import recipe_where
    from compress.dtype_range import DTYPES
    from compress.report import warn

    words = wider_export_words(DTYPES[recipe.export.dtype], teacher_stored_dtype(src))
    if words:
        warn(f"{recipe_where(recipe, 'export.dtype', recipe.export.dtype)}: {words}")
