"""What the importance scan shows: a rich table (most important block first) and a heatmap PNG of
the skip error per block and timestep bucket, with the cosine proxy below (importance.py scans)."""

from __future__ import annotations

import math
from pathlib import Path

from compress.arch import group_modules
from compress.passes.importance import ImportanceResult, bucket_names
from compress.report import save_figure
from compress.report_fit import fitted_rows, fitted_table, printable


def render_table(result: ImportanceResult, criterion: str | None = None, width: int | None = None,
                 json_file: str | None = None):
    """A rich Table (or its lines), most important block first: by the skip scan, or by the proxy where the scan
    measured only that (proxy_only). `width`: the terminal's; a table wider than it keeps its block
    names and numbers whole and leaves out the least telling columns first (left_out_first), a line
    under the caption saying which, by bucket name, where they show and the --buckets whose table fits
    whole (left_out_said, buckets_that_fit; report_fit.fitted_table). Rich would fit them by shrinking
    the block column to nothing and cutting numbers ('0.21…'). Where even its least is wider than `width`
    columns: its rows as lines, block first ('single.3: rank 1, scan 0.3433, ...', report_fit.fitted_rows).
    `json_file`: where --json FILE writes the scan, which holds them too (None: not given)."""
    criterion = criterion or ("scan" if any(not math.isnan(b.scan) for b in result.blocks) else "proxy")
    scan = criterion == "scan"
    ranges = ", ".join(f"{b} {hi:.2f}-{lo:.2f}" for b, (hi, lo) in zip(result.buckets, result.bucket_ranges))
    what = "error when the block is skipped" if scan else "the cosine proxy (no skip scan)"
    caption = (f"buckets by noise level (1 = pure noise): {ranges}; proxy = 1 - cos(block in, block out); "
               + (f"Spearman(proxy, scan) = {result.spearman:.3f}; " if scan else "")
               + f"{result.block_evaluations} block evaluations" + _groups_said(result))
    buckets = [f"{name} (n={n})" for name, n in zip(result.buckets, result.samples_per_bucket)]
    headers = ["rank", "block (teacher index)" if renumbered(result) else "block", *(["scan"] if scan else []),
               *buckets, "proxy"]
    rows = [[str(rank), f"{b.group}.{b.teacher_index}", *([_fmt(b.scan)] if scan else []),
             *map(_fmt, b.scan_by_bucket if scan else b.proxy_by_bucket), _fmt(b.proxy)]
            for rank, b in enumerate(reversed(result.ranked(criterion)), 1)]
    columns = [(h, "left" if j == 1 else "right") for j, h in enumerate(headers)]
    short = dict(zip(buckets, result.buckets))  # 'b3' for 'b3 (n=16)'

    def said(left_out: list[str]) -> str:
        fewer = buckets_that_fit(result, columns, rows, width)
        return left_out_said(width, [short.get(h, h) for h in left_out], fewer, json_file)

    return printable(fitted_rows(f"Block importance ({result.family}): {what}", caption, columns, rows, width,
                                 left_out_first(buckets, scan), "", key=1, said=said))


def left_out_said(width: int, names: list[str], fewer: int, json_file: str | None = None) -> str:
    """The caption's line of the columns left out, by bucket name, then where they show (the heatmap,
    written beside the table, and `json_file`, --json FILE's, where it was given), then the ways to them
    all, each a rerun of the scan: in a wider terminal or with --json FILE (where it was not given), or
    (`fewer`: the buckets that fit, 0 where none do) in fewer buckets, last as it measures other spans.
    The ways go to a line of their own where the whole does not fit `width`: 'left out to fit 80 columns:
    b5, proxy; the heatmap shows them' / '(rerun in a wider terminal or with --json FILE, or with
    --buckets 4)'."""
    where = f"the heatmap and {json_file} show them" if json_file else "the heatmap shows them"
    first = f"left out to fit {width} columns: {', '.join(names)}; {where}"
    rerun = "" if json_file else " or with --json FILE"
    ways = f"(rerun in a wider terminal{rerun}" + (f", or with --buckets {fewer}" if fewer else "") + ")"
    return first + (" " if len(first) + 1 + len(ways) <= width else "\n") + ways


def buckets_that_fit(result: ImportanceResult, columns: list[tuple[str, str]], rows: list[list[str]],
                     width: int) -> int:
    """The most buckets, fewer than the scan's, whose table fits `width` with no column left out (0
    where none does): render_table's `columns` with those buckets' headers (each bucket's count the
    most it can hold, _most_samples), its rows' block names and widest score in every cell."""
    fixed = len(columns) - len(result.buckets)
    score = max((cell for row in rows for cell in row[2:]), key=len, default="0.0000")
    fits = 0
    for k in range(1, len(result.buckets)):
        headers = [f"{name} (n={_most_samples(result.samples_per_bucket, k)})" for name in bucket_names(k)]
        tried = [*columns[:fixed - 1], *((h, "right") for h in headers), columns[-1]]
        table = fitted_table("", None, tried, [[*row[:2], *[score] * (len(tried) - 2)] for row in rows], width,
                             (tried[-1][0],), "", key=1)
        if len(table.columns) < len(tried):
            break
        fits = k
    return fits


