"""`dit-compress inspect OUT`: the per-layer rank budget of a compressed model."""

from __future__ import annotations

import re
from pathlib import Path

from compress.io_output import load_transformer, output_folder
from compress.report import (console, layer_rows, layer_tables, output_dir, plot_ranks, plot_spectrum,
                             read_report, results, summary_table, to_json)


def inspect_output(out: Path, as_json: bool = False, plot_dir: str | None = None) -> list[dict]:
    out = output_folder(out)  # a pipeline folder: its transformer/, where its report.json would be
    model = load_transformer(out, nonfinite="warn")  # for looking: a damaged output is shown, with a warning
    plot_dir = output_dir(plot_dir, "--plot") if plot_dir else None
    report = read_report(out)
    rows = layer_rows(model, report)
    if as_json:
        print(to_json({"layers": rows, "report": report}))
    else:
        for table in layer_tables(rows, results.width, title=f"{out}"):
            results.print(table)
        results.print(summary_table(rows, "role", "by role (linear layers)"))
        results.print(summary_table(rows + other_params(model, rows), "block", "by block (all parameters)"))
        _print_optimality(rows)
        _print_compensation(report)
    if plot_dir:
        write_plots(rows, report, plot_dir)
    return rows


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


def _print_optimality(rows: list[dict]) -> None:
    ratios = [r["loss_ratio"] for r in rows if isinstance(r.get("loss_ratio"), (int, float))]
    if ratios:
        results.print(f"whitened loss / optimal loss over {len(ratios)} factorized layers: "
                      f"max {max(ratios):.6f}")
    gaps = [r["fit_gap"] for r in rows if isinstance(r.get("fit_gap"), (int, float))]
    if gaps:
        results.print(f"asymmetric fits above their undamped optimum over {len(gaps)} layers: "
                      f"max {max(gaps):.2e} of the layer's output energy")


def _print_compensation(report: dict) -> None:
    """One line per compensated stage (a block's attention-side targets, its MLP, the top level): the
    calibration prediction error the plain factorization left, what the compensated one left, and
    the chosen fraction of the Newton step."""
    stages = ((report.get("svd") or {}).get("compensation") or {})
    for stage, s in stages.items():
        results.print(f"compensation {stage}: calibration error {s['uncompensated_error']:.4g} → "
                      f"{s['calibration_error']:.4g} (step {s['step']:.4g} of the K-FAC Newton step)")


def write_plots(rows: list[dict], report: dict, plot_dir: Path) -> list[Path]:
    paths = [plot_ranks(rows, plot_dir / "ranks.png")]
    layers = ((report.get("svd") or {}).get("layers") or {})
    chosen = [r for r in rows if r["rank"] and layers.get(r["name"], {}).get("spectrum")]
    chosen.sort(key=lambda r: r["kept"])
    for r in chosen[:2] + chosen[-2:]:  # the most and the least compressed layers
        spectrum = layers[r["name"]]["spectrum"]
        paths.append(plot_spectrum(r["name"], spectrum, r["rank"],
                                   plot_dir / f"spectrum-{r['name'].replace('.', '_')}.png"))
    for p in paths:
        console.print(f"wrote {p}")
    return paths
