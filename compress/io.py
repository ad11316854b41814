"""Teachers in, compact students out.

`load_teacher(source)` accepts `toy:pixart` / `toy:flux` (the shipped toy teachers), a Hugging Face id,
a diffusers pipeline folder (its `transformer/`), a transformer folder, or a single-file checkpoint.
`save_compressed` writes the output folder of DESIGN.md (`io_output.load_transformer` reads it back):
factorized layers are stored only as `<module>.down.weight` [r, in], `<module>.up.weight` [out, r],
`<module>.up.bias`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file
from torch import nn

from compress.arch import family_of_class, get_adapter
from compress.errors import NumericError, UserError
from compress.lowrank import LowRankLinear

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"  # sharded checkpoints (save_pretrained's layout)
FORMAT = 1
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# diffusion_pytorch_model.fp16.safetensors, its shards ...-00001-of-00002.fp16.safetensors and index
VARIANT_FILE = r"diffusion_pytorch_model(?:\.safetensors\.index)?(?:-\d+-of-\d+)?\.(\w+)\.(?:safetensors|json)"


# ---- teachers ---------------------------------------------------------------------------------
def model_class(class_name: str):
    family_of_class(class_name)  # raises a UserError naming the supported classes
    import diffusers

    return getattr(diffusers, class_name)


def load_teacher(source: str, dtype: torch.dtype = torch.float32, config: str | None = None,
                 family: str | None = None) -> nn.Module:
    """Load a teacher transformer. `config` (folder or config.json) is needed for single files
    whose config cannot be fetched; `family` ('pixart'|'flux') overrides detection from keys."""
    source = str(source)
    if source.startswith("toy:"):
        from compress.toy import load_toy_teacher

        return load_toy_teacher(source[4:], dtype=dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, dtype)
    if path.is_file():
        from compress.io_single import load_single_file

        return load_single_file(path, dtype, config=config, family=family)
    if path.suffix in SINGLE_FILE_SUFFIXES or looks_local(source):
        raise UserError(f"teacher not found: {source}")
    return _load_hub(source, dtype)


def looks_local(source: str) -> bool:
    """A path rather than a Hugging Face id (owner/name): it starts with . / ~, or its first part is a
    folder here (`out/typo` where out/ exists)."""
    return source.startswith((".", "/", "~")) or ("/" in source and Path(source.split("/")[0]).is_dir())


def load_teacher_of(student: nn.Module, source: str, config: str | None = None) -> nn.Module:
    """The teacher to compare `student` with (eval, bench): of the student's family, or a UserError."""
    family = get_adapter(student).family
    teacher = load_teacher(source, config=config, family=family).eval()
    if get_adapter(teacher).family != family:
        raise UserError(f"teacher {source} is a {type(teacher).__name__}; the model to compare with "
                        f"it is a {type(student).__name__}")
    check_same_architecture(student, teacher, source)
    return teacher


def check_same_architecture(student: nn.Module, teacher: nn.Module, source: str) -> None:
    """A UserError naming the config keys where `teacher` is not the architecture `student` was
    compressed from (its widths, heads, channels ...); block counts may differ (removed blocks)."""
    check_same_config(student, dict(teacher.config), f"teacher {source}", "pass its teacher with --teacher")


