"""Teachers in.

`load_teacher(source)` accepts `toy:pixart` / `toy:flux` (the shipped toy teachers), a Hugging Face id,
a diffusers pipeline folder (its `transformer/`), a transformer folder, or a single-file checkpoint
(io_single), each checked first as io_source says what a source is. Also the shared reading helpers (configs, JSON, safetensors errors, `nonfinite`) and the
file names of DESIGN.md's output folder, which `io_export.save_compressed` writes and
`io_output.load_transformer` reads back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file
from torch import nn

from compress.arch import family_of_class, get_adapter
from compress.errors import UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"  # sharded checkpoints (save_pretrained's layout)
FORMAT = 1
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# diffusion_pytorch_model.fp16.safetensors, its shards ...-00001-of-00002.fp16.safetensors and index
VARIANT_FILE = r"diffusion_pytorch_model(?:\.safetensors\.index)?(?:-\d+-of-\d+)?\.(\w+)\.(?:safetensors|json)"


# ---- teachers ---------------------------------------------------------------------------------
def pipeline_dtype(dtype: torch.dtype) -> dict:
    """The dtype keyword of `DiffusionPipeline.from_pretrained`: `dtype` where diffusers takes it
    (0.42 on, which warns that `torch_dtype` is deprecated), `torch_dtype` before."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def model_class(class_name: str):
    family_of_class(class_name)  # raises a UserError naming the supported classes
    import diffusers

    return getattr(diffusers, class_name)


def load_teacher(source, dtype: torch.dtype | str | None = torch.float32, config: str | None = None,
                 family: str | None = None) -> nn.Module:
    """Load a teacher transformer: a source (a path or a name), or an io_source.TeacherSource
    checked already. `dtype`: a torch dtype or its name ('bfloat16'); None keeps the weights' own
    dtype, as `load_transformer` does (a folder's or Hub repo's that mixes dtypes: one that holds each
    exactly, stored_dtype). `config` (folder or config.json) is needed for single files whose config
    cannot be fetched; `family` ('pixart'|'flux') overrides detection from keys."""
    from compress.io_output import as_dtype
    from compress.io_source import TeacherSource, check_source

    dtype = as_dtype(dtype, "load_teacher")  # before any source is read
    if isinstance(source, TeacherSource):
        source, kind = source.source, source.kind
    else:  # empty, unknown toy, not there, not a teacher: said before loading
        source = str(source)
        kind = check_source(source)
    if kind == "toy":
        from compress.toy import load_toy_teacher

        return load_toy_teacher(source[4:], dtype=dtype or torch.float32)  # its weights are float32
    path = Path(source).expanduser()
    if kind == "folder":
        return _load_folder(path, dtype)
    if kind == "file":
        from compress.io_single import load_single_file

        return load_single_file(path, dtype, config=config, family=family)
    return _load_hub(source, dtype)


def looks_local(source: str) -> bool:
    """A path rather than a Hugging Face id (owner/name): it starts with . / ~, it names no owner
    (`out`: diffusion models on the Hub all have one) or its first part is a folder here (`out/typo`
    where out/ exists). toy:NAME is neither."""
    if source.startswith("toy:"):
        return False
    return source.startswith((".", "/", "~")) or "/" not in source or Path(source.split("/")[0]).is_dir()


def load_teacher_of(student: nn.Module, source: str, config: str | None = None,
                    loras: list[str] | None = None) -> nn.Module:
    """The teacher to compare `student` with (eval, bench): of the student's family, or a UserError;
    with the LoRAs the student recorded merged into it (`loras`: where they are now, eval's and
    bench's --lora, in place of the recorded places)."""
    from compress.io_source import checked

    recorded = (getattr(student, "compression_meta", None) or {}).get("loras")
    if loras and not recorded:
        raise UserError("--lora: the model took no LoRA (dit-compress lora); its teacher is compared as it is")
    if recorded:  # said before the teacher loads: a LoRA no longer where the student recorded it
        from compress.lora_replay import replayed_sources

        replayed_sources(recorded, loras)
    family, src = get_adapter(student).family, checked(source, config)  # checked once
    found = src.family()  # from its config: before a Hub teacher downloads
    if found and found[0] != family:
        raise UserError(f"teacher {source} is a {found[1]}; the model to compare with it is a "
                        f"{type(student).__name__}")
    teacher = load_teacher(src, config=config, family=family).eval()
    if get_adapter(teacher).family != family:
        raise UserError(f"teacher {source} is a {type(teacher).__name__}; the model to compare with "
                        f"it is a {type(student).__name__}")
    check_same_architecture(student, teacher, source)
    if recorded:  # a student that took LoRAs (dit-compress lora) stands for its teacher with them
        from compress.lora_replay import replay

        replay(teacher, recorded, loras)
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
    return variant_of([f.name for f in path.iterdir()], path)


