"""The model card: README.md of an output folder, what was done with the numbers."""

from __future__ import annotations

import math

from compress.report import error_figure, is_number
from compress.words import counted


def model_card(recipe, report: dict, ranks: dict | None = None) -> str:
    """README.md of an output folder: what was done, with the numbers. `ranks`: the factorized layers
    the output holds (config.json's compression ranks, io_export.ranks_of), those a factorized teacher
    brought included; without them the card counts only what this recipe's svd passes factorized."""
    lines = [f"# {recipe.model} student compressed by dit-compress", "",
             f"Teacher: `{report.get('teacher')}`. Recipe: `recipe.yaml` (resolved).", "",
             _params_line(report), ""]
    stages = report.get("stages", [])
    guided = any("guided_error" in s for s in stages)  # a column where the run recorded one
    lines += ["| stage | params | teacher-relative error |" + " guided error |" * guided + " seconds |",
              "|---|---:|---:|" + "---:|" * guided + "---:|"]
    for s, seconds in zip(stages, _stage_seconds(stages, report.get("distill") or {})):
        lines.append(f"| {s['pass']} | {s['params']:,} | {error_figure(s['relative_error'])} |"
                     + f" {_figure(s.get('guided_error'))} |" * guided + f" {seconds} |")
    lines += guided_lines(report) if guided else []
    lines += _against_base_lines(stages)
    lines += export_lines(report)
    lines += _removal_lines(report.get("remove_blocks") or {})
    lines += _svd_lines(report.get("svd") or {}, ranks)
    lines += ["", "Load it with `compress.load_transformer(folder)`; see report.json for per-layer numbers.", ""]
    return "\n".join(lines)


def _figure(value) -> str:
    """A table's error cell: 0.1702, 0.1780, '-' where none was recorded (a stage saved before it was, a NaN's
    null): report.error_figure, as inspect and eval print them."""
    return error_figure(value)


def guided_lines(report: dict) -> list[str]:
    """What the card's guided error column is (runner_heldout's guided error) at which scale (report.json's
    `heldout`), and its '-' where a stage has none."""
    held = report.get("heldout") if isinstance(report.get("heldout"), dict) else {}  # a report before it: no s
    scale = held.get("guidance_scale")
    words = ("Guided error: on the same held-out inputs, the error of the classifier-free-guided prediction "
             "uncond + s · (cond − uncond) the pipeline samples with" + (f", s = {scale:g}" if is_number(scale) else ""))
    if not all(is_number(s.get("guided_error")) for s in report.get("stages", [])):
        words += ("; `-`: a stage that recorded none (saved by a dit-compress before it was measured, or its "
                  "guided prediction held NaN/Inf)")
    return ["", words + "."]


def _against_base_lines(stages: list[dict]) -> list[str]:
    """A line per stage whose pass distilled toward the chain's base (its record's `kd_teacher`, as the
    runner's stage line says it: runner_heldout.against_base_words): its error in the table is against
    the teacher; its own against that base."""
    lines = []
    for n, s in enumerate(stages, 1):
        base = against_base(s)
        if base is not None:
            lines += ["", f"Stage {n} ({s['pass']}) distilled toward the chain's base `{base.get('source')}` "
                          f"(kd_teacher: base): its error above is against the teacher; against that base it is "
                          f"{error_figure(base['relative_error'])}."]
    return lines


def against_base(stage: dict) -> dict | None:
    """A stage record's `kd_teacher` ({source, relative_error}: its pass distilled toward the chain's base,
    its own error against that base), None where it has none or none measured (the card's words on it and
    inspect's column: inspect_stages)."""
    base = stage.get("kd_teacher")
    return base if isinstance(base, dict) and is_number(base.get("relative_error")) else None


