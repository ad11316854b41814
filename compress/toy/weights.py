"""Loading and saving the shipped toy teachers (package data in compress/toy/weights/).

Files per family: `<family>.json` (the diffusers config), `<family>.safetensors` (fp32 weights),
`<family>.md` (model card). Shared: `text_encoder.safetensors` (the frozen toy text encoder) and
`checksums.json` (SHA-256 of every .json / .safetensors above; the savers keep it up to date). Where a
folder has `checksums.json`, each listed file is checked against it before it is read, so a damaged
file is a UserError naming it, not a teacher with silently changed weights.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import torch

from compress.errors import UserError, did_you_mean
from compress.toy.text import ToyTextEncoder

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FAMILIES = ("pixart", "flux")
TEXT_ENCODER_FILE = "text_encoder.safetensors"
CHECKSUMS_FILE = "checksums.json"  # {file name: SHA-256 hex} of the files beside it


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise UserError(f"toy checksum file is corrupted: {path} ({exc}) (reinstall dit-compress)") from None


def verify_checksum(path: Path) -> None:
    """A UserError naming `path` when its folder's checksums.json lists it with another SHA-256."""
    expected = _checksums(path.parent).get(path.name)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(f"toy weight file is corrupted: {path} (SHA-256 {actual[:16]}… but {CHECKSUMS_FILE} "
                        f"lists {expected[:16]}…; reinstall dit-compress, or rebuild it with tools/train_toy_teacher.py)")


def _record_checksum(path: Path) -> None:
    """Write `path`'s SHA-256 into its folder's checksums.json (created if missing)."""
    listed = _checksums(path.parent)
    listed[path.name] = file_sha256(path)
    checksums = json.dumps(dict(sorted(listed.items())), indent=1) + "\n"
    (path.parent / CHECKSUMS_FILE).write_text(checksums, encoding="utf-8")


def check_toy_name(family: str) -> None:
    """A UserError for a toy teacher that is not shipped (`toy:pixar`), with the closest name."""
    if family not in FAMILIES:
        names = [f"toy:{f}" for f in FAMILIES]
        close = did_you_mean(family, FAMILIES).replace("'", "'toy:", 1)  # by the name alone, not the prefix
        raise UserError(f"unknown toy teacher 'toy:{family}'{close} (the toy teachers: {', '.join(names)})")


def _model_class(family: str):
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

    check_toy_name(family)
    return PixArtTransformer2DModel if family == "pixart" else FluxTransformer2DModel


def _open_weights(path: Path, read):
    """read(path) for a toy weight file; missing or corrupted files are a UserError naming it."""
    if not path.is_file():
        raise UserError(f"toy weight file missing: {path} (reinstall dit-compress, or rebuild it with tools/train_toy_teacher.py)")
    verify_checksum(path)
    try:
        return read(path)
    except Exception as exc:  # safetensors raises several types for truncated / garbled files
        raise UserError(f"toy weight file is corrupted: {path} ({type(exc).__name__}: {exc})") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _open_weights(path, lambda p: load_file(str(p)))


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"toy config file missing: {path} (reinstall dit-compress)")
    verify_checksum(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"toy config file is corrupted: {path} ({exc})") from None


