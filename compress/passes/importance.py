"""Block importance: skip each block (its output := its input, a residual pass-through) and measure the
teacher-relative error ||pred_skip - pred|| / ||pred|| of the final prediction, per timestep bucket; plus
the proxy that costs no extra forward: 1 - cos(block input, block output) of the residual stream.

Cost: per batch one clean forward caches every block's output; skipping block i then replays blocks 0..i-1
from that cache (no compute), passes block i's input through and runs only blocks i+1..: N + N(N-1)/2 block
evaluations instead of N + N(N-1). Blocks are swapped for replay stubs inside the real diffusers forward, so
embeddings and the output head run the model's own code (no fork): those forwards are in importance_forward.py.
Buckets: "early" = high noise.
With block weights streamed, the same evaluations run ordered by block (importance_stream.py).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from compress.arch.base import Adapter
from compress.calib_store import BlockLoader
from compress.errors import UserError, not_at_least_one
from compress.inputs import noise_levels
from compress.passes.base import Pass, RunContext
from compress.passes.importance_forward import (block_cosine, clean_pass, proxy_pass, skip_prediction, sq_norm,
                                                to_model)
from compress.passes.importance_config import ImportanceConfig
from compress.passes.importance_stream import wave_pass
from compress.progress import bar
from compress.words import counted

BUCKET_NAMES = {1: ["all"], 2: ["early", "late"], 3: ["early", "middle", "late"]}


@dataclass
class BlockScore:
    group: str
    index: int | None  # in the scanned model (importance.json); report.json: in the output, None once removed
    teacher_index: int  # through the block map at scan time
    scan: float  # ||pred_skip - pred|| / ||pred|| over all inputs (NaN when not scanned)
    scan_by_bucket: list[float]
    proxy: float  # 1 - mean cos(block input, block output), tokens of every stream
    proxy_by_bucket: list[float]

    @property
    def name(self) -> str:
        if not isinstance(self.index, int):  # a later removal took it (report.json's null, read as NaN)
            return f"{self.group} (teacher {self.teacher_index}, removed)"
        return f"{self.group}.{self.index}"

    def score(self, criterion: str) -> float:
        return self.scan if criterion == "scan" else self.proxy


@dataclass
class ImportanceResult:
    family: str
    buckets: list[str]  # early (high noise) .. late
    bucket_ranges: list[list[float]]  # noise level [high, low) per bucket; 1 = pure noise
    samples_per_bucket: list[int]
    blocks: list[BlockScore]  # execution order
    spearman: float  # proxy vs scan, over all blocks
    block_evaluations: int
    naive_block_evaluations: int

    def ranked(self, criterion: str = "scan", group: str | None = None) -> list[BlockScore]:
        """Least important first."""
        return sorted((b for b in self.blocks if group in (None, b.group)),
                      key=lambda b: b.score(criterion))

    def to_dict(self) -> dict:
        return _swap(asdict(self), math.nan, None)

    @classmethod
    def from_dict(cls, d: dict) -> "ImportanceResult":
        known = {f.name for f in fields(cls)}
        d = _swap({k: v for k, v in d.items() if k in known}, None, math.nan)
        d["blocks"] = [BlockScore(**b) for b in d["blocks"]]
        return cls(**d)


# ---- timesteps -> buckets -----------------------------------------------------------------------
def bucket_of(level: torch.Tensor, buckets: int) -> torch.Tensor:
    """(B,) long: 0 = early (highest noise) .. buckets-1 = late."""
    return ((1.0 - level) * buckets).floor().long().clamp(0, buckets - 1)


def bucket_names(buckets: int) -> list[str]:
    return BUCKET_NAMES.get(buckets, [f"b{k}" for k in range(buckets)])


# ---- cost ---------------------------------------------------------------------------------------
def scan_cost(n_blocks: int, n_batches: int, skips: bool = True) -> dict:
    """Forward passes and block evaluations of a scan (stated before it starts)."""
    skip_evals = n_blocks * (n_blocks - 1) // 2 if skips else 0
    return {"forward_passes": n_batches * (1 + (n_blocks if skips else 0)),
            "block_evaluations": n_batches * (n_blocks + skip_evals),
            "naive_block_evaluations": n_batches * (n_blocks + (n_blocks * (n_blocks - 1) if skips else 0))}


# ---- the scan -----------------------------------------------------------------------------------
@torch.no_grad()
def scan(model: nn.Module, adapter: Adapter, batches: list[dict], buckets: int = 3, progress: bool = True,
         skips: bool = True, block_map: dict[str, list[int]] | None = None,
         loader: BlockLoader | None = None, columns: bool = True) -> ImportanceResult:
    """Skip-one-block errors (skips=False: proxy only, one forward per batch) over forward-kwargs
    batches. loader: block weights streamed (compress.stream.CheckpointBlocks), each block read
    once per batch (importance_stream); None: the model is resident. columns: the per-bucket
    scores are shown (an importance pass's table and heatmap), so empty buckets are noted; False
    for remove_blocks' choice, which reads the scores over all inputs alone."""
    if not batches:
        raise UserError("importance: no calibration inputs to scan")
    if not isinstance(buckets, int) or buckets < 1:
        raise UserError(not_at_least_one("buckets", buckets))  # a config's validate or the CLI refused it first
    if columns:
        _note_empty_buckets(adapter, batches, buckets)
    names = [(g, i) for g, i, _ in adapter.iter_blocks(model)]
    n = len(names)
    cost = scan_cost(n, len(batches), skips)
    diff = torch.zeros(n, buckets, dtype=torch.float64)  # sum ||pred_skip - pred||^2
    ref = torch.zeros(buckets, dtype=torch.float64)  # sum ||pred||^2
    cos = torch.zeros(n, buckets, dtype=torch.float64)
    count = torch.zeros(buckets, dtype=torch.float64)
    if progress:
        _say_cost(adapter.family, n, cost, skips)
    with bar(progress) as prog:  # off a terminal (a job's log): a line per tenth of the scan
        task = prog.add_task("importance", total=len(batches) * (1 + (n if skips else 0)))
        for batch in batches:
            kwargs = to_model(batch, model)
            pred, block_cos, skipped = _one_batch(model, adapter, kwargs, skips, loader,
                                                  lambda: prog.advance(task))  # pred (B, ...)
            bucket = bucket_of(adapter.noise_level(kwargs["timestep"]), buckets)
            bucket = bucket.expand(pred.shape[0]) if bucket.numel() == 1 else bucket  # (B,)
            ref += torch.bincount(bucket, sq_norm(pred), buckets)
            count += torch.bincount(bucket, minlength=buckets).double()
            for i in range(n):
                cos[i] += torch.bincount(bucket, block_cos[i], buckets)
            for i, s in enumerate(skipped):
                diff[i] += torch.bincount(bucket, sq_norm(s - pred), buckets)
            del skipped  # it holds this batch's block activations: free them before the next
    return _result(adapter.family, names, diff if skips else None, ref, cos, count, cost, block_map)


def _note_empty_buckets(adapter: Adapter, batches: list[dict], buckets: int) -> None:
    """Says before the scan how many timestep buckets no calibration input falls in (their
    columns of the table and heatmap stay empty)."""
    levels = torch.cat([adapter.noise_level(torch.as_tensor(b["timestep"]).float().reshape(-1))
                        for b in batches])  # (rows,)
    empty = buckets - len(set(bucket_of(levels, buckets).tolist()))
    if empty:
        from compress.report import note

        hold, columns = ("holds", "its column stays") if empty == 1 else ("hold", "their columns stay")
        note(f"importance: {empty} of the {buckets} timestep buckets {hold} no calibration input "
             f"({counted(len(set(levels.tolist())), 'distinct timestep')}); {columns} empty (fewer "
             "buckets, or more calibration timesteps)")


def _one_batch(model, adapter, kwargs: dict, skips: bool, loader: BlockLoader | None, tick):
    """(prediction, [cosine proxy (B,) per block], the predictions with block i skipped: an
    iterable, computed as it is read). `tick` once per forward's worth of block evaluations."""
    if not skips:
        from compress.stream import streamed

        with streamed(model, loader) if loader is not None else nullcontext():
            pred, cosines = proxy_pass(model, adapter, kwargs)
        tick()
        return pred, cosines, ()
    if loader is not None:
        pred, cosines, skipped = wave_pass(model, adapter, kwargs, loader, block_cosine, tick)
        tick()
        return pred, cosines, skipped
    pred, inputs, outputs = clean_pass(model, adapter, kwargs)
    tick()

    def each():
        for i in range(len(inputs)):
            yield skip_prediction(model, adapter, kwargs, i, inputs, outputs)
            tick()
    return pred, [block_cosine(adapter, a, b) for a, b in zip(inputs, outputs)], each()


def _say_cost(family: str, n: int, cost: dict, skips: bool) -> None:
    """What the scan will run, before it starts (on the notes' console: rank 0's alone in a launch)."""
    from compress.report import console

    what = f"{cost['forward_passes']} forward passes, {cost['block_evaluations']} block evaluations"
    if skips:
        what += f" (naive re-run of every block: {cost['naive_block_evaluations']})"
    console.print(f"importance scan of {n} {family} blocks: {what}")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
    return [math.sqrt(a / b) if b > 0 else math.nan for a, b in zip(num.tolist(), den.tolist())]


def _result(family, names, diff, ref, cos, count, cost, block_map) -> ImportanceResult:
    k = len(ref)
    blocks = []
    for j, (g, i) in enumerate(names):
        scan_all = _ratio(diff[j].sum()[None], ref.sum()[None])[0] if diff is not None else math.nan
        by_bucket = _ratio(diff[j], ref) if diff is not None else [math.nan] * k
        proxy = [1.0 - c / m if m > 0 else math.nan for c, m in zip(cos[j].tolist(), count.tolist())]
        blocks.append(BlockScore(g, i, block_map[g][i] if block_map else i, scan_all, by_bucket,
                                 1.0 - float(cos[j].sum() / count.sum()), proxy))
    ranges = [[round(1 - b / k, 6), round(1 - (b + 1) / k, 6)] for b in range(k)]
    return ImportanceResult(family, bucket_names(k), ranges, [int(c) for c in count.tolist()], blocks,
                            spearman(blocks), cost["block_evaluations"], cost["naive_block_evaluations"])


def spearman(blocks: list[BlockScore]) -> float:
    """Rank correlation of proxy vs scan (NaN when undefined)."""
    from scipy.stats import spearmanr

    x, y = [b.proxy for b in blocks], [b.scan for b in blocks]
    if len(blocks) < 2 or any(map(math.isnan, x + y)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input -> NaN with a warning
        return float(spearmanr(x, y).statistic)


# ---- files --------------------------------------------------------------------------------------
def save_json(result: ImportanceResult, path) -> Path:
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomically(path, write) -> Path:
    """`write(tmp)` into a temp file beside `path` (same suffix: matplotlib picks the format by it),
    then renamed onto `path`, as the run's other files are written: an interrupt (Ctrl-C) or an error
    mid-write leaves the old file, or none, never a cut-off one under the final name. A `path` that
    is a symlink is written at its target (the temp file beside the target, one filesystem for the
    rename), so the link stays a link. A failed write's OSError names `path` (not the temp file, which
    is gone; PIL's names none), as the one-line errors of a full disk say it (runner_failures)."""
    path = Path(path)
    target = path.resolve()  # a link's file, wherever it is; `path` itself when no link
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        write(tmp)
        tmp.replace(target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            e.filename, e.filename2 = str(path), None
        raise
    return path


def load_json(path) -> ImportanceResult:
    return ImportanceResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _swap(x, old, new):
    """Recursively replace NaN by None (old=NaN) or None by NaN (old=None) in JSON-like data."""
    if (old is None and x is None) or (old is not None and isinstance(x, float) and math.isnan(x)):
        return new
    if isinstance(x, dict):
        return {k: _swap(v, old, new) for k, v in x.items()}
    return [_swap(v, old, new) for v in x] if isinstance(x, list) else x


# ---- the pass -----------------------------------------------------------------------------------
def level_keys(kind: str) -> tuple[str, ...]:
    """The recipe keys inputs.noise_levels reads of a calibration source of `kind` (and the source,
    which decides the kind): a note on the buckets they hold names their --sets (Pass.calibration_notes)."""
    read = ("timesteps", "sample_steps") if kind == "pipeline" else ("num_prompts", "timesteps")
    return tuple(f"calibration.{k}" for k in ("source", *read))


class ImportancePass(Pass):
    name = "importance"
    config_cls = ImportanceConfig
    needs_calibration = True
    changes_weights = False  # measures only: remove_blocks reuses its scores until a pass that does

    def check(self, model, adapter) -> None:
        self.config.validate()

    def calibration_notes(self, calib, kind: str) -> list[tuple[str, str, tuple]]:
        """More buckets than the noise levels the calibration inputs hold (`noise_levels`; calib: the
        recipe's CalibrationConfig, kind: its source's, inputs.source_kind): some buckets hold no input
        whatever is drawn, their columns of the table and heatmap stay empty. Legal (the scores over all
        inputs are the same), so a warning at the key, where `dit-compress importance --buckets` refuses;
        it reads no other key of the pass, and the calibration keys of `level_keys`."""
        buckets = self.config.buckets
        levels, how = noise_levels(calib, kind)
        if buckets <= levels:
            return []
        empty = buckets - levels
        hold, columns = ("holds", "its column") if empty == 1 else ("hold", "their columns")
        return [("buckets", f"importance.buckets {buckets} is more than the {counted(levels, 'noise level')} the "
                            f"calibration inputs hold ({how}): at least {empty} of its buckets {hold} no input, "
                            f"{columns} of the table and heatmap empty; set buckets to {levels if levels == 1 else f'{levels} or fewer'}, or draw "
                            "more calibration inputs", level_keys(kind))]

    def plan(self, model, adapter, calibration_rows: int | None = None) -> dict:
        n = sum(adapter.block_counts(model).values())
        return {"blocks": n, "per_batch": scan_cost(n, 1, not self.config.proxy_only),
                "skip_scan": not self.config.proxy_only,
                "criteria": ["proxy"] if self.config.proxy_only else ["scan", "proxy"]}  # recorded scores

    def check_streaming(self) -> None:
        """Streams: the proxy in one forward per batch, the skip scan reading each block once per
        batch (importance_stream)."""

    def run(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        from compress.passes.importance_report import plot_heatmap

        if ctx.calibration_inputs is None:
            raise UserError("importance: the run has no calibration inputs")
        result = scan(model, ctx.adapter, ctx.calibration_inputs(), self.config.buckets,
                      progress=self.config.progress, skips=not self.config.proxy_only,
                      block_map=ctx.block_map, loader=ctx.blocks)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(result, ctx.run_dir / "importance.json")
        plot_heatmap(result, ctx.run_dir / "importance.png")
        ctx.report["importance"] = dict(result.to_dict(), files=["importance.json", "importance.png"],
                                        student_version=ctx.student_version)  # the model it scored
        return model