def check_same_config(student: nn.Module, config: dict, what: str, advice: str) -> None:
    """check_same_architecture against a diffusers config (a dict)."""
    counts = {g.config_key for g in get_adapter(student).groups}

    def arch(config: dict) -> dict:
        config = {k: v for k, v in config.items()
                  if not k.startswith("_") and k not in counts and k != "compression"}
        return json.loads(json.dumps(config, default=str))  # tuples as lists, as a saved config

    mine, theirs = arch(dict(student.config)), arch(config)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k)!r} (the model's: {mine.get(k)!r})" for k in differ[:3])
        raise UserError(f"{what} is not the model this one was compressed from: its config "
                        f"has {shown}{' …' if len(differ) > 3 else ''}; {advice}")


def cast(model: nn.Module, *args) -> nn.Module:
    """model.to(*args), as diffusers' `from_pretrained(torch_dtype=...)` would have loaded it: the
    non-persistent buffers (PixArt's sin-cos `pos_embed`, built at init and never saved) keep their
    dtype and only move, so every loader (folder, single file, stream, output) computes alike. No
    diffusers warning about float32-kept modules when the class keeps none (PixArt and Flux declare
    an empty list, and diffusers 0.42 warns on any dtype cast then)."""
    kept = [(m, name, buf) for m in model.modules() for name, buf in m._buffers.items()
            if name in m._non_persistent_buffers_set and buf is not None and buf.is_floating_point()]
    if getattr(model, "_keep_in_fp32_modules", None):
        model = model.to(*args)  # a real list: let diffusers say it
    else:
        model = nn.Module.to(model, *args)
    for m, name, buf in kept:
        m._buffers[name] = buf.to(m._buffers[name].device)
    return model


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UserError(f"cannot read {path}: {e}") from None


def transformer_folder(path: Path) -> Path:
    """The folder holding a transformer's config.json: `path`, or the `transformer/` of a pipeline
    folder (or of a download of that subfolder alone, without model_index.json)."""
    pipeline, inner = (path / "model_index.json").is_file(), (path / "transformer" / "config.json").is_file()
    own = (path / "config.json").is_file()
    if pipeline and not inner:
        raise UserError(f"{path} is a pipeline folder without transformer/config.json")
    if inner and (pipeline or not own):
        return path / "transformer"
    if not own:
        raise UserError(f"{path} has neither model_index.json nor config.json; expected a diffusers "
                        "pipeline folder, a transformer folder or a single-file checkpoint")
    return path


def read_config(path: Path) -> dict:
    """A diffusers config.json: a mapping, or a UserError naming the file."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a diffusers config (a JSON object); it holds a {type(config).__name__}")
    return config


def from_config(cls, config: dict, source) -> nn.Module:
    """cls.from_config, with a config value the class rejects reported against its file."""
    try:
        return cls.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{source}: the config does not build a {cls.__name__}: {one_line(e)}") from None


def weights_variant(path: Path) -> str | None:
    """None for the plain weight files, else the variant (`fp16` of
    diffusion_pytorch_model.fp16.safetensors) of a folder that holds only one variant's files."""
    if (path / WEIGHTS).is_file() or (path / INDEX).is_file():
        return None
    found = sorted({m.group(1) for f in path.iterdir()
                    if (m := re.fullmatch(VARIANT_FILE, f.name))})
    if len(found) > 1:
        raise UserError(f"{path} holds the weight variants {', '.join(found)} and no plain "
                        f"{WEIGHTS}; keep the one to compress")
    return found[0] if found else None


def _load_folder(path: Path, dtype) -> nn.Module:
    path = transformer_folder(path)
    config = read_config(path / "config.json")
    if "compression" in config:
        from compress.io_output import load_transformer

        return load_transformer(path, dtype=dtype)
    cls = model_class(config.get("_class_name", "<missing _class_name>"))
    check_safetensors_dir(path)
    try:
        model, info = cls.from_pretrained(path, torch_dtype=dtype, variant=weights_variant(path),
                                          output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise UserError(f"cannot load {cls.__name__} from {path}: {one_line(e)}") from None
    check_loading_info(path, info)
    return model.eval()


def check_loading_info(path: Path, info: dict) -> None:
    """The weights must fill the model its config builds, exactly (diffusers only logs this)."""
    wrong = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if wrong:
        raise UserError(f"{path}: the weights do not match config.json: " + "; ".join(
            f"{k.replace('_keys', '')} {', '.join(map(str, sorted(v)[:3]))}{' …' if len(v) > 3 else ''}"
            for k, v in wrong.items()))


def _load_hub(repo_id: str, dtype) -> nn.Module:
    from huggingface_hub import hf_hub_download

    try:
        index = Path(hf_hub_download(repo_id, "model_index.json"))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({type(e).__name__}); "
                        "pass a local folder or file, or check the id and your network") from None
    cls_name = read_json(index).get("transformer", [None, None])[1]
    cls = model_class(cls_name or "<no transformer>")
    return cls.from_pretrained(repo_id, subfolder="transformer", torch_dtype=dtype).eval()


def load_error(e: RuntimeError) -> str:
    """What a load_state_dict error says under its 'Error(s) in loading state_dict' header: its
    first 'size mismatch for <tensor>' or 'Missing key(s)' line."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return lines[0].rstrip(".")[:300] if lines else one_line(e)


def unreadable(path, e: Exception) -> UserError:
    """The error for a safetensors file that cannot be opened."""
    return UserError(f"{path} is not a readable safetensors file ({one_line(e)}); it may be truncated or corrupted")


def one_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ---- single files -----------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file. Pickles are loaded with weights_only=True: data, never code."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorsError, OSError, ValueError) as e:
            raise unreadable(path, e) from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        msg = one_line(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UserError(f"{path} needs arbitrary code to unpickle and was refused; checkpoints "
                            "are data, never code: convert it to safetensors") from None
        raise UserError(f"{path} is not a readable checkpoint ({msg}); it may be truncated or corrupted") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a dict of tensors")
    return sd


# ---- compact export ---------------------------------------------------------------------------
def ranks_of(model: nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def student_config(model: nn.Module, extra: dict | None = None) -> dict:
    config = {k: v for k, v in dict(model.config).items()
              if not k.startswith(("_use_default", "_name_or_path"))}
    config = json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    config["_class_name"] = type(model).__name__
    extra = getattr(model, "compression_meta", None) if extra is None else extra  # a loaded output's
    config["compression"] = {"format": FORMAT, "ranks": ranks_of(model), **(extra or {})}
    return config


def save_compressed(model: nn.Module, out, dtype: torch.dtype | None = None, extra: dict | None = None,
                    files: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write the output folder atomically (temp folder + rename). `files`: extra text files."""
    with atomic_folder(out, overwrite) as tmp:
        config = compressed_config(model, extra, dtype)
        sd = {k: export_cast(k, v, dtype).detach().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS), metadata=header_metadata(config))
        canonical_header(tmp / WEIGHTS)
        write_texts(tmp, config, files)
    return Path(out)


