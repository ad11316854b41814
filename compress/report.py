"""Rich tables, the JSON report and matplotlib figures (the model card: report_card.py)."""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from compress.errors import UserError, folder_named

# soft_wrap: a line too long for the width stays one line (the terminal folds it; a log keeps it
# whole for grep) instead of rich breaking it at 80 columns off a terminal. Tables still fit the width.
class _Results(Console):
    """The results' console: a reader gone (`dit-compress inspect OUT | head -1`) raises BrokenPipeError,
    which cli.main answers with exit status 0 as it does the --json forms' (rich's own answer exits 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(32, "Broken pipe")


console = Console(stderr=True, soft_wrap=True)  # progress, notes, warnings, errors
results = _Results(soft_wrap=True)  # what a command shows as its result (plan, inspect, importance, eval, bench): stdout


def warn(text: str) -> None:
    """'warning: TEXT' on the notes' console (stderr), TEXT shown as it is (no rich markup read in it)."""
    from rich.markup import escape

    console.print("[bold yellow]warning:[/] " + escape(text))


def note(text: str) -> None:
    """'note: TEXT' on the notes' console (stderr), TEXT shown as it is (as `warn`)."""
    from rich.markup import escape

    console.print("[bold yellow]note:[/] " + escape(text))


def notes_from_rank_zero() -> None:
    """Under torchrun / accelerate launch every process runs the command: its notes, warnings and
    progress bars come once, from rank 0 (runner_ranks.rank; errors, printed apart, still come from any rank)."""
    from compress.runner_ranks import rank

    console.quiet = rank() != 0


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def layer_rows(model, report: dict | None = None) -> list[dict]:
    """Per linear: name, role, shape, rank (None = dense), params kept, and the svd report fields."""
    from compress.arch import get_adapter
    from compress.linalg_params import params_dense, params_lowrank
    from compress.lowrank import LowRankLinear

    svd = ((report or {}).get("svd") or {}).get("layers", {})
    rows = []
    for info in get_adapter(model).linears(model):
        mod = model.get_submodule(info.name)
        bias = mod.bias is not None  # counted as the svd report and the weight files count it
        dense = params_dense(info.out_features, info.in_features, bias)
        rank = mod.rank if isinstance(mod, LowRankLinear) else None
        kept = params_lowrank(info.out_features, info.in_features, rank, bias) if rank else dense
        row = {"name": info.name, "role": info.role, "block": _block_label(info),
               "shape": [info.out_features, info.in_features], "rank": rank,
               "params": kept, "dense_params": dense, "kept": kept / dense}
        rec = svd.get(info.name, {})
        if isinstance(rec.get("rank"), int) and rec["rank"] != rank:  # grown since, or densified (a LoRA)
            rec = {k: v for k, v in rec.items() if k in ("time_s", "spectrum")}
        for key in ("loss", "optimal_loss", "loss_ratio", "fit_gap", "rel_output_error", "time_s", "spectrum"):
            if key in rec:
                row[key] = rec[key]
        if isinstance(rec.get("energy_kept"), (int, float)):  # the objective's energy kept (Fisher-weighted where weighted)
            row["energy_kept"] = rec["energy_kept"]
        elif "energy_kept" not in rec and isinstance(rec.get("rel_output_error"), (int, float)):  # reports before it
            row["energy_kept"] = 1.0 - rec["rel_output_error"] ** 2
        rows.append(row)
    return rows


def _block_label(info) -> str:
    return f"{info.group}.{info.block}" if info.group is not None else "-"


def other_params(model, rows: list[dict]) -> list[dict]:
    """The parameters outside the linear layers `rows` (norms, a PixArt block's scale_shift_table, the
    patch embedding), as dense rows of no role, one per block and one for the top level (block "-"):
    with them the table by block adds up to the model's parameter count, what the weight files hold."""
    from compress.arch import get_adapter

    linears = tuple(f"{r['name']}." for r in rows)
    blocks = [(re.compile(rf"{re.escape(g.attr)}\.(\d+)\."), g.name) for g in get_adapter(model).groups]
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if name.startswith(linears):
            continue
        block = next((f"{group}.{m.group(1)}" for pattern, group in blocks if (m := pattern.match(name))), "-")
        counts[block] = counts.get(block, 0) + p.numel()
    return [{"block": b, "params": n, "dense_params": n, "rank": None} for b, n in counts.items()]