def export_lines(report: dict) -> list[str]:
    """Which weights the stage errors are of (the compute dtype's, before the export cast) and the error of
    the weights the output holds (report's `export`, runner_export.exported_error): measured where the export
    dtype rounds them, the last stage's where it holds them exactly, unmeasured for a streamed run; of an
    output that took LoRAs since (report's `loras`: dit-compress lora), those of the weights before them."""
    if (loras := _merged_loras(report)):
        return _before_lora_lines(report, loras)
    export = report.get("export")
    if not isinstance(export, dict) or not isinstance(export.get("dtype"), str):
        return []  # an older report
    dtype, computed, err = export["dtype"], export.get("computed_in"), export.get("relative_error")
    if export.get("exact"):
        return ["", f"The output holds the weights measured above, exactly, in {dtype}."]
    before = f"The teacher-relative errors above are of the {computed} weights before the export; the output holds them in {dtype}"
    if not is_number(err):
        return ["", f"{before} ({_unmeasured_words(report)})."]
    return ["", f"{before}: its teacher-relative error on the same held-out inputs is {error_figure(err)}."]


def _unmeasured_words(report: dict) -> str:
    """Where the exported weights' error was not measured (a streamed run): which command measures it. eval
    of a real model measures it on the run's held-out inputs; of a toy's (its teacher or its chain's base a
    toy), pred_rel_error on 256 toy triples, another measure, so no command gives this one."""
    base = chain_base_of(report) or {}
    if any(str(s).startswith("toy:") for s in (report.get("teacher"), base.get("source"))):
        return ("not measured in the run; `dit-compress eval` gives a toy's pred_rel_error on 256 toy triples, "
                "another measure")
    return "not measured in the run: `dit-compress eval` measures it"


def _merged_loras(report: dict) -> int:
    """How many LoRAs the output took after its run (report.json's `loras`, commands_lora.with_lora_noted)."""
    loras = report.get("loras")
    return sum(isinstance(r, dict) for r in loras) if isinstance(loras, list) else 0


def _before_lora_lines(report: dict, loras: int) -> list[str]:
    """export_lines of an output that took `loras` LoRAs after its run: the stages' and export's errors are of
    the weights before the merge; the merged weights' error is not measured (T5: 0.1724 said 'exactly' of
    weights whose own error was 0.1722 against the teacher with the LoRA, 0.1742 against the plain one)."""
    export = report.get("export") if isinstance(report.get("export"), dict) else {}
    computed, dtype = export.get("computed_in"), export.get("dtype")
    weights = f"the {computed} weights before the export and" if isinstance(computed, str) and not export.get("exact") \
        else "the weights"
    lora, it = ("the LoRA", "it") if loras == 1 else (f"{loras} LoRAs", "both" if loras == 2 else f"all {loras}")
    held = f", in {dtype}" if isinstance(dtype, str) else ""
    return ["", f"The teacher-relative errors above are of {weights} before `dit-compress lora` merged {lora} in; "
                f"the output holds them with {it} merged{held}, an error not measured (`dit-compress eval` compares "
                f"the output with the teacher given the same {'LoRA' if loras == 1 else 'LoRAs'})."]


EXPORT_STARTS = ("The output holds the weights measured above", "The teacher-relative errors above are of")


def lora_card(card: str, after: dict) -> str:
    """The model card `card` of an output, for the output `dit-compress lora` writes from it (its report `after`:
    the merged model's student_params, the LoRA listed): its 'Parameters: ' headline and its export sentence (by
    their first words, EXPORT_STARTS: export_lines' since a390faf, whatever code wrote them) `after`'s; a card
    without one (a report without `export`) gets `after`'s after its stage table. Its other lines, of the run, stay."""
    lines = card.split("\n")
    try:
        _replace_first(lines, "Parameters: ", _params_line(after))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a damaged report: the headline stays as it was
        pass
    said = export_lines(after)[1:]
    if said and not _replace_first(lines, EXPORT_STARTS, said[0]):
        table = [n for n, line in enumerate(lines) if line.startswith("|")]
        at = table[-1] + 1 if table else len(lines)
        lines[at:at] = ["", said[0]]
    return "\n".join(lines)


def _replace_first(lines: list[str], starts: str | tuple[str, ...], now: str) -> bool:
    """Replace the first of `lines` starting with `starts` by `now`, in place; whether one did."""
    n = next((n for n, line in enumerate(lines) if line.startswith(starts)), None)
    if n is not None:
        lines[n] = now
    return n is not None


