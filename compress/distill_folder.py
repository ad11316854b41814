"""The folder format of distillation data (`data: folder` with `latents_dir`, and the teacher-sample
cache of `compress.distill_data`): its checks, its reader `FolderSource` and its writer `write_shard`.

A folder holds `.safetensors` / `.pt` files. Each file holds flat keys:
    latents                 (B, ...)  clean latents, in the layout the transformer's `hidden_states` takes
                                      (PixArt (B, C, H, W); Flux packed (B, N, C))
    cond.<kwarg>            (B, ...)  per-sample forward kwargs, e.g. cond.encoder_hidden_states,
                                      cond.encoder_attention_mask, cond.pooled_projections, cond.guidance;
                                      nested dicts with dots: cond.added_cond_kwargs.resolution
    shared.<kwarg>          (...)     kwargs used as they are for every batch (Flux img_ids, txt_ids)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from compress.errors import UserError
from compress.inputs import example_row, moved
from compress.io_tensors import one_line

SHARED_KWARGS = ("img_ids", "txt_ids")  # Flux: not batched
SUFFIXES = (".safetensors", ".pt")
LATENTS_DIR = "distill.latents_dir file"  # a file of the user's folder, as its errors name it (`named`)
SAMPLE_FILE = "distill: teacher sample file"  # one of the teacher-sample cache (distill_data)


class FileTrouble(UserError):
    """A file of a latents folder that cannot be read or breaks the folder format: the message starts
    with its path, and `named` says whose file it is."""


@contextmanager
def named(what: str):
    """A FileTrouble inside as a UserError naming the file `what`'s (LATENTS_DIR: 'distill.latents_dir
    file /d/a.pt has no 'latents' tensor ...', the key in the PASS.KEY form of recipe errors; SAMPLE_FILE)."""
    try:
        yield
    except FileTrouble as e:
        raise UserError(f"{what} {e}") from None


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif torch.is_tensor(value):
        out[prefix] = value


