"""Streaming float64 statistics of calibration activations (DESIGN.md `calib.py`): `Stats` (Gram,
sum, rows; the output Gram Σ yᵀy of a wide layer; the cross term with a reference stream), the
`Reader`s that say which module feeds which stats key, the forward hooks that accumulate them
(`accumulating`, `recording`) and the on-disk `StatsCache`. `calib.BlockCalibration` drives them."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress import calib_store
from compress.dtype_range import overflow_hint
from compress.errors import NumericError

F64 = torch.float64
# what the cached statistics hold; part of every run's fingerprint, so caches written by code that
# accumulated something else are not read. 2: caption Grams keep only the tokens attention reads.
# 3: a deduplicated (dedupe) sample counts as often as it is seen, not once (the caption of every
# prompt, timestep and CFG branch: `_Accumulator._sight`).
STATS_VERSION = 3


# ----------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Streaming sums over calibration rows x (d,): gram Σ xᵀx (d, d), total Σ x (d,), rows n.
    For an output Gram, x is the bias-free output W x and `in_sq` holds Σ x_in² per input channel.
    With a reference stream (`BlockCalibration.asymmetric`), `cross` is Σ x_ref x̃ᵀ (d, d): the
    reference input (the model as the pass found it) times the student's, row by row, and
    `ref_total` Σ x_ref (d,) over the same rows (every row is paired: the reference's mean is
    ref_total / rows), which a centered asymmetric fit needs (linalg_steps.centered_asymmetric_step)."""

    gram: torch.Tensor
    total: torch.Tensor
    rows: int = 0
    in_sq: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    ref_total: torch.Tensor | None = None

    @classmethod
    def zeros(cls, dim: int, in_dim: int | None = None, device=None) -> "Stats":
        in_sq = torch.zeros(in_dim, dtype=F64, device=device) if in_dim is not None else None
        return cls(torch.zeros(dim, dim, dtype=F64, device=device),
                   torch.zeros(dim, dtype=F64, device=device), 0, in_sq)

    def add(self, x: torch.Tensor, times: int = 1) -> None:  # x (rows, d), float64
        """Add the rows x, as if `times` times."""
        self.gram += x.T @ x if times == 1 else times * (x.T @ x)
        self.total += x.sum(0) if times == 1 else times * x.sum(0)
        self.rows += times * x.shape[0]

    def add_cross(self, ref: torch.Tensor, x: torch.Tensor) -> None:  # (rows, d) each, float64
        if ref.shape != x.shape:
            raise RuntimeError(f"reference and student inputs differ in shape: {tuple(ref.shape)} vs "
                               f"{tuple(x.shape)}")
        self.cross = ref.T @ x if self.cross is None else self.cross + ref.T @ x
        self.ref_total = ref.sum(0) if self.ref_total is None else self.ref_total + ref.sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.rows, 1)

    @property
    def ref_mean(self) -> torch.Tensor | None:
        """The reference stream's mean input (d,), where the rows were paired (else None)."""
        return None if self.ref_total is None else self.ref_total / max(self.rows, 1)

    def centered(self) -> torch.Tensor:
        """Σ (x − μ)ᵀ(x − μ) = G − n μ μᵀ."""
        mu = self.mean
        return self.gram - self.rows * torch.outer(mu, mu)

    def to_dict(self) -> dict:
        return {"gram": self.gram, "total": self.total, "rows": self.rows, "in_sq": self.in_sq,
                "cross": self.cross, "ref_total": self.ref_total}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(d["gram"], d["total"], int(d["rows"]), d.get("in_sq"), d.get("cross"), d.get("ref_total"))

    @staticmethod
    def complete(d: dict) -> bool:
        """Whether a stored dict holds all a Stats now accumulates: a cross term without the
        reference's sum was written before `ref_total` was kept (such a cache file is not read)."""
        return d.get("cross") is None or d.get("ref_total") is not None