def _params_line(report: dict) -> str:
    """'Parameters: S of T (69.3%).'; where the teacher is itself an output (report's `base`), the
    share of the chain's base (the first teacher of the chain, not the teacher's own on a longer one) too."""
    student, teacher, base = report["student_params"], report["teacher_params"], chain_base_of(report)
    if base is None:
        return f"Parameters: {student:,} of {teacher:,} ({student / teacher:.1%})."
    return (f"Parameters: {student:,} of {teacher:,} ({student / teacher:.1%} of the teacher); "
            f"{student / base['params']:.1%} of the {base['params']:,} of `{base['source']}`, where its chain of "
            "teachers starts.")  # the teacher's own teacher only on a chain of two


def chain_base_of(report: dict) -> dict | None:
    """The report's `base` ({source, params}: report_teacher.chain_base_record), None where it has
    none or a damaged one (it is only words then)."""
    base = report.get("base")
    ok = isinstance(base, dict) and isinstance(base.get("source"), str) and is_number(base.get("params"))
    return base if ok and base["params"] > 0 else None


def wrote_words(report: dict, teacher: str) -> str:
    """'703,056 params, 69.3% of the teacher' of the `wrote` line; where the teacher is itself an
    output, naming it and giving the share of the chain's base: '..., 69.3% of the teacher out/A,
    30.0% of the base toy:flux'."""
    student, base = report["student_params"], chain_base_of(report)
    words = f"{student:,} params, {student / report['teacher_params']:.1%} of the teacher"
    return words if base is None else f"{words} {teacher}, {student / base['params']:.1%} of the base {base['source']}"


def _stage_seconds(stages: list[dict], distill: dict) -> list[str]:
    """Each stage's seconds; a distill pass resumed from its checkpoint trained in earlier invocations
    too (its record's seconds less seconds_this_run) that its stage (this invocation) leaves out: the
    total, this run's beside it. Its records in recipe order: report["distill"]'s `earlier`, itself."""
    records = iter([*distill.get("earlier", []), distill] if distill else [])
    cells = []
    for s in stages:
        record = next(records, {}) if s["pass"] == "distill" else {}
        total, this_run = record.get("seconds"), record.get("seconds_this_run")
        before = total - this_run if is_number(total) and is_number(this_run) else 0
        total = round(s["seconds"] + before, 3)
        cells.append(f"{total} ({s['seconds']} this run)" if before > 0 else str(s["seconds"]))
    return cells


def _removal_lines(removal: dict) -> list[str]:
    """Which teacher blocks are gone, and how each removal pass chose them: its record in
    `passes` (a report of one removal before `passes` was kept: the record itself)."""
    runs = removal.get("passes") or ([removal] if removal else [])
    said = [(_gone(r), _how(r)) for r in runs]
    if len(runs) == 1:
        return [] if not said[0][0] else [
            "", f"Blocks removed by the last remove_blocks pass (teacher indices): {said[0][0]} ({said[0][1]})."]
    total = {g: v for g, v in (removal.get("removed_total") or {}).items() if v}
    if not total:
        return []
    return (["", "Blocks removed (teacher indices): " + named_removals(total)
             + f", by {counted(len(runs), 'remove_blocks pass', 'remove_blocks passes')}:", ""]
            + [f"- remove_blocks pass {n} of {len(runs)}: {gone or 'none'} ({how})."
               for n, (gone, how) in enumerate(said, 1)])


def _gone(record: dict) -> str:
    """'transformer_blocks [1, 4]': the teacher blocks one removal pass took, '' for none (named_removals)."""
    return named_removals(record.get("removed") or {})


def named_removals(removed: dict) -> str:
    """{group: teacher indices} by module list, as the weights name the blocks, the recipe's group
    beside it where the family has several ('transformer_blocks (double) [1], single_transformer_blocks
    (single) [3]'; PixArt's 'transformer_blocks [4]'); groups of none left out."""
    from compress.arch import group_modules

    return ", ".join(f"{modules}{note} {v}" for g, v in removed.items() if v for modules, note in [group_modules(g)])