# (header, justify, cell) of the per-layer table; the first group is the rank budget, the second
# how close each factorization came to its optimum and what it cost: the objective's energy kept,
# whitened loss, closed-form optimal loss, their ratio, the relative output error on the
# calibration rows, seconds
BUDGET_COLUMNS = (
    ("role", "left", lambda r: r["role"]),
    ("shape", "right", lambda r: "×".join(map(str, r["shape"]))),
    ("rank", "right", lambda r: str(r["rank"]) if r["rank"] else "dense"),
    ("params", "right", lambda r: _fmt_int(r["params"])),
    ("kept", "right", lambda r: f"{r['kept']:.0%}"),
)
QUALITY_COLUMNS = (
    ("energy", "right", lambda r: _opt(r.get("energy_kept"), "{:.4f}")),
    ("loss", "right", lambda r: _opt(_round_off(r.get("loss")), "{:.2e}")),
    ("optimal", "right", lambda r: _opt(r.get("optimal_loss"), "{:.2e}")),
    ("loss/opt", "right", lambda r: _opt(r.get("loss_ratio"), "{:.6f}")),
    ("rel err", "right", lambda r: _opt(r.get("rel_output_error"), "{:.4f}")),
    ("time", "right", lambda r: _opt(r.get("time_s"), "{:.2f}s")),
)


def block_prefix(name: str) -> str:
    """`transformer_blocks.3` of `transformer_blocks.3.attn1.to_q` (up to the first index)."""
    parts = name.split(".")
    index = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
    return ".".join(parts[:index + 1]) if index is not None else ""


def _round_off(loss):
    """A loss is a sum of squares, measured as a difference: below 0 only by round-off."""
    return max(loss, 0.0) if isinstance(loss, (int, float)) else loss