def _unflatten(flat: dict[str, torch.Tensor]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - name the file, keep the reason
        raise FileTrouble(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FileTrouble(f"{path} holds a {type(data).__name__}, expected a dict of tensors")
    flat: dict = {}
    for k, v in data.items():
        _flatten(k, v, flat)
    return flat


def latents_folder(value: str | Path) -> Path:
    """`latents_dir` as a folder path (`~` expanded), or a one-line error."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        there = "a file" if folder.exists() else "none"
        raise UserError(f"distill.latents_dir {value} is not a folder (there is {there} at {folder.absolute()}; "
                        "a relative latents_dir is taken from the current folder)")
    return folder


def latents_files(value: str | Path) -> list[Path]:
    """The .safetensors / .pt files of `latents_dir`, sorted, or a one-line error (none, or a folder
    that cannot be listed)."""
    folder = latents_folder(value)
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and not p.is_dir())
    except OSError as e:
        raise UserError(f"distill.latents_dir {value} cannot be listed: {e.strerror or e}") from None
    if not files:
        raise UserError(f"distill.latents_dir {value} has no .safetensors or .pt files")
    return files


def check_file(path: Path, data: dict) -> None:
    """One file of the folder format: 'latents', and 'cond.' tensors with as many rows (check_keys),
    every value finite."""
    check_keys(path, {k: tuple(v.shape) for k, v in data.items()})
    check_finite(path, data)


def check_keys(path: Path, shapes: dict[str, tuple]) -> None:
    """A file's keys and their shapes: 'latents', 'cond.' tensors with as many rows, 'shared.' ones."""
    if "latents" not in shapes:
        raise FileTrouble(f"{path} has no 'latents' tensor (keys: {', '.join(sorted(shapes))})")
    n = shapes["latents"][0] if shapes["latents"] else 0
    for key, shape in shapes.items():
        if key.startswith("cond.") and (not shape or shape[0] != n):
            raise FileTrouble(f"{path}: '{key}' has {shape[0] if shape else 0} rows, 'latents' has {n}")
        if key != "latents" and not key.startswith(("cond.", "shared.")):
            raise FileTrouble(f"{path}: key '{key}' must be 'latents' or start with "
                              "'cond.' or 'shared.'")


def check_finite(path: Path, data: dict) -> None:
    for key, value in data.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FileTrouble(f"{path}: '{key}' holds non-finite values (nan or inf)")


def _first_rows(path: Path) -> tuple[dict[str, tuple], dict[str, torch.Tensor]]:
    """Each tensor's shape, and the file's first row of 'latents' and 'cond.' tensors ('shared.'
    ones whole: small, Flux ids): a safetensors file's header and those bytes only, a pickle's
    tensors mapped (_read), nothing else of them read. A folder's first file can be GBs."""
    if path.suffix != ".safetensors":
        data = _read(path)
        return {k: tuple(v.shape) for k, v in data.items()}, {k: _row(k, v) for k, v in data.items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            rows = {k: f.get_tensor(k) if k.startswith("shared.") or not shapes[k] else s[:1]
                    for k, s in slices.items()}
    except Exception as exc:  # noqa: BLE001 - name the file, keep the reason
        raise FileTrouble(f"{path} cannot be read: {one_line(exc)}") from None
    return shapes, rows


def _row(key: str, value: torch.Tensor) -> torch.Tensor:
    return value if key.startswith("shared.") or not value.ndim else value[:1]


def _shapes(path: Path) -> dict[str, tuple]:
    """Each tensor's shape, read from the file's header where it has one (safetensors)."""
    if path.suffix != ".safetensors":
        return {k: tuple(v.shape) for k, v in _read(path).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - name the file, keep the reason
        raise FileTrouble(f"{path} cannot be read: {one_line(exc)}") from None


def check_layout(path: Path, shapes: dict, first: Path, first_shapes: dict) -> None:
    """A file holds what the folder's first file holds: the same keys, rows of the same shape
    ('latents', 'cond.'), 'shared.' tensors of the same shape (a batch joins rows of several files;
    their values: check_shared)."""
    if sorted(shapes) != sorted(first_shapes):
        raise FileTrouble(f"{path} has keys {sorted(shapes)}, {first.name} {sorted(first_shapes)}")
    for key, shape in shapes.items():
        per_row = not key.startswith("shared.")
        mine, theirs = (shape[1:], first_shapes[key][1:]) if per_row else (shape, first_shapes[key])
        if mine != theirs:
            raise FileTrouble(f"{path}: '{key}' has {'rows' if per_row else 'shape'} {mine}, in "
                              f"{first.name} {theirs}; every file of latents_dir must hold the same layout")


def _shared(path: Path, data: dict | None = None) -> dict[str, torch.Tensor]:
    """The file's 'shared.' tensors (small: Flux ids), from `data` where it is read already."""
    if data is not None or path.suffix != ".safetensors":
        return {k: v for k, v in (data if data is not None else _read(path)).items() if k.startswith("shared.")}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith("shared.")}
    except Exception as exc:  # noqa: BLE001 - name the file, keep the reason
        raise FileTrouble(f"{path} cannot be read: {one_line(exc)}") from None


def check_shared(path: Path, shared: dict, first: Path, first_shared: dict) -> None:
    """A file's 'shared.' tensors hold the values of the first file's: a batch joins rows of several
    files and gives them all one of each (Flux img_ids: latents of another grid, even of as many
    tokens, would train with wrong positions). Shapes are check_layout's."""
    for key, value in shared.items():
        theirs = first_shared.get(key)
        if theirs is not None and value.shape == theirs.shape and not torch.equal(value, theirs):
            raise FileTrouble(f"{path}: '{key}' holds other values than in {first.name}; a batch joins "
                              "rows of several files and gives them one 'shared.' tensor, so every file of "
                              "latents_dir must hold the same (latents of another resolution or aspect go in "
                              "another folder)")


def check_folder(value: str | Path, model, adapter) -> None:
    """Before any compute: the first file of `latents_dir` holds rows of floating latents, the
    others the same layout (`check_layout`, from their headers), and one of its rows runs through
    `model` on the meta device (`_on_meta`: shapes only, no arithmetic), so a wrong layout fails
    here (plan, the run's checks) and not after the passes before distill. Of the first file, its
    header and first row are read (_first_rows): the rest of its values are checked finite when
    the pass reads the folder (FolderSource). A file's errors name it as a latents_dir file (`named`)."""
    with named(LATENTS_DIR):
        _check_files(latents_files(value), model, adapter)


def _check_files(files: list[Path], model, adapter) -> None:
    first_shapes, rows = _first_rows(files[0])
    check_keys(files[0], first_shapes)
    check_finite(files[0], rows)
    first_shared = {k: v for k, v in rows.items() if k.startswith("shared.")}
    for path in files[1:]:
        check_layout(path, _shapes(path), files[0], first_shapes)
        if first_shared:
            check_shared(path, _shared(path), files[0], first_shared)
    latents, shape = rows["latents"], first_shapes["latents"]  # (1, ...) of (B, ...)
    if not latents.is_floating_point() or len(shape) < 3 or shape[0] == 0:
        raise FileTrouble(f"{files[0]}: 'latents' must be floating rows (B, ...) of the transformer's "
                          f"hidden_states, got {str(latents.dtype).removeprefix('torch.')} {shape}")
    _dry_run(files[0], _unflatten({k: v for k, v in rows.items() if k != "latents"}), latents, _on_meta(model),
             adapter)


def _on_meta(model):
    """`model`, or a copy of it on the meta device (plan's toy teachers hold their weights; the pass
    checks the student it trains): the dry run does no arithmetic and leaves the model as it was."""
    if next(model.parameters()).device.type == "meta":
        return model
    from compress.runner_checks import meta_clone

    return meta_clone(model)


def _dry_run(path: Path, cond: dict, latents: torch.Tensor, model, adapter) -> None:
    kwargs = moved(dict(cond.get("cond", {}), **cond.get("shared", {}), hidden_states=latents,
                        timestep=torch.ones(1)), "meta", latents.dtype)
    if adapter.family == "pixart":  # as its task loss calls it
        kwargs.setdefault("added_cond_kwargs", {"resolution": None, "aspect_ratio": None})
    try:
        adapter.predict(model, kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        # (a kwarg the model needs left out: AttributeError on its None)
        held = sorted(f"{k}.{name}" for k in ("cond", "shared") for name in cond.get(k, {}))
        raise FileTrouble(f"{path}: a row does not run through the model: {one_line(e)} "
                          f"(the file holds latents, {', '.join(held) or 'no cond. or shared. kwargs'}"
                          f"{_expected(cond, latents, model, adapter)})") from None


def _expected(cond: dict, latents: torch.Tensor, model, adapter) -> str:
    """What of the teacher's inputs (inputs.example_row of its family and config) a file's row does
    not fit: its latents' layout or channels, and the forward kwargs it holds under neither 'cond.'
    nor 'shared.'; '' where it fits both (or the model has no config)."""
    if getattr(model, "config", None) is None:
        return ""
    example, said = example_row(adapter.family, model.config), []
    want = example["hidden_states"]  # (1, C, p, p) PixArt, (1, 1, C) Flux (packed)
    axis = 1 if adapter.family == "pixart" else -1
    if latents.ndim != want.ndim or latents.shape[axis] != want.shape[axis]:
        layout = "(C, H, W)" if adapter.family == "pixart" else "(N, C)"
        said.append(f"the teacher takes latents rows {layout} of C = {want.shape[axis]} channels, the file's "
                    f"are {tuple(latents.shape[1:])}")
    held = {name for k in ("cond", "shared") for name in cond.get(k, {})}
    missing = set(example) - held - {"hidden_states", "timestep", "added_cond_kwargs"}
    if missing:
        lacked = sorted(f"{'shared' if k in SHARED_KWARGS else 'cond'}.{k}" for k in missing)
        said.append(f"it lacks {', '.join(lacked)}, which the teacher takes")
    return "".join(f"; {words}" for words in said)


class FolderSource:
    """Latents + cond from a folder (format above). Files are indexed once; a folder of at most
    `IN_MEMORY_BYTES` (e.g. the teacher-sample cache) is kept in memory, a bigger one is read per
    batch, the rows it needs from each file (the last file read is kept). what: whose files they are,
    as its errors name one (`named`: LATENTS_DIR, SAMPLE_FILE)."""

    IN_MEMORY_BYTES = 2 * 2**30

    def __init__(self, folder: str | Path, what: str = LATENTS_DIR):
        self.folder, self.what = latents_folder(folder), what
        self.files = latents_files(self.folder)
        self.counts, self._first, self._first_shared = [], None, {}  # (path, shapes), shared. of the first file
        keep = sum(p.stat().st_size for p in self.files) <= self.IN_MEMORY_BYTES
        self._resident = [] if keep else None
        for path in self.files:
            with named(what):
                data = _read(path)
                self._check(path, data)
            self.counts.append(len(data["latents"]))
            if keep:
                self._resident.append(data)
        self.offsets = torch.tensor([0] + self.counts).cumsum(0)  # (F + 1,)
        self._cached: tuple[Path, dict] | None = None

    def _check(self, path: Path, data: dict) -> None:
        check_file(path, data)
        shapes = {k: tuple(v.shape) for k, v in data.items()}
        if self._first is None:
            self._first = (path, shapes)
            self._first_shared = _shared(path, data)
        else:
            check_layout(path, shapes, *self._first)
            check_shared(path, _shared(path, data), self._first[0], self._first_shared)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, i: int) -> dict:
        if self._resident is not None:
            return self._resident[i]
        path = self.files[i]
        if self._cached is None or self._cached[0] != path:
            with named(self.what):
                self._cached = (path, _read(path))
        return self._cached[1]

    def batch(self, batch_size: int, generator: torch.Generator):
        rows = torch.randint(0, len(self), (batch_size,), generator=generator)  # (B,)
        file_of = torch.searchsorted(self.offsets, rows, right=True) - 1  # (B,)
        parts: dict[str, list] = {}
        order = []
        for f in file_of.unique().tolist():
            pick = (file_of == f).nonzero().flatten()
            data = self._file(f)
            local = rows[pick] - self.offsets[f]
            for key, value in data.items():
                if not key.startswith("shared."):
                    parts.setdefault(key, []).append(value[local])
            order.append(pick)
        inverse = torch.cat(order).argsort()  # back to draw order
        flat = {k: torch.cat(v)[inverse] for k, v in parts.items()}
        flat.update(self._first_shared)  # every file holds these values (check_shared)
        tree = _unflatten(flat)
        cond = {**tree.get("cond", {}), **tree.get("shared", {})}
        return tree["latents"], cond


def write_shard(path: Path, latents: torch.Tensor, cond: dict) -> None:
    """One file of the folder format (atomic: written beside, then renamed). cond: forward kwargs;
    SHARED_KWARGS go under 'shared.', other tensors (nested dicts flattened) under 'cond.'."""
    from safetensors.torch import save_file

    flat = {"latents": latents.contiguous()}
    for key, value in cond.items():
        _flatten(("shared." if key in SHARED_KWARGS else "cond.") + key, value, flat)
    flat = {k: v.detach().cpu().contiguous() for k, v in flat.items()}
    tmp = path.with_suffix(".tmp")
    save_file(flat, str(tmp))
    tmp.replace(path)