def _most_samples(counts: list[int], k: int) -> int:
    """The most samples one of `k` buckets can hold, of a scan's `counts` in more buckets (bucket_of:
    equal spans of noise level, so one of the `k` spans overlaps at most len(counts)/k + 1 of them)."""
    span = -(-len(counts) // k) + 1
    return max(sum(counts[i:i + span]) for i in range(len(counts)))


def left_out_first(buckets: list[str], scan: bool) -> tuple[str, ...]:
    """The columns a narrow terminal goes without, first to last: the proxy where the skip scan ranks
    (the caption's Spearman says how it agrees), then the per-bucket columns (`buckets`' headers) from
    the last (the table read from the right); never the rank, the block or the score it is ranked by."""
    return (*(["proxy"] if scan else []), *reversed(buckets))


def _groups_said(result: ImportanceResult) -> str:
    """The caption's note of the module list each group label stands for: the table names blocks as
    remove_blocks' `blocks` take them (`double.3`: {double: [3]}), short enough to leave room for the
    per-bucket columns, where inspect, the run's log and the weights name the module
    (transformer_blocks.3): '; groups as remove_blocks' blocks name them: double = transformer_blocks, ...';
    a family of one group (PixArt's `blocks`) has no groups to tell apart: '; blocks are transformer_blocks'."""
    groups = dict.fromkeys(b.group for b in result.blocks)
    if len(groups) == 1:
        return f"; {next(iter(groups))} are {group_modules(next(iter(groups)))[0]}"
    return "; groups as remove_blocks' blocks name them: " + ", ".join(f"{g} = {group_modules(g)[0]}" for g in groups)


def renumbered(result: ImportanceResult) -> bool:
    """Whether the scanned model's block indices differ from the teacher's (a scan after a removal):
    the table and heatmap name blocks by teacher index, as remove_blocks' explicit `blocks` do."""
    return any(b.index != b.teacher_index for b in result.blocks)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def plot_heatmap(result: ImportanceResult, png_path) -> Path:
    """Blocks (x) x timestep buckets (y) of the skip error (log colour scale, values in the cells when
    there is room), a proxy row below, and a line plus a label for each block group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    grid = np.array([b.scan_by_bucket + [b.scan] for b in result.blocks], dtype=float).T  # (K+1, N)
    proxy_row = np.array([[b.proxy for b in result.blocks]], dtype=float)  # (1, N)
    n, rows = len(result.blocks), len(grid)
    fig, (ax, axp) = plt.subplots(2, 1, figsize=(max(6.5, 0.42 * n + 3.5), 0.55 * rows + 2.8), sharex=True,
                                  gridspec_kw={"height_ratios": [rows, 1]})
    finite = grid[np.isfinite(grid) & (grid > 0)]
    norm = (LogNorm(finite.min(), finite.max()) if finite.size and finite.max() > finite.min()
            else Normalize(0, max(1.0, float(finite.max()) if finite.size else 1.0)))
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="magma_r", norm=norm)
    fig.colorbar(im, ax=ax, label="relative error when skipped")
    ax.set_yticks(range(rows), [f"{b} (noise {hi:.2f}-{lo:.2f})" for b, (hi, lo)
                                in zip(result.buckets, result.bucket_ranges)] + ["all timesteps"])
    ax.axhline(rows - 1.5, color="white", lw=3)
    if n <= 30:
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if norm(v) > 0.6 else "black")
    imp = axp.imshow(proxy_row, aspect="auto", cmap="viridis")
    fig.colorbar(imp, ax=axp, label="1 - cos")
    axp.set_yticks([0], ["proxy"])
    axp.set_xticks(range(n), [str(b.teacher_index) for b in result.blocks], fontsize=8 if n <= 30 else 6)
    axp.set_xlabel("block (teacher index)" if renumbered(result) else "block")
    start = 0
    for j in range(1, n + 1):  # group separators and names
        if j == n or result.blocks[j].group != result.blocks[j - 1].group:
            if len(set(b.group for b in result.blocks)) > 1:
                ax.text((start + j - 1) / 2, -0.7, result.blocks[start].group, ha="center", va="bottom",
                        fontsize=9, fontweight="bold")
            if j < n:
                for a in (ax, axp):
                    a.axvline(j - 0.5, color="tab:blue", lw=3)
            start = j
    fig.suptitle(f"{result.family}: error of the final prediction with one block skipped\n"
                 f"(Spearman proxy vs scan = {result.spearman:.2f})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, png_path)
