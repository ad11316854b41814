"""The square roots of the output Fishers a pass weights its targets by, and what a zero one means.

`sqrt_pair`: L = (F + λI)^{1/2} and L⁻¹ of a Fisher as measured (F, its gradient rows, or F's
eigendecomposition `eigen`); `Roots`: every weighted target's Fisher kept (on disk or in memory), its
(L, L⁻¹) computed when asked, only a few pairs held; `zero_fisher_words` / `fisher_measured_words`: the
warning for targets whose output Fisher is zero. The Fishers themselves are measured in svd_fisher.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress.calib_spill import NamedFiles
from compress.dtype_range import overflow_hint
from compress.errors import NumericError
from compress.io_tensors import nonfinite
from compress.passes.svd_fisher import F64, is_rows


def sqrt_pair(fisher, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L = (F + λI)^{1/2} and L⁻¹, λ = damping · mean eigenvalue (keeps L invertible), of F, of
    a Fisher measured as its rows (`FisherSum`) or of F's eigendecomposition (`eigen`)."""
    if isinstance(fisher, tuple):
        return _sqrt_pair_of_eigen(*fisher, damping)
    if is_rows(fisher):
        return _sqrt_pair_of_rows(fisher, damping)
    return _sqrt_pair_of_eigen(*eigen(fisher), damping)


def eigen(fisher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues (out,), eigenvectors (out, out)) of F's symmetric part: sqrt_pair's O(out³) part,
    whatever the damping; as many bytes as F."""
    vals, vecs = torch.linalg.eigh(0.5 * (fisher + fisher.T))
    return vals, vecs


def _sqrt_pair_of_eigen(vals: torch.Tensor, vecs: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt_pair of F = V diag(vals) Vᵀ: two products V diag(√(vals + λ))^{±1} Vᵀ."""
    lam = damping * float(vals.clamp_min(0).mean()) or 1.0
    root = (vals.clamp_min(0) + lam).sqrt()
    return (vecs * root) @ vecs.T, (vecs / root) @ vecs.T