def export_cast(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`tensor` in the export dtype; a NumericError naming it where finite values leave that
    dtype's range (float16 stops at 65504), never a file holding inf."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    out = tensor.to(dtype)
    if out.device.type != "meta" and nonfinite(out) and not nonfinite(tensor):
        big = float(tensor.detach().abs().max())
        raise NumericError(f"export: {name} holds values up to {big:.3g}, beyond the range of "
                           f"{str(dtype).removeprefix('torch.')} (max {torch.finfo(dtype).max:.3g}); "
                           "export it as bfloat16 or float32 (export.dtype)")
    return out


def nonfinite(t: torch.Tensor, chunk: int = 2**22) -> int:
    """How many NaN/Inf values t holds. A NaN or Inf anywhere makes the sum NaN or Inf, so a finite
    sum (one reduction, no temporaries) settles it; otherwise they are counted in chunks (a
    whole-tensor isfinite of a bf16 weight has float temporaries several times its size: +0.16 GiB
    peak on full-width Flux). On a full-width Flux double block the sum took 0.03 s where counting
    took 1.8 s, most of what reading the block cost (tools/bench_stream_scan.py)."""
    if bool(torch.isfinite(t.sum())):
        return 0
    return sum(int((~torch.isfinite(c)).sum()) for c in t.reshape(-1).split(chunk))


def compressed_config(model: nn.Module, extra: dict | None, dtype: torch.dtype | None) -> dict:
    config = student_config(model, extra)
    if dtype is not None:
        config["compression"]["dtype"] = str(dtype).removeprefix("torch.")
    return config


def header_metadata(config: dict) -> dict[str, str]:
    """The safetensors header metadata of every weight file: the compression section."""
    return {"format": "pt", "compression": json.dumps(config["compression"], sort_keys=True)}


def write_texts(folder: Path, config: dict, files: dict[str, str] | None) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, text in (files or {}).items():
        (folder / name).write_text(text)


def is_output(folder: Path) -> bool:
    """Whether `folder` is an output of dit-compress: its config.json has a compression section."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "compression" in config


def check_replaceable(out: Path, overwrite: bool) -> None:
    """An existing `out` may be replaced (with `overwrite`) only if it is an earlier output or an
    empty folder, and never the current folder or one above it; a UserError saying why otherwise."""
    if not (out.exists() or out.is_symlink()):
        return
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UserError(f"output folder {out} is the current folder or one above it, and the output "
                        "replaces its folder as a whole; name a new folder")
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"output folder {out} exists and is a {'link' if out.is_symlink() else 'file'}, "
                        "not a folder; name a new folder")
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise UserError(f"cannot read the output folder {out}: {e.strerror}") from None
    if not empty and not is_output(out):
        raise UserError(f"output folder {out} exists and is not a dit-compress output (no config.json "
                        "with a compression section); --overwrite replaces only an earlier output or an "
                        "empty folder: name a new folder")
    if not overwrite:
        raise UserError(f"output folder {out} exists; pass --overwrite to replace it")


@contextmanager
def atomic_folder(out, overwrite: bool = False):
    """Yields a temp folder beside `out` that replaces it on success and vanishes on any error or
    interrupt, so `out` is never half-written. An existing `out` is replaced only with `overwrite`,
    and only where `check_replaceable` allows it."""
    out = Path(out)
    check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        as_umask_allows(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def as_umask_allows(folder: Path) -> None:
    """The permissions an ordinary mkdir / open would have given `folder` and what is in it (mkdtemp
    makes 0700 and safetensors writes 0600, which other users of a shared machine cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


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


def check_safetensors_dir(path: Path) -> None:
    f = path / WEIGHTS
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                h.keys()
        except (SafetensorsError, OSError, ValueError) as e:
            raise unreadable(f, e) from None