def _how(record: dict) -> str:
    """How one removal pass chose its blocks: listed, or by which criterion (one at a time when
    iterative; a learned removal with its likeliest patterns' probabilities)."""
    from compress.arch import group_modules

    if record.get("criterion") is None:
        return "listed in the recipe"
    how = f"chosen by {record['criterion']}" + (", re-scored after each removal" if record.get("iterative") else "")
    for w in (record.get("learned") or {}).get("windows", []):  # its group by module, as named_removals
        how += f"; {''.join(group_modules(w['group']))}: probability {w['likeliest'][0]['probability']:.2f}"
    return how


def _svd_lines(svd: dict, ranks: dict | None = None) -> list[str]:
    """How many layers are factorized, how close those of this recipe's svd passes are to their
    closed-form optimum (in which metric), how far asymmetric fits came above their undamped optimum,
    and what compensation did."""
    factorized = {n: r for n, r in (svd.get("layers") or {}).items() if "loss_ratio" in r}
    passes = len(svd.get("passes") or [svd] if svd else [])  # a report before `passes` was kept: one
    lines = [] if not (factorized or ranks) else ["", _factorized_words(factorized, ranks, passes)]
    if factorized and _recorded(svd):
        lines.append(" ".join(metric_words(svd)) + f" The closed-form optimum is {optimum_words(svd)}.")
    gaps = sorted(r["fit_gap"] for r in (svd.get("layers") or {}).values() if "fit_gap" in r)
    if gaps:
        lines.append(f"Fitted to the uncompressed model's outputs: {counted(len(gaps), 'layer')}; their fit above its "
                     f"undamped rank-r optimum: median {gaps[len(gaps) // 2]:.2e}, worst {gaps[-1]:.2e} of the layer's "
                     "output energy (the asymmetric_damping's cost on the calibration data).")
    stages = list((svd.get("compensation") or {}).values())
    if stages:
        first, last = stages[0], stages[-1]
        lines.append(f"Compensation in {counted(len(stages), 'stage')}: calibration prediction error after "
                     f"the last one {error_figure(last['calibration_error'])} (plain factorization there: "
                     f"{error_figure(last['uncompensated_error'])}; first compensated stage "
                     f"{error_figure(first['uncompensated_error'])} → {error_figure(first['calibration_error'])}).")
    return lines


def _factorized_words(factorized: dict, ranks: dict | None, passes: int) -> str:
    """'Factorized layers: 36 (34 came factorized in the teacher); by this recipe's svd pass: 2; worst
    ...': what the output holds (`ranks`) and what this recipe's svd passes made (`factorized`, their
    records, with their ratio words); without `ranks`, the count of the latter."""
    if ranks is None:
        return f"Factorized layers: {len(factorized)}{_ratio_words(factorized)}."
    ours = {n: r for n, r in factorized.items() if n in ranks}  # a layer densified since is not held
    held = f"Factorized layers: {len(ranks)}"
    if len(ours) == len(ranks):
        return f"{held}{_ratio_words(ours)}."
    if not (ours or passes):
        return f"{held} (all came factorized in the teacher)."
    by = f"by this recipe's svd pass{'es' if passes > 1 else ''}"
    return f"{held} ({len(ranks) - len(ours)} came factorized in the teacher); {by}: {len(ours)}{_ratio_words(ours)}."


def _ratio_words(layers: dict) -> str:
    """The worst loss / closed-form optimum per method: whitened's is the optimality check; asvd and
    svd do not claim that optimum, and a layer whose optimum is 0 has no ratio."""
    from compress.passes.svd_summary import max_ratio_by_method

    words = ""
    for method, worst in sorted(max_ratio_by_method(layers).items(), key=lambda m: m[0] != "whitened"):
        words += (f"; worst whitened loss / closed-form optimal loss: {worst:.9f}" if method == "whitened" else
                  f"; {method} (which does not claim the whitened optimum): worst loss / whitened optimal loss "
                  f"{worst:.4g}")
    none = sum(1 for r in layers.values() if not isinstance(r["loss_ratio"], (int, float))
               or not math.isfinite(r["loss_ratio"]))
    return words + (f"; {none} without a ratio (a whitened optimum of 0 under a loss that is not)" if none else "")