@dataclass(frozen=True)
class Reader:
    """Accumulate `key` from module `module` (a name relative to the model): its input, or with
    `output=True` its bias-free output. `dedupe`: compute an identical sample's Gram once (the
    caption is the same tensor for every timestep of a prompt) but weigh it as often as it is seen,
    so the stats equal those without dedupe. `where` names the block for error messages."""

    key: str
    module: str
    output: bool = False
    dedupe: bool = False
    where: str = "top level"


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).to(F64)  # (tokens, d)


def _digest(sample: torch.Tensor, read: torch.Tensor | None) -> str:
    """A sample's identity: its values, bit for bit, and the rows read of it (`read`, or None)."""
    h = hashlib.sha1(f"{sample.dtype}{tuple(sample.shape)}".encode())
    h.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
    if read is not None:
        h.update(read.numpy().tobytes())
    return h.hexdigest()


def _check_finite(x: torch.Tensor, reader: Reader) -> None:
    if not torch.isfinite(x).all():
        what = "output" if reader.output else "input"
        raise NumericError(f"NaN/Inf in calibration activations: {what} of layer '{reader.module}' "
                           f"({reader.where}; the input of a block's first layer is the output of the "
                           f"block before it; {overflow_hint(x.dtype)})")


class _Accumulator:
    """Forward hooks feeding `Stats` for a set of readers; remove with `close()`."""

    def __init__(self, root: nn.Module, readers: list[Reader], stats: dict[str, Stats],
                 on_fire: Callable[[Reader], None] | None = None,
                 skip: Callable[[Reader], bool] | None = None):
        self.stats, self.on_fire, self.skip, self.handles = stats, on_fire, skip, []
        # key -> {sample digest: [its rows (host, own dtype) or None, sightings not yet added]}
        self.seen: dict[str, dict[str, list]] = {}
        self.paused = False  # hooks do nothing (a reference forward runs)
        self.caption: torch.Tensor | None = None  # (B, L) bool: caption rows read (dedupe readers)
        self.partner: dict[str, torch.Tensor] | None = None  # key -> reference rows of this forward
        for r in readers:
            mod = root.get_submodule(r.module)
            if r.output:
                self.handles.append(mod.register_forward_hook(self._out_hook(r, mod)))
            else:
                self.handles.append(mod.register_forward_pre_hook(self._in_hook(r)))

    def _stat(self, key: str, like: torch.Tensor, in_dim: int | None = None) -> Stats:
        if key not in self.stats:
            self.stats[key] = Stats.zeros(like.shape[-1], in_dim, like.device)
        return self.stats[key]

    def _sight(self, r: Reader, x: torch.Tensor) -> torch.Tensor:
        """The samples (leading dim) of x first seen under this key, of each only the caption rows
        attention reads (`caption`, where the forward has a mask of x's shape): (rows read, d).
        A sample seen again is not returned but counted (its rows kept, on the host, from its second
        sighting: a sample seen once keeps nothing); `finish` adds it once per later sighting."""
        seen = self.seen.setdefault(r.key, {})
        mask = self.caption
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            mask = None
        reads = None if mask is None else mask.cpu()  # (B, L) bool
        first = []
        for b in range(x.shape[0]):
            sample = x[b].detach().cpu()  # (L, d)
            read = None if reads is None else reads[b]  # (L,)
            digest = _digest(sample, read)
            if digest not in seen:
                seen[digest] = [None, 0]
                first.append(b)
                continue
            entry = seen[digest]
            if entry[0] is None:
                entry[0] = sample.clone() if read is None else sample[read]
            entry[1] += 1
        if mask is None:
            return x[first]
        return x[first][mask[first].to(x.device)]  # (rows read, d)

    def finish(self) -> None:
        """Add the later sightings of the deduplicated samples (`_sight`): each sample's Gram once,
        times how often it was seen again."""
        for key, samples in self.seen.items():
            st = self.stats[key]
            for rows, times in samples.values():
                if times:
                    st.add(_rows(rows.to(st.gram.device)), times)
        self.seen = {}

    def _in_hook(self, r: Reader):
        def hook(mod, args):
            if self.paused or (self.skip and self.skip(r)):
                return
            x = args[0]  # (..., in)
            _check_finite(x, r)
            if r.dedupe and x.ndim > 2:
                x = self._sight(r, x)
            rows = _rows(x)
            self._stat(r.key, x).add(rows)
            if self.partner is not None and pairs(r):
                if r.key not in self.partner:
                    raise RuntimeError(f"'{r.module}' ran in the student's forward of {r.where} more "
                                       "often than in the reference's")
                self.stats[r.key].add_cross(_rows(self.partner.pop(r.key)), rows)
            if self.on_fire:
                self.on_fire(r)
        return hook

    def _out_hook(self, r: Reader, mod: nn.Module):
        def hook(_, args, out):
            if self.paused or (self.skip and self.skip(r)):
                return
            x, y = args[0], out  # (..., in), (..., out)
            _check_finite(x, r)
            _check_finite(y, r)
            y = _rows(y)
            if getattr(mod, "bias", None) is not None:
                y = y - mod.bias.detach().to(F64)
            st = self._stat(r.key, y, x.shape[-1])
            st.add(y)
            st.in_sq += _rows(x).square().sum(0)
            if self.on_fire:
                self.on_fire(r)
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def pairs(r: Reader) -> bool:
    """Whether a reader's stats take the cross term with a reference stream: plain input readers (an
    output Gram has no input-side cross; deduplicated inputs, the caption, have no upstream error)."""
    return not r.output and not r.dedupe


