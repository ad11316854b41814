"""Why a teacher's weights did not load, in one line: a folder without the weight files
from_pretrained reads (`no_weights`), shards its index lists and the folder lacks (`missing_shards`),
a cut .bin or a damaged .safetensors file, pickles that need code, a tensor of another shape than
its config's model (`not_loaded` picks among them), weights that do not fill the model
(`check_loading_info`) and load_state_dict's first line (`load_error`). io's loaders call these."""

from __future__ import annotations

import os
import re
from pathlib import Path

from safetensors import SafetensorError

from compress import json_read
from compress.errors import UserError
from compress.io import WEIGHTS
from compress.io_tensors import needs_code, one_line, unreadable
from compress.io_variants import variant_weights, weights_variant


def no_weights(path: Path, variant: str | None) -> UserError:
    """The error for a transformer folder without the weight files from_pretrained reads: shards
    without their index, or no weights at all (io_output.no_weights, which says what the folder holds)."""
    from compress.io_output import no_weights as nothing_there

    v = f".{variant}" if variant else ""
    for ext in ("safetensors", "bin"):
        shards = sorted(f.name for f in path.iterdir() if re.fullmatch(
            rf"diffusion_pytorch_model(?:-\d+-of-\d+{re.escape(v)}|{re.escape(v)}-\d+-of-\d+)\.{ext}", f.name))
        if shards:
            return UserError(f"{path / f'diffusion_pytorch_model.{ext}.index{v}.json'} is missing: the teacher's "
                             f"weights are in {len(shards)} shards ({shards[0]} …) and the index says which tensor "
                             "is in which; copy the folder again")
    return nothing_there(path)



# diffusers' words for a tensor whose shape is not the one its config's model has
SHAPE_MISMATCH = re.compile(r"because (\S+) expected shape torch\.Size\(\[([\d, ]*)\]\), "
                            r"but got torch\.Size\(\[([\d, ]*)\]\)")
MISMATCH_ADVICE = " If you want to instead overwrite randomly initialized weights"  # ignore_mismatched_sizes


def not_loaded(cls, source, e: Exception) -> UserError:
    """The error for a teacher whose weights `from_pretrained` did not load: a tensor of another
    shape than in the model its config describes names the tensor and both shapes (not diffusers'
    advice to load random weights in its place, ignore_mismatched_sizes)."""
    found = SHAPE_MISMATCH.search(str(e))
    if (missing := missing_shards(source)) is not None:  # diffusers: 'does not appear to have a file named …'
        return UserError(missing)
    cut = cut_bin(source)
    if cut is not None:  # torch's words would be "Unable to load weights", or about a class the cut named
        return UserError(f"{cut}: its weights fail to load (the file ends early); it may be truncated or corrupted: "
                         "copy it again")
    if (damaged := damaged_safetensors(source)) is not None:  # diffusers: "Unable to load weights from checkpoint"
        return damaged
    if any(map(needs_code, causes(e))):  # a .bin whose pickle names a class: diffusers' "Unable to load weights"
        return UserError(f"{source}: its weights need arbitrary code to unpickle and were refused; checkpoints "
                         "are data, never code: convert them to safetensors")
    if found is None:
        return UserError(f"cannot load {cls.__name__} from {source}: {one_line(e).split(MISMATCH_ADVICE)[0]}")
    name, model, weights = found.groups()
    model, weights = (tuple(int(n) for n in shape.split(",") if n.strip()) for shape in (model, weights))
    return other_shape(cls, source, name, weights, model)


def other_shape(cls, source, name: str, weights: tuple, model: tuple) -> UserError:
    """The error for a teacher's tensor `name` of shape `weights` where the `cls` its config describes
    has `model` (run's, from diffusers' error; plan's, from the headers: io_headers)."""
    return UserError(f"teacher {source}: its weights do not match its config.json: {name} is {weights} in the "
                     f"weights but {model} in the {cls.__name__} the config describes")


