"""`dit-compress inspect OUT`: the per-layer rank budget of a compressed model: the output and its
report gathered, then what is printed beside the per-layer tables (inspect_tables): the LoRAs merged since
the run, by role and by block, how close factorizations came to their optimum, compensation, distill and
each pass's stage (--json: the record; --plot: inspect_plots)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from compress.errors import UserError
from compress.inspect_blocks import (module_label, recorded_block_map, recorded_counts, removal_lines, removed_blocks,
                                     teacher_blocks)
from compress.inspect_distill import distill_lines
from compress.inspect_plots import write_plots
from compress.inspect_stages import stage_lines, stages_record
from compress.inspect_tables import _displayed, _measured, _shown_headers, inspect_tables
from compress.io_output import load_transformer, output_folder
from compress.report import (error_figure, is_number, layer_rows, other_params, output_dir, read_report, results,
                             summary_table, to_json)
from compress.report_fit import is_piped, lines_width, note_lines, print_fitted
from compress.words import counted


def inspect_output(out: str | Path, as_json: bool = False, plot_dir: str | None = None) -> list[dict]:
    from compress.commands import given_output

    given = Path(out).expanduser()
    folder = given_output(out, "inspect")  # as typed: ./x is a path, never a Hub id
    title = str(given) if folder != given else None  # a Hub id as the user gave it, not the cache's snapshot
    out = output_folder(folder)  # a pipeline folder: its transformer/, where its report.json would be
    model = load_transformer(out, nonfinite="warn")  # for looking: a damaged output is shown, with a warning
    plot_dir = _plot_folder(plot_dir)
    report = read_report(out)
    block_map = recorded_block_map(model, out)
    rows = layer_rows(model, report)
    teacher = teacher_blocks(rows, block_map)
    for r in rows:
        if r["block"] in teacher:
            r["teacher_block"] = teacher[r["block"]]
    if as_json:
        print(to_json(json_record(rows, report, block_map, recorded_counts(model))))
    else:
        _print_inspection(title or str(out), model, rows, report, block_map, teacher)
    if plot_dir:
        write_plots(rows, report, plot_dir)
    return rows


def json_record(rows: list[dict], report: dict, block_map: dict | None, recorded: dict | None = None) -> dict:
    """What --json prints, its top-level keys those docs/COMMANDS.md's inspect row lists: the per-layer
    rows, report.json as it is, the block map and removed teacher blocks (null where none was; `recorded`:
    config.json's teacher block counts, inspect_blocks.removed_blocks), the stages."""
    return {"layers": rows, "report": report, "block_map": block_map,
            "removed_blocks": removed_blocks(block_map, report, recorded) if block_map else None,
            "stages": stages_record(report)}


def _plot_folder(plot_dir: str | None) -> Path | None:
    """--plot's folder, made; None without --plot. An empty --plot is refused (it wrote nothing and
    said nothing), as an empty --teacher is."""
    if plot_dir is None:
        return None
    if not str(plot_dir).strip():
        raise UserError("--plot is empty: give the folder to write the PNGs into (. for the current one), "
                        "or leave --plot out")
    return output_dir(plot_dir, "--plot")


def _print_inspection(title: str, model, rows: list[dict], report: dict, block_map: dict | None,
                      teacher: dict[str, str]) -> None:
    """The tables and summary lines `inspect` prints: per layer (titled `title`: the output folder, or
    the Hub id given), which metric its factorization columns are in (or why it has none), the LoRAs
    merged since the run, by role, by block (student blocks, with their teacher index where removal
    renumbered them), then what removal did, how close factorizations came to their optimum, what
    compensation did, what distill did, and each pass's params and held-out error (inspect_stages)."""
    shown = [_displayed(r) for r in rows]
    svd_passes = len((report.get("svd") or {}).get("passes") or ())  # each svd pass's record
    piped = is_piped(results)  # lines whole (for grep) off a terminal, whatever COLUMNS says
    tables = inspect_tables(shown, results.width, title, teacher, svd_passes, piped)
    print_fitted(results, tables)
    if any(_measured(r) for r in shown):
        for line in _column_words(report, _shown_headers(tables)):
            _say(line)
    else:
        _say("no svd pass: no per-layer factorization measurements" if not report.get("svd") else
                      "no factorization measurements for the layers as they are now (changed since the svd pass)")
    took = lora_line(model, rows, report)
    if took:
        _say(took)
    print_fitted(results, summary_table(shown, "role", "by role (linear layers)", results.width, piped))
    by_block = [{**r, "block": module_label(r["block"], teacher)} for r in shown + other_params(model, rows)]
    print_fitted(results, summary_table(by_block, "block", "by block (all parameters)", results.width, piped))
    for line in removal_lines(block_map, report, recorded_counts(model)):
        _say(line)
    _print_optimality(rows, report)
    _print_compensation(report)
    for line in distill_lines(report):  # steps, held-out error before → after, resumes, last loss terms
        _say(line, highlight=False, markup=False)
    for said in stage_lines(report, results.width, piped):  # each pass's params and held-out error, the teacher's first
        _say(said, highlight=False, markup=False)


def _say(said, **kw) -> None:
    """A note on `results` (note_lines: broken at its spaces on a narrow terminal; piped, each line whole, as
    plan's: lines_width), or a table as it is."""
    for piece in [said] if isinstance(said, Table) else note_lines(said, lines_width(results)):
        results.print(piece, **kw)


def lora_line(model, rows: list[dict], report: dict) -> str | None:
    """The LoRAs the output took after its run (dit-compress lora or compress.merge_lora), as its config's
    compression section records them, and what they did to the table (compress.lora): each factorized layer they
    adapt grew by their rank, or past break-even was stored dense, so its factorization numbers are
    gone ('-'), its time the svd pass's; layers whose rank differs from the svd pass's record, counted
    where report.json has it. None for an output that took none."""
    loras = [r for r in (getattr(model, "compression_meta", None) or {}).get("loras") or [] if isinstance(r, dict)]
    if not loras:
        return None
    took = ", ".join(f"{r.get('source')} at scale {_scale(r.get('scale'))}"
                     + (f" ({counted(r['modules'], 'layer')})" if isinstance(r.get("modules"), int) else "")
                     for r in loras)
    they, its = ("it adapts", "its rank") if len(loras) == 1 else ("they adapt", "their ranks")
    svd = (report.get("svd") or {}).get("layers") or {}
    was = {r["name"]: (svd.get(r["name"]) or {}).get("rank") for r in rows}
    changed = [r for r in rows if isinstance(was[r["name"]], int) and was[r["name"]] != r["rank"]]
    dense = sum(r["rank"] is None for r in changed)
    if not svd:  # no svd pass in this run (a chain's output, a removal alone): what `lora` recorded
        what = _grown_as_recorded(report, they, its)
    elif not changed:
        what = "no factorized layer's rank changed"
    else:
        what = (f"{counted(len(changed) - dense, 'factorized layer')} grew by {its}"
                + (f" and {dense} {'was' if dense == 1 else 'were'} stored dense (past break-even)" if dense else "")
                + ": the factorization columns show - for them, their time is the svd pass's")
    return (f"{counted(len(loras), 'LoRA')} merged after the run (dit-compress lora or compress.merge_lora): {took}; "
            f"{what}")


def _grown_as_recorded(report: dict, they: str, its: str) -> str:
    """What the LoRAs did to the factorized layers of an output whose run measured none (no svd pass:
    its layers factorized by a teacher's run), from report.json's `loras` entries (`lora` writes them:
    rank_added, densified): a layer stored dense by any LoRA counts as dense, not grown. Without the
    entries (report.json gone or older), what merging does."""
    entries = [e for e in report.get("loras") or [] if isinstance(e, dict)]
    if not entries or not all(isinstance(e.get("rank_added"), dict) and isinstance(e.get("densified"), list)
                              for e in entries):
        return f"any factorized layer {they} grew by {its} (stored dense where that passed break-even)"
    dense = {name for e in entries for name in e["densified"]}
    grown = {name for e in entries for name in e["rank_added"]} - dense
    if not grown and not dense:
        return f"{they} no factorized layer (only dense ones, which took {'it' if len(entries) == 1 else 'them'} " \
            "in their weights)"
    return (f"{counted(len(grown), 'factorized layer')} grew by {its}"
            + (f" and {len(dense)} {'was' if len(dense) == 1 else 'were'} stored dense (past break-even)"
               if dense else ""))


def _scale(scale) -> str:
    """A recorded LoRA scale as `lora` printed it (0.5, 1), anything else as it is."""
    return f"{scale:g}" if is_number(scale) else str(scale)


def _print_optimality(rows: list[dict], report: dict | None = None) -> None:
    """Each method's worst loss / closed-form optimum: "whitened loss / optimal loss" over the whitened
    layers only (the ≤ 1.001 check), another method's ("asvd loss / optimal loss", to the
    output-weighted optimum, which it need not reach) apart. A ratio that is not a finite number (an
    older report's Infinity or null where the optimum was 0) is counted apart, never printed as inf.
    Then the targets whose calibration data spans fewer directions than their rank (a zero Gram: its
    0/0 no ratio, '-'), as the run warned them (svd_summary.deficient_words), and how far asymmetric
    fits came above their undamped optimum, where some layer records it."""
    from compress.passes.svd_summary import deficient_words
    from compress.report_card import optimum_words

    optimum = optimum_words((report or {}).get("svd") or {})
    for method, ratios, apart in _ratios_by_method(rows, report or {}):
        what = (f"{method} loss / optimal loss over {counted(len(ratios), f'{method} layer')}" if method else
                f"loss / optimal loss over {counted(len(ratios), 'factorized layer')}")  # a report of no method
        shown = f"max {max(ratios):.6f}" if ratios else "no finite ratio"
        _say(f"{what}: {shown}" + (f" ({apart} more of optimal loss 0 left out)" if apart else "")
                      + (f"; optimal: {optimum}" if optimum else ""))
    layers = ((report or {}).get("svd") or {}).get("layers") or {}
    measured = {r["name"]: layers[r["name"]] for r in rows if "loss" in r and isinstance(layers.get(r["name"]), dict)}
    if said := deficient_words(measured):  # as the run warned it: a zero Gram's 0/0 is no ratio ('-')
        _say(said.removeprefix("svd: "))
    gaps = [r["fit_gap"] for r in rows if isinstance(r.get("fit_gap"), (int, float)) and math.isfinite(r["fit_gap"])]
    if gaps:
        _say(f"asymmetric fits above their undamped optimum over {counted(len(gaps), 'layer')}: "
                      f"max {max(gaps):.2e} of the layer's output energy")


def _ratios_by_method(rows: list[dict], report: dict) -> list[tuple[str, list[float], int]]:
    """(method, finite loss ratios, how many more were not finite), whitened first. A layer's method
    is its svd record's, else the pass's (reports before per-layer methods)."""
    svd = report.get("svd") or {}
    layers, default = svd.get("layers") or {}, svd.get("method")
    default = default if isinstance(default, str) else None  # svd passes of several methods: each layer's
    found: dict[str, tuple[list[float], list[int]]] = {}
    for r in rows:
        if "loss_ratio" not in r:
            continue
        method = (layers.get(r["name"]) or {}).get("method") or default
        method = method if isinstance(method, str) else ""
        ratios, apart = found.setdefault(method, ([], [0]))
        ratio = r["loss_ratio"]
        if is_number(ratio) and math.isfinite(ratio):
            ratios.append(ratio)
        else:
            apart[0] += 1
    order = sorted(found, key=lambda m: (m != "whitened", m))
    return [(m, found[m][0], found[m][1][0]) for m in order]


OBJECTIVE_COLUMNS = ("energy", "loss", "optimal", "loss/opt")  # in each layer's objective (metric_words)


def _column_words(report: dict, shown: set[str]) -> list[str]:
    """Which metric the factorization columns the tables show (`shown`: their headers) are in
    (report_card.metric_words): energy, loss, optimal and loss/opt in each layer's objective
    (Fisher-weighted, of W + βΔ under compensation), rel err the plain output error against the weight
    the pass found. A column a narrow terminal left out is not named; nor a sentence of none shown."""
    from compress.report_card import metric_words

    named = [h for h in OBJECTIVE_COLUMNS if h in shown]
    words = metric_words(report.get("svd") or {}, (
        f"column{'s' if len(named) > 1 else ''} {', '.join(named)} {'are' if len(named) > 1 else 'is'}",
        "column rel err is"))
    keep = (bool(named), "rel err" in shown)
    return [w for w, k in zip(words, keep) if k]


def _print_compensation(report: dict) -> None:
    """One line per compensated stage (a block's attention-side targets, its MLP, the top level): the
    calibration prediction error the plain factorization left, what the compensated one left, and
    the chosen fraction of the Newton step."""
    from compress.arch import group_modules

    stages = ((report.get("svd") or {}).get("compensation") or {})
    for stage, s in stages.items():  # "double 0 attention" as "transformer_blocks.0 attention"
        group, index, rest = (stage.split(" ", 2) + ["", ""])[:3]
        named = f"{group_modules(group)[0]}.{index} {rest}".strip() if index.isdigit() else stage
        _say(f"compensation {named}: calibration error {error_figure(s['uncompensated_error'])} → "
             f"{error_figure(s['calibration_error'])} (step {s['step']:.4g} of the K-FAC Newton step)")