def variant_of(names: list[str], where) -> str | None:
    """weights_variant of the file names in a folder (`where`, a local folder or a Hub repo's)."""
    if WEIGHTS in names or INDEX in names:
        return None
    found = sorted({m.group(1) for f in names if (m := re.fullmatch(VARIANT_FILE, f))})
    if len(found) > 1:
        raise UserError(f"{where} holds the weight variants {', '.join(found)} and no plain "
                        f"{WEIGHTS}; keep the one to compress")
    return found[0] if found else None


def variant_weights(names: list[str], variant: str | None) -> list[str]:
    """The weight files (single, or an index and its shards) of `variant` among `names`, as
    from_pretrained picks them: safetensors, else .bin."""
    v = re.escape(f".{variant}") if variant else ""
    shard = r"-\d+-of-\d+"  # before the variant's name (diffusers' save_pretrained) or after it
    for ext in ("safetensors", "bin"):
        index = [n for n in names if re.fullmatch(rf"diffusion_pytorch_model\.{ext}\.index{v}\.json", n)]
        if index:  # from_pretrained reads the index and its shards, not a single file beside them
            return sorted(index + [n for n in names if re.fullmatch(
                rf"diffusion_pytorch_model(?:{shard}{v}|{v}{shard})\.{ext}", n)])
        single = [n for n in names if n == f"diffusion_pytorch_model{'.' + variant if variant else ''}.{ext}"]
        if single:
            return single
    return []


TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored_dtype(path: Path, variant: str | None) -> torch.dtype:
    """The dtype a transformer folder's weights are stored in (from the safetensors headers, or the
    tensors of .bin files mapped, not read): the one of its floating tensors; where they mix dtypes,
    one that holds each exactly (float32, float64 with float64 ones); float32 where the folder holds
    no weights (from_pretrained says so)."""
    files = [path / n for n in variant_weights([f.name for f in path.iterdir()], variant)]
    found: set[torch.dtype] = set()
    for f in files:
        if f.name.endswith(".json"):
            continue
        if f.suffix == ".safetensors":
            found |= {TORCH_DTYPES.get(t) for t in safetensors_dtypes(f) if t.startswith(("F", "BF"))}
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
    except (SafetensorsError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


def _load_folder(path: Path, dtype) -> nn.Module:
    path = transformer_folder(path)
    config = read_config(path / "config.json")
    if "compression" in config:
        from compress.io_output import load_transformer

        return load_transformer(path, dtype=dtype)
    cls = model_class(config.get("_class_name", "<missing _class_name>"))
    check_safetensors_dir(path)
    variant = weights_variant(path)
    if dtype is None:
        dtype = stored_dtype(path, variant)
    try:
        model, info = cls.from_pretrained(path, torch_dtype=dtype, variant=variant,
                                          output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise not_loaded(cls, path, e) from None
    check_loading_info(path, info)
    return model.eval()


# diffusers' words for a tensor whose shape is not the one its config's model has
SHAPE_MISMATCH = re.compile(r"because (\S+) expected shape torch\.Size\(\[([\d, ]*)\]\), "
                            r"but got torch\.Size\(\[([\d, ]*)\]\)")
MISMATCH_ADVICE = " If you want to instead overwrite randomly initialized weights"  # ignore_mismatched_sizes


def not_loaded(cls, source, e: Exception) -> UserError:
    """The error for a teacher whose weights `from_pretrained` did not load: a tensor of another
    shape than in the model its config describes names the tensor and both shapes (not diffusers'
    advice to load random weights in its place, ignore_mismatched_sizes)."""
    found = SHAPE_MISMATCH.search(str(e))
    if found is None:
        return UserError(f"cannot load {cls.__name__} from {source}: {one_line(e).split(MISMATCH_ADVICE)[0]}")
    name, model, weights = found.groups()
    model, weights = (tuple(int(n) for n in shape.split(",") if n.strip()) for shape in (model, weights))
    return UserError(f"teacher {source}: its weights do not match its config.json: {name} is {weights} in the "
                     f"weights but {model} in the {cls.__name__} the config describes")


def check_loading_info(path: Path, info: dict) -> None:
    """The weights must fill the model its config builds, exactly (diffusers only logs this)."""
    wrong = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if wrong:
        raise UserError(f"{path}: the weights do not match config.json: " + "; ".join(
            f"{k.replace('_keys', '')} {', '.join(map(str, sorted(v)[:3]))}{' …' if len(v) > 3 else ''}"
            for k, v in wrong.items()))


def _load_hub(repo_id: str, dtype) -> nn.Module:
    """A Hub teacher: its transformer's folder downloaded (hub_folder), then loaded as a local one."""
    return _load_folder(hub_folder(repo_id), dtype)


def hub_folder(repo_id: str) -> Path:
    """The local copy of a Hub teacher's transformer folder: its config.json and the weight files
    of the one variant from_pretrained would read of it (variant_of, as for a local folder), not
    the other variants' nor the pipeline's other components. The class is checked before any
    weights download."""
    from huggingface_hub import snapshot_download

    cfg, sub = hub_config_file(repo_id)
    model_class(read_config(cfg).get("_class_name", "<missing _class_name>"))
    where = f"'{repo_id}'" + (f" ({sub})" if sub else "")
    names = hub_file_names(repo_id, cfg.parent, sub)
    wanted = variant_weights(names, variant_of(names, where))
    if not wanted:
        if offline():  # the names are the cache's: the repo may well hold them
            raise UserError(f"the Hugging Face cache holds no weights of {where} beside its config.json (offline: "
                            "HF_HUB_OFFLINE): fetch it once online, or pass a local folder or file")
        raise UserError(f"{where} holds no {WEIGHTS} (nor its shards, a variant's or .bin ones) beside its config.json")
    try:
        with quiet_hub():
            root = Path(snapshot_download(repo_id, allow_patterns=[sub + n for n in ["config.json", *wanted]]))
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
    return root / sub


def hub_config_file(repo_id: str) -> tuple[Path, str]:
    """(the local copy of a Hub repo's transformer config.json, the repo folder that holds it):
    'transformer/' of a pipeline repo, '' of a transformer-only one (config.json and weights at its
    root, as fine-tunes are shared). A few KB; the root's is fetched only where the Hub (or,
    offline, the cache) has no transformer/config.json."""
    from huggingface_hub import hf_hub_download

    errors = []
    for sub in ("transformer/", ""):
        try:
            with quiet_hub():
                return Path(hf_hub_download(repo_id, "config.json", subfolder=sub.rstrip("/") or None)), sub
        except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
            errors.append(e)
            if not not_in_repo(e):
                break
    if len(errors) == 2 and all(map(not_in_repo, errors)) and not offline():  # offline: the cache lacks it
        raise UserError(f"'{repo_id}' has neither transformer/config.json nor config.json: expected a "
                        "diffusers pipeline or transformer repo, or pass a local folder or file")
    raise hub_error(repo_id, errors[0], "a local folder or file")


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def not_in_repo(e: Exception) -> bool:
    """A fetch that failed because the repo lacks the file (offline: its cached copy does), not
    because of the network or access; trying another file then costs no retries."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    return isinstance(e, RemoteEntryNotFoundError) or (isinstance(e, LocalEntryNotFoundError) and offline())


def hub_file_names(repo_id: str, cached: Path, sub: str) -> list[str]:
    """The names of the files in the repo folder `sub`: the Hub's list; offline, or where the Hub
    cannot be listed after the config came from the cache, those of its cached copy `cached` (what
    can be loaded without the Hub)."""
    if not offline():
        from huggingface_hub import HfApi

        try:
            with quiet_hub():
                files = HfApi().list_repo_files(repo_id)
            return [f[len(sub):] for f in files if f.startswith(sub) and "/" not in f[len(sub):]]
        except Exception:  # noqa: BLE001, S110 - as hf_hub_download, the cache answers then
            pass
    return sorted(f.name for f in cached.iterdir() if f.is_file())


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub retries a failed request 5 times over about 23 s and logs two warnings for
    each try (12 lines where there is no network); `hub_error` says why it failed instead."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_error(repo_id: str, e: Exception, local: str) -> UserError:
    """A one-line error for a failed Hub fetch; local: what to pass instead."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        return UserError(f"'{repo_id}' is gated on the Hugging Face Hub: accept its license on "
                         f"https://huggingface.co/{repo_id} and log in (hf auth login), or pass {local}")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"'{repo_id}' is not on the Hugging Face Hub (or is private: log in); check "
                         f"the id, or pass {local}")
    cause = e.__cause__ if e.__cause__ is not None else e  # LocalEntryNotFoundError wraps the network's
    return UserError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({type(cause).__name__}: "
                     f"{one_line(cause)}); pass {local}, or check the id and your network")


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