def _opt(value, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


OF_DENSE = {"role": ("of dense: params / the same layers of this student held dense (removed blocks not "
                     "counted; plan's ratio is of the teacher's)"),
            "block": "of dense: params / the same block of this student held dense"}


def summary_table(rows: list[dict], key: str, title: str, width: int | None = None, piped: bool = False) -> list:
    """inspect's table by `key` (role, block, the top level last): layers factorized, kept params, and their share of the
    student's own dense size (`OF_DENSE`, the caption that says so), as [the table] or lines
    (report_fit.fitted_rows). `width`: the terminal's; a table wider than it keeps its names and numbers
    whole and leaves out factorized, then params; where even that is wider, a line per row (`piped`: whole)."""
    from compress.report_fit import fitted_rows

    agg = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        a = agg[r[key]]
        a[0] += r["params"]
        a[1] += r["dense_params"]
        a[2] += r["rank"] is not None
    order = sorted(agg.items(), key=lambda kv: key == "block" and kv[0] == "-")  # the top level last, each family
    cells = [["top level" if key == "block" and k == "-" else str(k),  # linears outside the blocks
              str(n), _fmt_int(kept), f"{kept / dense:.1%}"] for k, (kept, dense, n) in order]
    columns = [(key, "left"), ("factorized", "right"), ("params", "right"), ("of dense", "right")]
    return fitted_rows(title, OF_DENSE.get(key), columns, cells, width, ("factorized", "params"), "in a wider terminal",
                       piped=piped)


def to_json(data) -> str:
    """What a command's --json prints: strict JSON (RFC 8259 has no NaN or Infinity, which
    json.dumps writes by default and jq or JavaScript cannot read), a non-finite number as null."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def read_report(out: Path) -> dict:
    """An output folder's report.json ({} when there is none); a damaged one is a UserError."""
    from compress.io import read_json

    p = Path(out) / "report.json"
    if not p.is_file():
        return {}
    report = read_json(p)
    if not isinstance(report, dict):
        raise UserError(f"{p} is not a dit-compress report (a JSON object)")
    check_report(report, p)
    return report


DAMAGED = "the output is damaged (rerun the recipe)"
REPORT_TEXT = {"teacher": "a path or a Hugging Face id", "teacher_config": "a path", "inputs_cache": "a path"}


def check_report(report: dict, path) -> None:
    """The fields of a report.json the commands rely on have their types (a UserError naming the
    file and the field otherwise): teacher and paths as text, svd's per-layer and per-stage records
    as mappings, the numbers inspect prints as numbers."""
    def bad(key: str, value, what: str) -> UserError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return UserError(f"{path}: {key} is {shown}, not {what}; {DAMAGED}")

    for key, what in REPORT_TEXT.items():  # what the commands read back
        if report.get(key) is not None and not isinstance(report[key], str):
            raise bad(key, report[key], f"text ({what})")
    svd = report.get("svd")
    if svd is None:
        return
    if not isinstance(svd, dict):
        raise bad("svd", svd, "a mapping")
    for part, numbers in (("layers", ()), ("compensation", ("uncompensated_error", "calibration_error", "step"))):
        records = svd.get(part)
        if records is None:
            continue
        if not isinstance(records, dict):
            raise bad(f"svd.{part}", records, "a mapping")
        for name, record in records.items():
            if not isinstance(record, dict):
                raise bad(f"svd.{part}.{name}", record, "a mapping")
            for key in numbers:
                if not is_number(record.get(key)):
                    raise bad(f"svd.{part}.{name}.{key}", record.get(key), "a number")
            spectrum = record.get("spectrum")
            if spectrum is not None and not (isinstance(spectrum, list) and all(map(is_number, spectrum))):
                raise bad(f"svd.{part}.{name}.spectrum", spectrum, "a list of numbers")


def is_number(value) -> bool:
    """A JSON number: an int or a float, not a bool (report.json's values as read back)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def error_figure(value) -> str:
    """A teacher-relative error as report.json's readers print it (inspect, the model card, eval): 4
    significant figures, trailing zeros kept (0.1780, 0.06519, 1.400; 0 as 0, nan and inf as such); '-'
    where it is no number (none recorded, a NaN's null)."""
    if not is_number(value):
        return "-"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    text = f"{value:#.4g}"
    return text[:-1] if text.endswith(".") else text  # 1235. -> 1235


def is_count(value) -> bool:
    """A JSON whole number ≥ 0, not a bool (a count or an index as read back: report.json's, block_map's)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


FIGURES = (".png", ".pdf", ".svg")


def output_file(path, what: str, figure: bool = False) -> Path:
    """Where a command will write its `what`, checked before the work: not a folder, its folder
    made. A figure without a suffix becomes .png (as matplotlib would write it). An empty path is
    refused; a link is the file it points to (write_atomically writes through it)."""
    if not str(path).strip():
        raise UserError(f"{what} is empty: give a file name, or leave {what} out")
    p = _followed_link(Path(path).expanduser(), path, what)
    if p.is_dir():  # before a figure's suffix: `--png DIR` is not DIR.png beside it
        raise UserError(f"{what} {path} is a folder; give a file name")
    if figure and not p.suffix:
        p = p.with_name(p.name + ".png")
    elif figure and p.suffix.lower() not in FIGURES:
        raise UserError(f"{what} {path}: a figure is written as {', '.join(FIGURES)}")
    if p.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    return output_dir(p.parent, what) / p.name


def _followed_link(p: Path, path, what: str) -> Path:
    """`p`, or where it is a link the path it points to (its folder is the one written into)."""
    if not p.is_symlink():
        return p
    try:
        return p.resolve()
    except (RuntimeError, OSError) as e:  # a loop: RuntimeError before Python 3.13
        raise UserError(f"{what} {path}: a link that cannot be followed ({e})") from None


def output_dir(path, what: str) -> Path:
    """A folder a command will write into, made (with its parents) before the work."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():  # mkdir's words: 'cannot make the folder P (File exists)'
        raise UserError(f"{what}: cannot make the folder {p}: a file of that name is there")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot make the folder {p} ({e.strerror or e})") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"{what}: the folder {folder_named(p)} is not writable")
    return p


def save_figure(fig, path, dpi: int = 110) -> Path:
    """`fig` written to `path` through a temp file renamed into place (an interrupt or an error
    mid-write never leaves a cut-off PNG under its name: importance.write_atomically), then closed."""
    import matplotlib.pyplot as plt

    from compress.passes.importance import write_atomically

    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)


def plot_ranks(rows: list[dict], path: Path) -> Path:
    """Rank budget per layer grouped by block and role (kept fraction as bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({r["role"] for r in rows})
    colors = {role: plt.cm.tab10(i) for i, role in enumerate(roles)}
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.12), 4))
    ax.bar(range(len(rows)), [r["kept"] for r in rows], color=[colors[r["role"]] for r in rows])
    edges = [i for i in range(1, len(rows)) if rows[i]["block"] != rows[i - 1]["block"]]
    for e in edges:
        ax.axvline(e - 0.5, color="0.8", lw=0.5)
    ax.set_ylabel("kept parameters (fraction of dense)")
    ax.set_xlabel("layers in model order (lines separate blocks)")
    ax.set_ylim(0, 1.05)
    # above the axes: a dense layer's bar (1.0) reaches the top, where a legend inside would cover it
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()],
              labels=list(colors), fontsize=8, ncol=len(colors), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_spectrum(name: str, energies, rank: int | None, path: Path, label: str | None = None) -> Path:
    """Whitened spectrum (eigenvalues of W G Wᵀ, descending) of one layer with the cut at `rank`
    marked, its legend `label` (default 'rank R'; inspect: 'rank 8 + LoRA 4' for a layer a LoRA grew)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(range(1, len(energies) + 1), energies)
    if rank:
        ax.axvline(rank, color="red", ls="--", label=label or f"rank {rank}")
        ax.legend()
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("index")
    ax.set_ylabel("whitened eigenvalue")
    fig.tight_layout()
    return save_figure(fig, path)