def missing_shards(source) -> str | None:
    """What a teacher folder's weight index lists and the folder lacks (an incomplete download, a
    shard's blob gone from the Hugging Face cache), in the words stream_files.weight_map says it;
    None where every shard is there."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    read = variant_weights([f.name for f in folder.iterdir()], weights_variant(folder))  # as from_pretrained
    for index in (folder / name for name in read if name.endswith(".json")):
        try:
            shards = set(json_read.read(index)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # from_pretrained's error says it
        missing = sorted(f for f in shards if isinstance(f, str) and not (folder / f).is_file())
        if missing:
            return shards_not_there(index, folder, missing)
    return None


def shards_not_there(index: Path, folder: Path, missing: list[str]) -> str:
    """The words for the shards a weight index lists and its folder lacks (resident and streamed loads):
    an incomplete download, or, where the whole weight file the index is named after lies beside it
    (save_pretrained of an unsharded model into a folder of shards deletes the shards, not the index;
    diffusers refuses that folder too), a stale index to remove."""
    listed = f"{index} lists {len(missing)} shard(s) not in {folder}: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"
    whole = whole_file(index)
    if whole is not None and whole.is_file():
        return f"{listed}: a stale index beside the whole weight file {whole.name}: remove {index.name}"
    return f"{listed} (an incomplete download?)"


def whole_file(index: Path) -> Path | None:
    """The unsharded weight file a weight index stands for: NAME.index.json's NAME, a variant's
    diffusion_pytorch_model.safetensors.index.fp16.json's diffusion_pytorch_model.fp16.safetensors."""
    found = re.fullmatch(r"(.+)\.(safetensors|bin)\.index(?:\.(\w+))?\.json", index.name)
    if found is None:
        return None
    name, kind, variant = found.groups()
    return index.with_name(f"{name}{'.' + variant if variant else ''}.{kind}")


def damaged_safetensors(source) -> UserError | None:
    """io_tensors.unreadable's error for the first .safetensors file of a teacher folder that does
    not open (safe_open reads the header and checks the file is as long as it says: a cut shard),
    None where all open."""
    from safetensors import safe_open

    folder = Path(source)
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError
            return unreadable(path, e)
    return None


def cut_bin(source) -> Path | None:
    """The first .bin weight file of a teacher folder that ends early (io_tensors.cut_short: a zip
    without its central directory, a pickle without its STOP), None where all are whole."""
    from compress.io_tensors import cut_short

    folder = Path(source)
    if not folder.is_dir():
        return None
    return next((f for f in sorted(folder.glob("*.bin")) if f.is_file() and cut_short(f)), None)


def causes(e: BaseException | None):
    """e and the exceptions it was raised while handling, innermost last."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def check_loading_info(path: Path, info: dict) -> None:
    """The weights must fill the model its config builds, exactly (diffusers only logs this)."""
    wrong = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if wrong:
        raise UserError(f"{path}: the weights do not match config.json: " + "; ".join(
            f"{k.replace('_keys', '')} {', '.join(map(str, sorted(v)[:3]))}{' …' if len(v) > 3 else ''}"
            for k, v in wrong.items()))



def load_error(e: RuntimeError) -> str:
    """What a load_state_dict error says under its 'Error(s) in loading state_dict' header: its
    first 'size mismatch for <tensor>' or 'Missing key(s)' line."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return lines[0].rstrip(".")[:300] if lines else one_line(e)


def check_safetensors_dir(path: Path) -> None:
    f = path / WEIGHTS
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                h.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise unreadable(f, e) from None


def broken_weights(folder: Path, names: list[str]) -> str | None:
    """Where weight files `names` of `folder` link to a file that is gone (a Hugging Face cache
    snapshot whose blob was removed: from_pretrained said no such file, or an unreadable one), in
    words: the first, how many more, how to get them again; None where none does."""
    broken = [n for n in names if broken_link(folder / n)]
    if not broken:
        return None
    more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
    return f"{folder / broken[0]} links to {os.readlink(folder / broken[0])}, which is gone{more}; " \
           f"{download_again(folder, broken)}"


def download_again(folder: Path, names: list[str]) -> str:
    """'download it again online (hf download ORG/NAME FILES --revision COMMIT)' for files of a
    snapshot folder of the Hugging Face cache (…/models--ORG--NAME/snapshots/COMMIT/…; more than 3:
    its folder), 'copy it again' elsewhere."""
    parts = folder.parts
    at = next((i for i in range(1, len(parts) - 1) if parts[i] == "snapshots" and parts[i - 1].startswith("models--")),
              None)
    if at is None:
        return "copy it again"
    repo, commit, sub = "/".join(parts[at - 1].split("--")[1:]), parts[at + 1], "".join(p + "/" for p in parts[at + 2:])
    files = " ".join(sub + n for n in names) if len(names) <= 3 else f"--include '{sub}*'"
    return f"download it again online (hf download {repo} {files} --revision {commit})"


def broken_link(path: Path) -> bool:
    """A link to a file that is gone (a snapshot's file whose blob the Hugging Face cache lost)."""
    return path.is_symlink() and not path.exists()