def nonfinite(t: torch.Tensor, chunk: int = 2**22) -> int:
    """How many NaN/Inf values t holds (none in an integer or bool tensor). A NaN or Inf anywhere
    makes the sum NaN or Inf, so a finite sum (one reduction, no temporaries) settles it; otherwise
    they are counted in chunks (a whole-tensor isfinite of a bf16 weight has float temporaries
    several times its size: +0.16 GiB peak on full-width Flux). On a full-width Flux double block the
    sum took 0.03 s where counting took 1.8 s, most of what reading the block cost
    (tools/bench_stream_scan.py). float8 (an fp8 Flux file) has neither sum nor isfinite on the CPU:
    its bytes are counted (one bincount, no float copy; 0.16 s for 75M values where counting chunks
    upcast to float32 took 2.5 s) at the codes its format spends on NaN/Inf."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    if t.dtype.itemsize == 1:
        codes = _byte_nonfinite_codes(t.dtype)
        if not len(codes):
            return 0
        return int(torch.bincount(t.view(torch.uint8).reshape(-1), minlength=256)[codes].sum())
    if bool(torch.isfinite(t.sum())):
        return 0
    return sum(int((~torch.isfinite(c)).sum()) for c in t.reshape(-1).split(chunk))


@functools.lru_cache(maxsize=None)
def _byte_nonfinite_codes(dtype: torch.dtype) -> torch.Tensor:
    """The byte values a one-byte float format spends on NaN/Inf, as torch converts them: 0x7F/0xFF
    of float8_e4m3fn (no Inf), ±Inf and NaN from 0x7C of float8_e5m2, 0x80 of the fnuz formats, 0xFF
    of float8_e8m0fnu. float4_e2m1fn_x2 (two values a byte, none of them NaN or Inf) has none."""
    if dtype == getattr(torch, "float4_e2m1fn_x2", None):
        return torch.zeros(0, dtype=torch.long)
    values = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32)
    return (~torch.isfinite(values)).nonzero().flatten()


# ---- single files -----------------------------------------------------------------------------
def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file. Pickles are loaded with weights_only=True: data, never code;
    mmap: a pickle's tensors map the file, read as they are used (where its format allows it)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorsError, OSError, ValueError) as e:
            raise unreadable(path, e) from None
    try:
        sd = _torch_load(path, mmap)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        msg = one_line(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UserError(f"{path} needs arbitrary code to unpickle and was refused; checkpoints "
                            "are data, never code: convert it to safetensors") from None
        raise UserError(f"{path} is not a readable checkpoint: {not_torch_save(path, e)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a dict of tensors")
    return sd


def not_torch_save(path: Path, e: Exception) -> str:
    """Why torch.load refused a file, in words: a file torch.save did not write (its errors then
    are bare key and index errors, `KeyError: 101`), or a damaged one."""
    with open(path, "rb") as f:
        head = f.read(4)
    expected = (f"expected a .safetensors file or one torch.save wrote ({', '.join(SINGLE_FILE_SUFFIXES[1:])}: "
                "a zip archive or a pickle)")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # a zip's first entry; pickle protocol 2+ starts with PROTO
        return f"{expected}, and it is neither"
    why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
    return f"{expected}; this one fails to load ({type(e).__name__}: {why}); it may be truncated or corrupted"


def _torch_load(path: Path, mmap: bool):
    if mmap:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # torch.save's legacy (pre-zipfile) format cannot be mapped
                raise
    return torch.load(str(path), map_location="cpu", weights_only=True)


def check_safetensors_dir(path: Path) -> None:
    f = path / WEIGHTS
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                h.keys()
        except (SafetensorsError, OSError, ValueError) as e:
            raise unreadable(f, e) from None
