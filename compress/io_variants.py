"""The weight files of a transformer folder (a teacher's, an output's, a Hub repo's file list): the
variant a folder holds alone (`weights_variant`, `variant_of`: diffusion_pytorch_model.fp16.safetensors,
its shards and index, .bin alike), the files from_pretrained reads of it (`variant_weights`), the dtype
they are stored in from their headers (`stored_dtype`, `safetensors_dtypes`), and the note on an index of
diffusers' older name (`older_index_note`). Moved from compress/io.py, which loads the teacher they hold."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from compress.errors import UserError
from compress.io_tensors import read_state_dict, unreadable

# diffusion_pytorch_model.fp16.safetensors, its shards (...fp16-00001-of-00002.safetensors as diffusers' save_pretrained
# names them, ...-00001-of-00002.fp16.safetensors as older ones did) and their index (...safetensors.index.fp16.json,
# older ...safetensors.fp16.index.json, which diffusers still reads); .bin alike (EXT). The variant: the group matched
VARIANT_FILE = (r"diffusion_pytorch_model(?:(?:-\d+-of-\d+)?\.(\w+)(?:-\d+-of-\d+)?\.EXT"
                r"|\.EXT(?:\.index\.(\w+)|\.(\w+)\.index)\.json)")


def weights_variant(path: Path) -> str | None:
    """None for the plain weight files, else the variant (`fp16` of
    diffusion_pytorch_model.fp16.safetensors) of a folder that holds only one variant's files."""
    return variant_of([f.name for f in path.iterdir()], path)


def variant_of(names: list[str], where) -> str | None:
    """weights_variant of the file names in a folder (`where`, a local folder or a Hub repo's), as
    variant_weights ranks them: safetensors first (plain, else one variant's), then .bin alike."""
    for ext in ("safetensors", "bin"):
        if f"diffusion_pytorch_model.{ext}" in names or f"diffusion_pytorch_model.{ext}.index.json" in names:
            return None
        pattern = VARIANT_FILE.replace("EXT", ext)
        found = sorted({m[1] or m[2] or m[3] for f in names if (m := re.fullmatch(pattern, f))})
        if len(found) > 1:
            raise UserError(f"{where} holds the weight variants {', '.join(found)} and no plain "
                            f"diffusion_pytorch_model.{ext}; keep the one to compress")
        if found:
            return found[0]
    return None


def variant_weights(names: list[str], variant: str | None) -> list[str]:
    """The weight files (single, or an index and its shards) of `variant` among `names`, as
    from_pretrained picks them: safetensors, else .bin."""
    v = re.escape(f".{variant}") if variant else ""
    shard = r"-\d+-of-\d+"  # before the variant's name (diffusers' save_pretrained) or after it
    for ext in ("safetensors", "bin"):
        index = [n for n in names if re.fullmatch(rf"diffusion_pytorch_model\.{ext}(?:\.index{v}|{v}\.index)\.json", n)]
        if index:  # from_pretrained reads the index and its shards, not a single file beside them
            return sorted(index + [n for n in names if re.fullmatch(
                rf"diffusion_pytorch_model(?:{shard}{v}|{v}{shard})\.{ext}", n)])
        single = [n for n in names if n == f"diffusion_pytorch_model{'.' + variant if variant else ''}.{ext}"]
        if single:
            return single
    return []


TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored_dtype(path: Path, variant: str | None, dtypes_of=None) -> torch.dtype:
    """The dtype a transformer folder's weights are stored in (from the safetensors headers, or the
    tensors of .bin files mapped, not read): the one of its floating tensors; where they mix dtypes,
    one that holds each exactly (float32, float64 with float64 ones); float32 where the folder holds
    no weights (from_pretrained says so). `dtypes_of`: a safetensors file -> its dtype names
    (safetensors_dtypes, or the names read already)."""
    dtypes_of = dtypes_of or safetensors_dtypes
    files = [path / n for n in variant_weights([f.name for f in path.iterdir()], variant)]
    found: set[torch.dtype] = set()
    for f in files:
        if f.name.endswith(".json"):
            continue
        if f.suffix == ".safetensors":
            found |= {TORCH_DTYPES.get(t) for t in dtypes_of(f) if t.startswith(("F", "BF"))}
        else:
            found |= {t.dtype for t in read_state_dict(f, mmap=True).values() if t.is_floating_point()}
    if len(found) == 1 and None not in found:
        return found.pop()
    return torch.float64 if torch.float64 in found else torch.float32


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes ('F16', 'BF16', ...) of a safetensors file's tensors, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


# diffusers' older name of a variant's index, NAME.EXT.fp16.index.json (now NAME.EXT.index.fp16.json)
OLDER_INDEX = r"diffusion_pytorch_model\.(?:safetensors|bin)\.\w+\.index\.json"


def older_index_note(path: Path, files: list[str], variant: str | None) -> None:
    """A note where the variant's index `files` read is of diffusers' older name (NAME.EXT.fp16.index.json,
    which its from_pretrained reads with a FutureWarning, silenced in io._load_folder)."""
    older = next((f for f in files if re.fullmatch(OLDER_INDEX, f)), None)
    if older is not None:
        from compress.report import note

        ext = older.split(".")[1]
        note(f"{path} indexes its {variant} weights by diffusers' older name ({older}, now "
             f"diffusion_pytorch_model.{ext}.index.{variant}.json), which diffusers will stop reading in its 1.0: "
             f"read as it is (save_pretrained(variant={variant!r}) of the loaded model writes the current names)")