def _load_into(module: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise UserError(f"toy weight file does not match its config: {path} ({detail})") from None


def load_toy_teacher(family: str, dtype: torch.dtype = torch.float32, weights_dir: str | Path | None = None):
    """The shipped toy teacher as a diffusers model ("pixart" -> PixArtTransformer2DModel,
    "flux" -> FluxTransformer2DModel), in eval mode. Missing/corrupted files raise UserError naming the file."""
    cls = _model_class(family)
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    config = _read_config(folder / f"{family}.json")
    path = folder / f"{family}.safetensors"
    state = _read_state_dict(path)
    try:
        model = cls.from_config(config)
    except Exception as exc:
        raise UserError(f"toy config file is invalid: {folder / f'{family}.json'} ({exc})") from None
    _load_into(model, state, path)
    if dtype != torch.float32:
        from compress.io import cast

        model = cast(model, dtype)
    return model.eval().requires_grad_(False)


def toy_files(family: str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(config json, fp32 safetensors) of a shipped toy teacher, for streaming it block by block."""
    _model_class(family)  # a UserError for an unknown family
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    config, weights = folder / f"{family}.json", folder / f"{family}.safetensors"
    for path in (config, weights):
        if not path.is_file():
            raise UserError(f"toy file missing: {path} (reinstall dit-compress)")
        verify_checksum(path)
    return config, weights


@functools.lru_cache(maxsize=4)
def _cached_text_encoder(path: Path) -> ToyTextEncoder:
    encoder = ToyTextEncoder()
    _load_into(encoder, _read_state_dict(path), path)
    return encoder.eval()


def load_text_encoder(weights_dir: str | Path | None = None) -> ToyTextEncoder:
    """The frozen toy text encoder both teachers were trained with (cached; it is never modified)."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return _cached_text_encoder((folder / TEXT_ENCODER_FILE).resolve())


def toy_component_params() -> int:
    """Parameters of a toy pipeline's parts but the transformer (load_toy_pipeline's text encoder and VAE)."""
    from compress.toy.vae import ToyVAE

    return sum(p.numel() for part in (load_text_encoder(), ToyVAE()) for p in part.parameters())


def save_toy_teacher(model, family: str, out_dir: str | Path, objective: str = "eps") -> None:
    """Write `<family>.json` + `<family>.safetensors` (fp32) into out_dir; the training objective
    goes into the safetensors metadata (the pipeline picks its scheduler by it)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{family}.json").write_text(model.to_json_string(), encoding="utf-8")
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{family}.safetensors"),
              metadata={"family": family, "format": "dit-compress-toy", "objective": objective})
    for name in (f"{family}.json", f"{family}.safetensors"):
        _record_checksum(out / name)


def toy_objective(family: str, weights_dir: str | Path | None = None) -> str:
    """The objective a toy teacher was trained with ("eps" unless its weights say otherwise)."""
    from safetensors import safe_open

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    def metadata(path: Path) -> dict:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}

    # weights written before the key existed were ε
    return _open_weights(folder / f"{family}.safetensors", metadata).get("objective", "eps")


def save_text_encoder(encoder: ToyTextEncoder, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out / TEXT_ENCODER_FILE))
    _record_checksum(out / TEXT_ENCODER_FILE)


# family -> the class of its toy pipeline, as a pipeline's save_pretrained names it in model_index.json
PIPELINE_CLASSES = {"pixart": "ToyPixArtPipeline", "flux": "ToyFluxPipeline"}


def toy_pipeline_family(class_name) -> str | None:
    """The toy family whose pipeline class is `class_name` (a model_index.json's _class_name), else None."""
    return next((family for family, name in PIPELINE_CLASSES.items() if name == class_name), None)


def load_toy_pipeline(family: str, transformer=None, dtype: torch.dtype = torch.float32, weights_dir=None,
                      scheduler=None):
    """A ToyPixArtPipeline / ToyFluxPipeline around the shipped teacher, or around `transformer`
    (e.g. a compressed student) with the same scheduler, text encoder and VAE. `scheduler`: one
    to use instead (a saved toy pipeline's: its save_pretrained wrote the scheduler and transformer
    only, the text encoder and VAE are the toy's own)."""
    from compress.toy.data import family_module
    from compress.toy.vae import ToyVAE

    module = family_module(family)
    if transformer is None:
        transformer = load_toy_teacher(family, dtype=dtype, weights_dir=weights_dir)
    pipeline_class = getattr(module, PIPELINE_CLASSES[family])
    schedulers = getattr(module, "SCHEDULERS", {})  # objective -> scheduler factory (toy PixArt)
    pipe = pipeline_class(
        transformer=transformer,
        scheduler=scheduler if scheduler is not None else
        schedulers.get(toy_objective(family, weights_dir), module.new_scheduler)(),
        text_encoder=copy.deepcopy(load_text_encoder(weights_dir)),  # own copy: pipe.to() moves it
        vae=ToyVAE(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