# ---- what the per-layer numbers are measured in ----------------------------------------------------
FISHER_OF = {"all": "the final prediction's", "modulation": "the final prediction's", "block": "its block's own"}


def _setting(svd: dict, key: str) -> list:
    """An svd summary's setting as a list (several passes that differ in it record each one's)."""
    said = svd.get(key)
    return [x for x in (said if isinstance(said, list) else [said]) if x is not None]


def _probes(svd: dict) -> str:
    """'4 random probes (svd.fisher_probes)' (the record's; several passes that differ: each one's),
    no count in a report that does not record it."""
    probes = _setting(svd, "fisher_probes")
    if len(set(probes)) > 1:
        return f"{', '.join(map(str, probes))} random probes (svd.fisher_probes of each svd pass)"
    return f"{counted(probes[0], 'random probe')} (svd.fisher_probes)" if probes else \
        "random probes (svd.fisher_probes)"


def weighting(record: dict) -> str | None:
    """What a layer's record says its factorization loss weighs output errors by (`output-weighted`,
    `calibration output`): its `weighting`, or in a report.json written before that key its `objective`
    (the name the summary's svd.objective setting shares, which finished runs on disk still carry); None
    where it records neither (a dense layer, older reports)."""
    return record.get("weighting", record.get("objective"))


def _weighted(svd: dict) -> int:
    return sum(1 for r in (svd.get("layers") or {}).values() if weighting(r) == "output-weighted")


def _recorded(svd: dict) -> bool:
    """Whether the layers record their objective's weighting (reports before it did: no words on it)."""
    return any(weighting(r) is not None for r in (svd.get("layers") or {}).values())


def optimum_words(svd: dict) -> str:
    """What a whitened layer's closed-form optimum is the optimum of: with output-weighted layers, the
    objective with the Fisher as estimated (its probe count where the report has it), not the exact one.
    '' for a report whose layers do not record their objective."""
    if not _recorded(svd):
        return ""
    if not _weighted(svd):
        return "the exact optimum of each layer's calibration output error"
    return (f"the optimum of each layer's objective with its output Fisher estimated from {_probes(svd)} "
            "and damped (svd.fisher_damping), not of the exact Fisher")


CARD_NAMES = ("Energy kept, loss and optimal loss are", "The relative output error is")


def metric_words(svd: dict, names: tuple[str, str] = CARD_NAMES) -> list[str]:
    """Which metric the per-layer columns are in: energy, loss and optimal in each layer's objective
    (the Fisher-weighted error of W + βΔ under compensation), rel err the plain output error against W.
    names: what the two sentences call the columns. [] for a report whose layers do not record their objective."""
    if not _recorded(svd):
        return []
    layers = [r for r in (svd.get("layers") or {}).values() if weighting(r) is not None]  # factorized, not dense
    weighted, stepped = _weighted(svd), sum(1 for r in layers if r.get("compensation_step"))
    fitted = sum(1 for r in layers if r.get("asymmetric"))
    kinds = " or ".join(dict.fromkeys(FISHER_OF[f] for f in _setting(svd, "fisher") if f in FISHER_OF))
    parts = []
    if weighted:
        parts.append(f"weighted, for {counted(weighted, 'layer')}, by {kinds or 'an'} output Fisher F, estimated "
                     f"from {_probes(svd)} and damped to F + λI (svd.fisher_damping)")
    if stepped:
        parts.append(f"of W + βΔ, for {counted(stepped, 'compensated layer')} ({'its' if stepped == 1 else 'their'} "
                     "weight plus its compensation step), not of the weight the pass found")
    if fitted:
        their = "its" if fitted == 1 else "their"
        parts.append(f"of W + Δ, for {counted(fitted, 'layer')} fitted asymmetrically ({their} fit to the "
                     "uncompressed model's outputs)")
    how = ": " + "; ".join(parts) if parts else ""
    return [f"{names[0]} in each layer's factorization objective, its output error on its calibration "
            f"inputs{how}.",
            f"{names[1]} each layer's plain output error ‖(W − W')x‖ / ‖Wx‖ on its calibration "
            "inputs against the weight the pass found (no Fisher, no step): it can be far above √(1 − energy kept)."]