@contextlib.contextmanager
def recording(root: nn.Module, readers: list[Reader], into: dict[str, torch.Tensor]):
    """Pre-hooks storing the input of each pairing reader under its key (in its own dtype: float64
    rows only when paired)."""
    def hook(key):
        def record(mod, args):
            into[key] = args[0].detach()
        return record

    handles = [root.get_submodule(r.module).register_forward_pre_hook(hook(r.key))
               for r in readers if pairs(r)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def accumulating(root, readers, stats, on_fire=None, skip=None):
    acc = _Accumulator(root, list(readers), stats, on_fire, skip)
    try:
        yield acc
        acc.finish()
    finally:
        acc.close()


# ----------------------------------------------------------------------------- cache


class StatsCache:
    """torch.save files of float64 stats under `directory` (None disables caching), read back
    onto `device` (where the run computes: a resumed GPU run factorizes them there too)."""

    def __init__(self, directory: Path | None, device: torch.device | str = "cpu"):
        self.directory = Path(directory) if directory else None
        self.device = torch.device(device)
        self.hits: list[str] = []  # names read back that this cache did not write, once each (report.json's cache_hits)
        self.damaged: list[str] = []  # names whose file was damaged (calib_store.load_cached), computed again
        self.saved: set[str] = set()  # names this cache wrote: measured by its pass, not read back (a revisit reads them)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.pt"

    def load(self, name: str) -> dict[str, Stats] | None:
        if self.directory is None or not self._path(name).is_file():
            return None
        raw = calib_store.load_cached(self._path(name), "computed again", bool(self.damaged), map_location=self.device)
        if raw is None:  # damaged: computed again (and saved over it)
            self.damaged.append(name)
        if not isinstance(raw, dict) or not all(Stats.complete(v) for v in raw.values()):  # older code's file too
            return None
        if name not in self.saved and name not in self.hits:
            self.hits.append(name)
        return {k: Stats.from_dict(v) for k, v in raw.items()}

    def save(self, name: str, stats: dict[str, Stats]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        calib_store.save({k: v.to_dict() for k, v in stats.items()}, self._path(name))  # atomic: never a half file
        self.saved.add(name)