def _sqrt_pair_of_rows(rows: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt_pair of F = RᵀR from R (n, out), n < out, through the n x n Gram R Rᵀ = U S² Uᵀ:
    F's eigenvectors V = Rᵀ U S⁻¹ for the nonzero S², and on the rest of the space F + λI = λI.
    So L = √λ I + V (√(S² + λ) − √λ) Vᵀ, and L⁻¹ likewise; O(n · out²) instead of O(out³)."""
    r = rows.to(F64)  # (n, out)
    vals, u = torch.linalg.eigh(r @ r.T)  # (n,), (n, n)
    vals = vals.clamp_min(0)
    lam = damping * float(vals.sum()) / r.shape[1] or 1.0  # damping · mean eigenvalue of F
    keep = vals > vals.max() * 1e-12
    vals, vecs = vals[keep], (r.T @ u[:, keep]) / vals[keep].sqrt()  # (k,), (out, k)
    eye = torch.eye(r.shape[1], dtype=F64, device=r.device)
    root, small = (vals + lam).sqrt(), lam**0.5
    return (small * eye + (vecs * (root - small)) @ vecs.T,
            eye / small + (vecs * (1 / root - 1 / small)) @ vecs.T)


def zero_fisher_words(names: list[str], total: int, fisher: str = "all", guided: bool = False,
                      shown: int = 3) -> str:
    """The warning for the targets `names` whose output Fisher is zero, of `total` weighted ones: one
    names its layer; more are counted, the first `shown` named (T1's Flux teacher whose modulation
    weights are zero, every block's gates zero: 41 of its 41 targets). Its words say what svd.fisher
    measured (`fisher`, `guided`: its sweeps probe the guided prediction): fisher_measured_words."""
    one = len(names) == 1
    said = fisher_measured_words(fisher, guided, one)
    if one:
        return (f"layer '{names[0]}': its output Fisher is zero ({said}, or the gradients underflowed); it is "
                "fitted without output weighting")
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    weighted = "weighted modulation targets" if fisher == "modulation" else "weighted targets"
    return (f"svd: {len(names)} of {total} {weighted} have a zero output Fisher ({', '.join(names[:shown])}"
            f"{more}): {said}, or the gradients underflowed; they are fitted without output weighting")


def fisher_measured_words(fisher: str, guided: bool = False, one: bool = True) -> str:
    """What a zero output Fisher under svd.fisher `fisher` means, of one target or (`one` false) several:
    `all` / `modulation` probe the final prediction (the guided one where `guided`), `block` each block's
    own output. Zero modulation gates cut a block's attention and MLP outputs off from both; not a
    modulation linear's (its gate rows), so `modulation`'s words give no such example."""
    outputs = "its output" if one else "their outputs"
    if fisher == "block":
        whose = "its block's output" if one else "their blocks' outputs"
        what = (f"{whose} (fisher: block measures each block's own, not the prediction's) "
                f"{'does' if one else 'do'} not change with {outputs}")
    else:
        what = f"{'the guided prediction' if guided else 'the prediction'} does not change with {outputs}"
    example = "" if one or fisher == "modulation" else " (as in blocks whose modulation gates are zero)"
    return f"{what} on the calibration inputs{example}"


class Roots:
    """name -> (L, L⁻¹) of each weighted target's output Fisher (sqrt_pair), computed when asked
    from the Fishers kept on disk under `folder` (calib_spill.NamedFiles; in memory when folder is
    None), so a pass never holds every target's out x out pair at once: Flux.1-dev's modulation
    alone would be 2 x 77 of up to 18432² float64 (241 GiB). The pairs asked for last stay until
    they pass `keep_bytes`; with `groups` (name -> the key of the targets the walk visits together:
    (group, block) of a LinearInfo) only those of the group asked for last: asking for a pair of
    another group drops them first (the walk visits a block's targets together and comes back to
    none; compensation's line search asks for each pair of a stage many times).
    reuse: the folder is keyed to the model and inputs the Fishers are measured on, so the ones an
    interrupted pass left there are kept (and not measured again); else they are deleted first.
    revisit: a later walk asks for the pairs again (allocation: global's two walks), so a Fisher kept
    as F is replaced where it is kept by its eigendecomposition (`eigen`, as many bytes) when its pair
    is first asked for: each F is decomposed once, a pair asked for again costs two products.
    measured: (svd.fisher, whether its sweeps probe the guided prediction), what its words say was measured.
    device: where the Fishers kept on disk are read onto (the pass's: a pass resumed on another device than
    the one that measured them reads them there; NamedFiles)."""

    def __init__(self, folder: Path | None, damping: float, keep_bytes: float, reuse: bool = False,
                 names=None, shared=None, groups: dict | None = None, revisit: bool = False,
                 measured: tuple[str, bool] = ("all", False), device: torch.device | str | None = None):
        self.folder, self.damping, self.keep_bytes, self.revisit = folder, damping, keep_bytes, revisit
        self.measured = measured
        self.groups = groups or {}  # name -> the key of the targets visited together (None: one group)
        self.names = names  # a view's subset (only())
        # name -> Fisher (on disk); name -> (L, L⁻¹) asked for last; both shared with views
        self.store, self.recent = shared if shared is not None else (
            NamedFiles(folder, device) if folder is not None else {}, {})
        if shared is None and not reuse:
            self.store.clear()
        self.zero: list[str] = []  # the targets added with a zero Fisher, not yet said (say_zero)

    def say_zero(self) -> None:
        """One warning for the targets added with a zero output Fisher since it was last said
        (zero_fisher_words), then none."""
        if self.zero:
            from compress.report import warn

            warn(zero_fisher_words(self.zero, len(self), *self.measured))
            self.zero = []

    def add(self, name: str, fisher: torch.Tensor, dtype: torch.dtype = torch.float16) -> None:
        """The output Fisher of layer `name`, measured by a backward in compute dtype `dtype` (what its
        error suggests; float16 where the caller does not say)."""
        if nonfinite(fisher):
            whose = "its block output's" if self.measured[0] == "block" else "the prediction's"
            raise NumericError(f"layer '{name}': its output Fisher ({whose} gradients) holds "
                               f"NaN/Inf; the backward overflowed ({overflow_hint(dtype)})")
        if not bool(fisher.detach().abs().amax() > 0) and name not in self.zero:
            self.zero.append(name)  # said together (say_zero): a teacher with zero gates has dozens; once
            # though global allocation's second walk adds it again (fisher: block)
        self.store[name] = fisher  # read back on the pass's device (`device`)
        self.recent.pop(name, None)

    def only(self, names) -> "Roots":
        """A view on the targets named (sharing the stored Fishers)."""
        return Roots(self.folder, self.damping, self.keep_bytes, names=set(names) & set(self),
                     shared=(self.store, self.recent), groups=self.groups, revisit=self.revisit,
                     measured=self.measured)

    def __iter__(self):
        return iter(n for n in self.store if self.names is None or n in self.names)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name) -> bool:
        return name in self.store and (self.names is None or name in self.names)

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self:
            raise KeyError(name)
        if name not in self.recent:
            self._leave_others(name)
            try:
                self.recent[name] = sqrt_pair(self._kept(name), self.damping)
            except torch.linalg.LinAlgError as e:
                raise NumericError(f"layer '{name}': the square root of its output Fisher failed "
                                   f"({str(e).splitlines()[0]})") from None
            self._trim(name)
        return self.recent[name]

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def _kept(self, name: str):
        """name's Fisher as kept (F, its rows or its eigendecomposition); with `revisit` F is replaced
        by its eigendecomposition first."""
        kept = self.store[name]
        if self.revisit and torch.is_tensor(kept) and not is_rows(kept):
            kept = eigen(kept)  # F goes before its pair is made
            self.store[name] = kept
        return kept

    def _leave_others(self, name: str) -> None:
        """Drops the pairs held of targets outside `name`'s group (`groups`)."""
        group = self.groups.get(name)
        for other in [n for n in self.recent if self.groups.get(n) != group]:
            del self.recent[other]

    def _trim(self, newest: str) -> None:
        size = lambda pair: sum(t.numel() * t.element_size() for t in pair)  # noqa: E731
        while len(self.recent) > 1 and sum(size(p) for p in self.recent.values()) > self.keep_bytes:
            del self.recent[next(n for n in self.recent if n != newest)]

    def close(self, keep: bool = False) -> None:
        """Says the zero Fishers not yet said (fisher: block measures them as the walk goes); drops the
        pairs held; deletes the Fishers on disk unless `keep` (an interrupted pass leaves them for the
        next run)."""
        self.say_zero()
        self.recent.clear()
        if not keep:
            self.store.clear()
