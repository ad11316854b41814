"""Block-by-block calibration: capture inputs, stream float64 Grams, chain blocks (DESIGN.md `calib.py`;
the statistics, their hooks and cache are in calib_stats.py).

A *stats key* names one Gram. Linears that read the same tensor share a key (their `input_key`:
q/k/v of one attention, Flux modulation linears on silu(temb), PixArt cross-attn k/v on the caption).
A linear with a huge input and fewer outputs accumulates its output Gram Σ yᵀy = W G Wᵀ instead,
under the key `<name>#out` (see `Reader.output`).

Flow of one calibration (`BlockCalibration`):
1. `conditioning(...)`: Grams of the modulation inputs over a dense timestep grid (cheap truncated
   forwards that stop as soon as every conditioning reader has fired).
2. `capture(...)`: the first block's inputs for every calibration batch (a forward pre-hook on the
   first block stops the forward by raising `_Stop`), plus stats of top-level linears that run first.
3. `blocks(...)`: a generator; per block it accumulates the stats its readers need, yields them (the
   caller compresses the block in place), then computes the next block's inputs: with the compressed
   weights (`activations="student"`, error-aware) or with the teacher's outputs (`"teacher"`).
   Only one block's activations are resident (one batch of them with `spill`, calib_spill.Spilled);
   a `BlockLoader` (calib_store) may materialize weights just in time.
   With `asymmetric`, each block also runs on a reference stream (the inputs the model as found
   gives it) before the student's forward, and plain input readers pair the two row by row
   (`Stats.cross`), so targets can be fitted to the reference's outputs (linalg_steps.asymmetric_step).
   `rerun(...)`, while a block is yielded: stats of some of its readers from one more run of it,
   after the caller has compressed some of its linears (within-block sequential calibration);
   `dependencies(...)` says which of them must wait for which (calib_flow).
4. `tail(...)`: stats of linears that run after the blocks (one full forward per batch).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from compress.arch import teacher_note
from compress.arch.base import Adapter
from compress.calib_flow import dependencies, first_row
from compress.calib_stats import Reader, Stats, StatsCache, accumulating, pairs, recording
from compress.calib_spill import Spilled
from compress.calib_store import BlockLoader
from compress.progress import bar as progress_bar


class _Stop(Exception):
    """Raised by a capture hook to end a forward early (private; never escapes this module)."""


# ----------------------------------------------------------------------------- helpers


def model_digest(model: nn.Module, extra=None, loader: BlockLoader | None = None) -> str:
    """A cheap fingerprint of the model as it is now: module structure (so removed blocks and
    earlier factorizations show), a few values of every parameter (so retrained weights show)
    and `extra` (e.g. the block map). Part of every cache name: the runner's fingerprint covers
    the teacher and calibration config, not what earlier passes did to the student. Parameters on
    the meta device (streamed blocks) take their values from `loader` where it stores them (the
    files an earlier streamed pass wrote its blocks to: `CheckpointBlocks.ends`)."""
    h = hashlib.sha1(repr(extra).encode())
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    stored = loader.ends(meta) if meta and hasattr(loader, "ends") else {}
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        if p.device.type != "meta" and p.numel():
            flat = p.detach().reshape(-1)
            h.update(torch.cat([flat[:8], flat[-8:]]).float().cpu().numpy().tobytes())
        elif name in stored:
            h.update(stored[name].numpy().tobytes())
    return h.hexdigest()[:16]


def _with_timestep(batch: dict, t: torch.Tensor) -> dict:
    b = batch["timestep"].shape[0] if batch["timestep"].ndim else 1
    return dict(batch, timestep=t.expand(b).clone())


def block_words(adapter, group: str, index: int, block_map: dict | None = None) -> str:
    """The words of the calibration progress for a block: its module name, as the per-layer warnings
    and inspect's tables name it ('transformer_blocks.0', Flux's 'single_transformer_blocks.3'; the
    group labels 'double block 0' and PixArt's 'block 0' were the reports' keys), with its teacher
    index where removal renumbered it (`block_map`: {group: [teacher index of student block 0, ...]}),
    as inspect labels it: 'transformer_blocks.4 (teacher 5)'."""
    kept = (block_map or {}).get(group) or []
    note = teacher_note(index, kept[index]) if index < len(kept) else ""
    return f"{adapter.group(group).attr}.{index}{note}"


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


@contextlib.contextmanager
def _swapped(model: nn.Module, modules: dict[str, nn.Module]):
    """`modules` (name -> module) put in the model in place of what is there now; restored after."""
    saved = {name: model.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            model.set_submodule(name, module)
        yield
    finally:
        for name, module in saved.items():
            model.set_submodule(name, module)


@contextlib.contextmanager
def _stopping(model: nn.Module, readers: list[Reader], calls: dict[str, int] | None):
    """Hooks counting how often each reader's module fires (yielded: module -> count) and, with
    `calls`, raising `_Stop` once every module has fired that often. Registered after the stats
    hooks of the forward (hooks run in registration order), so the last reader's rows are taken
    first: an input reader stops before its module runs, an output reader after."""
    fired: dict[str, int] = {}
    outputs = {r.module for r in readers if r.output}

    def fire(name: str) -> None:
        fired[name] = fired.get(name, 0) + 1
        if calls is not None and all(fired.get(n, 0) >= k for n, k in calls.items()):
            raise _Stop

    handles = []
    for name in dict.fromkeys(r.module for r in readers):
        mod = model.get_submodule(name)
        handles.append(mod.register_forward_hook(lambda m, a, o, n=name: fire(n)) if name in outputs
                       else mod.register_forward_pre_hook(lambda m, a, n=name: fire(n)))
    try:
        yield fired
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- the driver


@dataclass
class BlockStats:
    group: str
    index: int
    block: nn.Module
    stats: dict[str, Stats]
    cached: bool = False


@dataclass
class BlockCalibration:
    """One calibration over `batches` (forward kwargs). See the module docstring for the flow."""

    model: nn.Module
    adapter: Adapter
    batches: list[dict]
    activations: str = "student"  # "student" (error-aware) | "teacher"
    cache: StatsCache = field(default_factory=lambda: StatsCache(None))
    loader: BlockLoader = field(default_factory=BlockLoader)
    progress: bool = True
    # student mode: also run each block on a reference stream (the inputs the model as found would
    # give it, before this calibration's caller compressed anything) and accumulate Stats.cross
    asymmetric: bool = False
    inputs: list | None = None  # [(args, kwargs)] of the next block to run
    reference: list | None = None  # the same, on the reference stream (asymmetric)
    spill: Path | None = None  # keep block inputs and outputs here, one file per batch (Spilled)
    sampler: dict | None = None  # the teacher pipeline's scheduler config: where `conditioning`'s grid lies
    block_map: dict | None = None  # {group: [teacher index of each student block]}: the progress names it

    def __post_init__(self):
        if self.activations not in ("student", "teacher"):
            raise ValueError(f"activations must be 'student' or 'teacher', got {self.activations!r}")
        if self.asymmetric and self.activations != "student":
            raise ValueError("asymmetric calibration needs student activations")

    def conditioning(self, readers: list[Reader], grid: int) -> dict[str, Stats]:
        """Stats of conditioning inputs over `grid` timesteps per calibration batch (0: the batches'
        own timesteps), placed as the sampler (`self.sampler`) places `grid` steps at the batch's
        resolution (`adapter.timestep_grid`). Each forward stops once every reader key has fired."""
        stats: dict[str, Stats] = {}
        if not readers:
            return stats
        keys = {r.key for r in readers}
        fired: set[str] = set()

        def on_fire(r):
            fired.add(r.key)
            if fired >= keys:
                raise _Stop

        runs = [(b, None) for b in self.batches] if grid <= 0 else [
            (b, t) for b in self.batches for t in self.adapter.timestep_grid(grid, b, self.sampler)]
        skip = fired.__contains__  # one reader per key and forward (later readers see the same)
        with accumulating(self.model, readers, stats, on_fire, lambda r: skip(r.key)), torch.no_grad(), \
                progress_bar(self.progress) as bar:
            task = bar.add_task("calibrate: conditioning", total=len(runs))
            for batch, t in runs:
                fired.clear()
                with contextlib.suppress(_Stop):
                    self.model(**(batch if t is None else _with_timestep(batch, t)))
                bar.advance(task)
        return stats

    def capture(self, readers: list[Reader] = (), label: str = "calibrate: capture") -> dict[str, Stats]:
        """Capture the first block's inputs of every batch; stats of `readers` that fire before it.
        `label`: its progress bar's (a second capture says why it runs)."""
        _, _, first = next(self.adapter.iter_blocks(self.model))
        captured, stats = self._store(), {}

        def grab(mod, args, kwargs):
            captured.append(_detach((args, kwargs)))
            raise _Stop

        handle = first.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with accumulating(self.model, readers, stats) as acc, torch.no_grad(), \
                    progress_bar(self.progress) as bar:
                task = bar.add_task(label, total=len(self.batches))
                for batch in self.batches:
                    acc.caption = self.adapter.caption_rows(batch)
                    with contextlib.suppress(_Stop):
                        self.model(**batch)
                    bar.advance(task)
        finally:
            handle.remove()
        if len(captured) != len(self.batches):
            raise RuntimeError("the first block did not run for every calibration batch")
        self.inputs = captured
        if self.asymmetric and self.reference is None:  # later captures see compressed top-level layers
            self.reference = captured
        return stats

    def blocks(self, readers_for: Callable[[str, int], list[Reader]],
               cache_name: Callable[[str, int], str | None] = lambda g, i: None) -> Iterator[BlockStats]:
        """Per block: accumulate its readers' stats (or load them from the cache under
        `cache_name(group, index)`), yield them, then advance the inputs (after the caller has
        compressed the block, in student mode)."""
        if self.inputs is None:
            raise RuntimeError("call capture() before blocks()")
        n_blocks = sum(self.adapter.block_counts(self.model).values())
        with progress_bar(self.progress) as bar:
            task = bar.add_task("calibrate: blocks", total=n_blocks)
            for group, index, block in self.adapter.iter_blocks(self.model):
                bar.update(task, description=f"calibrate: {block_words(self.adapter, group, index, self.block_map)}")
                self.loader.materialize(group, index, block)
                readers = readers_for(group, index)
                name = cache_name(group, index) if readers else None
                stats = self.cache.load(name) if name else None
                teacher = self.activations == "teacher"
                cached, outputs, ref_outputs = stats is not None, None, None
                if stats is None:
                    stats, outputs, ref_outputs = self._run(block, readers, keep=teacher)
                    if name:
                        self.cache.save(name, stats)
                elif teacher:  # the teacher's outputs, before the caller compresses the block
                    _, outputs, _ = self._run(block, [], keep=True)
                if self.reference is not None and ref_outputs is None:  # before the block changes
                    ref_outputs = self._reference_outputs(block)
                yield BlockStats(group, index, block, stats, cached)
                if outputs is None:
                    _, outputs, _ = self._run(block, [], keep=True)
                self.inputs = self._advance(group, self.inputs, outputs)
                if self.reference is not None:
                    self.reference = self._advance(group, self.reference, ref_outputs)
                self.loader.release(group, index, block)
                bar.advance(task)

    def _store(self) -> list:
        """Where one activation per batch goes: a list, or files under `spill`."""
        return Spilled(self.spill) if self.spill is not None else []

    def _advance(self, group: str, inputs: list, outputs: list) -> list:
        advanced = self._store()
        for (a, k), o in zip(inputs, outputs):
            advanced.append(self.adapter.next_inputs(group, a, k, o))
        return advanced

    def rerun(self, block, readers: list[Reader], original: dict[str, nn.Module]) -> dict[str, Stats]:
        """Stats of `readers` from one more run of the block `blocks` has just yielded, on the same
        inputs, after the caller has compressed some of its linears (within-block sequential
        calibration). With a reference stream the reference forwards run through `original` (name
        -> the module as the block was yielded, before the caller replaced it): the pairing sees
        the reader inputs the uncompressed block gives the reference stream."""
        stats, _, _ = self._run(block, readers, keep=False, original=original)
        return stats

    def dependencies(self, block, readers: list[str], linears: list[list[str]]) -> list[set[int]] | None:
        """Which stages of the block `blocks` has just yielded read what other stages' linears make
        (calib_flow.dependencies), from one forward and backward of it on the first row of its first
        calibration batch (student stream), before the caller changes it."""
        args, kwargs = self.inputs[0]
        rows = self.adapter.hidden_of(args, kwargs)[0].shape[0]
        return dependencies(self.model, self.adapter, block, *first_row(rows, args, kwargs), readers, linears)

    def _run(self, block, readers, keep, original: dict[str, nn.Module] | None = None):
        """Run one block over all current inputs: stats of readers, the outputs (if keep) and, with
        a reference stream and readers, the block's outputs on it (else None). Each batch's reference
        forward runs first (through the `original` modules, if given: see `rerun`) and its reader
        inputs pair row by row with the student's (Stats.cross). Where no output is wanted (a
        `rerun`; a student-mode block's stats, its outputs taken after it is compressed), the
        forwards after the first end once every reader has fired as often as in the first."""
        stats, outputs = {}, self._store()
        paired = self.reference is not None and any(pairs(r) for r in readers)
        ref_outputs = self._store() if paired and original is None else None
        early, calls = bool(readers) and not keep and ref_outputs is None, None
        with accumulating(self.model, readers, stats) as acc, torch.no_grad():
            for b, (args, kwargs) in enumerate(self.inputs):
                acc.caption = self.adapter.caption_rows(kwargs)
                if paired:
                    acc.paused, acc.partner = True, {}
                    with _swapped(self.model, original or {}), recording(self.model, readers, acc.partner):
                        out, _ = self._forward(block, self.reference[b], readers, calls)
                    if ref_outputs is not None:
                        ref_outputs.append(out)
                    acc.paused = False
                out, fired = self._forward(block, (args, kwargs), readers, calls)
                if paired and acc.partner:
                    raise RuntimeError(f"{', '.join(acc.partner)} ran in the reference forward but not "
                                       "in the student's")
                if keep:
                    outputs.append(out)
                if early and calls is None:
                    calls = fired
        return stats, (outputs if keep else None), ref_outputs

    def _forward(self, block, inputs: tuple, readers: list[Reader], calls: dict[str, int] | None):
        """(the block's detached outputs on inputs (args, kwargs), or None where it ended early;
        how often each reader module fired). calls: module -> calls after which the forward ends
        (`_stopping`); None: it runs whole."""
        with _stopping(self.model, readers, calls) as fired:
            try:
                return _detach(self.adapter.run_block(block, *inputs)), fired
            except _Stop:
                return None, fired

    def _reference_outputs(self, block) -> list:
        outputs = self._store()
        with torch.no_grad():
            for a, k in self.reference:
                outputs.append(_detach(self.adapter.run_block(block, a, k)))
        return outputs

    def tail(self, readers: list[Reader]) -> dict[str, Stats]:
        """Stats of readers that run after the blocks: one full forward of the model per batch."""
        stats: dict[str, Stats] = {}
        if readers:
            with accumulating(self.model, readers, stats), torch.no_grad(), self._just_in_time(), \
                    progress_bar(self.progress) as bar:
                task = bar.add_task("calibrate: after the blocks", total=len(self.batches))
                for batch in self.batches:
                    self.model(**batch)
                    bar.advance(task)
        return stats

    def _just_in_time(self):
        """Whole-model forwards with each block's weights materialized by the loader just before it
        runs and unloaded when the next starts (streamed blocks are on meta: `stream.streamed`);
        nothing for resident weights."""
        if self.loader.resident:
            return contextlib.nullcontext()
        from compress.stream import streamed

        return streamed(self.model, self.loader, self.adapter)
