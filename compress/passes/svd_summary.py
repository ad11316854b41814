"""The svd pass's report summary: kept parameters, the worst loss / optimal loss by method, the settings
of every svd pass so far, the warning for a pass most of whose Grams were clamped, and the one for a pass
whose compensation refused steps that left layers' outputs far off."""

from __future__ import annotations

import math

from compress.passes.svd_objective import objective_of
from compress.report import warn
from compress.words import counted

def merge_report(report: dict, this: dict, records: dict[str, dict], c) -> None:
    """A recipe may hold several svd passes: `passes` keeps each pass's own summary; layers,
    compensation stages, cache hits and fused layers accumulate; the summary covers every layer
    factorized so far, so a setting (SETTINGS) the passes differ in is the list of each pass's, in
    order; `global` is the last global allocation's."""
    layers = {**report.get("layers", {}), **records}
    compensation = dict(report.get("compensation", {}))
    n = len(report.get("passes", [])) + 1
    for label, search in this["compensation"].items():
        compensation[label if label not in compensation else f"{label} (svd pass {n})"] = search
    passes = report.get("passes", []) + [this]
    report.update(summary(layers, c), layers=layers, compensation=compensation, passes=passes,
                  cache_hits=report.get("cache_hits", []) + this["cache_hits"],
                  fused_gelu=sorted(set(report.get("fused_gelu", [])) | set(this["fused_gelu"])),
                  **({"global": this["global"]} if "global" in this else {}))
    for key in SETTINGS:  # the summary covers every pass's layers: a setting they differ in is each one's
        said = [p.get(key) for p in passes]
        if len(set(map(str, said))) > 1:
            report[key] = said
    from compress.report_card import optimum_words

    report["max_loss_ratio_of"] = optimum_words(report)  # what the ratios are against
    for said in (clamped_words(records) or deficient_words(records), guarded_words(records)):
        if said:
            warn(said)


def clamped_words(records: dict[str, dict]) -> str | None:
    """The warning for a pass most of whose targets (`records`, this pass's) had calibration Grams
    clamped: data spanning fewer directions than the layer is wide (toy PixArt on 1 prompt x 1
    timestep: all 60, unsaid), so each is fitted to the few directions the calibration excites.
    Names the widest such layer and the directions its data spans. None where at most half are.
    Modulation targets are left out: their rows are svd.modulation_grid's timesteps, whose embeddings
    span fewer directions than their width however many prompts calibrate (toy PixArt: 63 of 128)."""
    records = {n: r for n, r in records.items() if r.get("role") != "modulation"}
    clamped = {n: r for n, r in records.items() if r.get("clamped")}
    if not records or len(clamped) * 2 <= len(records):
        return None
    name, r = max(clamped.items(), key=lambda kv: (min(kv[1]["shape"]), max(kv[1]["shape"])))
    out, inp = r["shape"]
    return (f"svd: {len(clamped)} of this pass's {len(records)} targets had calibration data spanning fewer "
            f"directions than the layer is wide (the widest, {name} {out}×{inp}, {r.get('data_rank', '?')} of "
            f"{min(out, inp)}): too few calibration rows for these widths, so their factors fit only the directions "
            "the calibration excites; raise calibration.num_prompts or calibration.timesteps for more rows")


MOST_UNMEASURED = 0.5  # deficient_words says a target whose data spans under this share of its rank


def deficient_words(records: dict[str, dict], shown: int = 3) -> str | None:
    """The warning for the targets (`records`; modulation left out, as clamped_words leaves it) whose
    calibration data spans fewer directions than their rank (data_rank < rank: a zero Gram, an input
    of rank 1), said by no one (report.json's data_rank 0, clamped: true): the factors past the data's
    directions come from the weight alone, and a loss of 0 there measures nothing. Said only where the
    data spans under half the rank (MOST_UNMEASURED): the embedded toy PixArt's caption k/v span 14 of their
    rank 24, as its 10 captions allow, which more prompts would not change (report.json's
    rank_deficient_grams lists them all). Names the `shown` of fewest directions. None where there is
    none. inspect says it too."""
    short = sorted(((n, records[n]["data_rank"], records[n]["rank"]) for n in short_of_rank(records)
                    if records[n].get("role") != "modulation"
                    and records[n]["data_rank"] < MOST_UNMEASURED * records[n]["rank"]), key=lambda t: (t[1], t[0]))
    if not short:
        return None
    named = ", ".join(f"{n} {d} < {r}" for n, d, r in short[:shown]) + (f" and {len(short) - shown} more"
                                                                       if len(short) > shown else "")
    return (f"svd: {counted(len(short), 'target')} saw a zero or rank-deficient calibration Gram (its data rank "
            f"under half its rank: {named}): the factors past the directions the data spans come from the weight alone, "
            "unmeasured (a loss of 0 there says nothing); a data rank of 0 is a layer whose calibration inputs are "
            "all zero (check the teacher), else raise calibration.num_prompts")


def short_of_rank(records: dict[str, dict]) -> list[str]:
    """The layers whose calibration data spans fewer directions than their rank (data_rank < rank)."""
    return sorted(n for n, r in records.items() if isinstance(r.get("rank"), int)
                  and isinstance(r.get("data_rank"), int) and r["data_rank"] < r["rank"])


def guarded_words(records: dict[str, dict], shown: int = 3) -> str | None:
    """The warning for a pass where compensation refused, for some layers (their records' `guard`,
    svd_compensate.line_search), the step the calibration error alone would have kept: it left their
    plain relative output error above REFUSE_ABOVE. Names the `shown` worst with their error there.
    None where none was."""
    from compress.passes.svd_compensate import REFUSE_ABOVE

    guarded = sorted(((n, r["guard"]) for n, r in records.items() if r.get("guard")),
                     key=lambda kv: -kv[1]["rel_output_error"])
    if not guarded:
        return None
    named = ", ".join(f"{n} {g['rel_output_error']:.3g}x at step {g['step']:g}" for n, g in guarded[:shown])
    more = f" and {len(guarded) - shown} more" if len(guarded) > shown else ""
    return (f"svd: compensation refused, for {counted(len(guarded), 'layer')}, the step the calibration error "
            f"chose: it left their plain relative output error above {REFUSE_ABOVE:g} (a zero output's: 1; "
            f"{named}{more}), in outputs the prediction's Fisher barely weighs; their stages kept the best step "
            "that did not (report.json: svd.layers.<name>.guard)")


SETTINGS = ("method", "allocation", "activations", "fisher", "fisher_probes", "fisher_damping",
            "objective", "objective_given")  # in its summary


def summary(records: dict[str, dict], c) -> dict:
    before = sum(r["params_dense"] for r in records.values())
    after = sum(r["kept_params"] for r in records.values())
    by_method = max_ratio_by_method(records)
    gaps = [r["fit_gap"] for r in records.values() if "fit_gap" in r]
    weighted = c.fisher != "none"  # the Fisher's estimate: probes and damping (None where none is read)
    return {"method": c.method, "allocation": c.allocation, "activations": c.activations, "fisher": c.fisher,
            **{k: getattr(c, k) if weighted else None for k in ("fisher_probes", "fisher_damping")},
            # the objective the pass ran as (svd_objective.objective_of: auto's resolution), and as the recipe gave it
            "objective": objective_of(c), "objective_given": getattr(c, "objective", None),
            "params_before": before, "params_after": after,
            "kept_ratio": after / before if before else 1.0,
            "dense": sorted(n for n, r in records.items() if r["rank"] == "dense"),
            "clamped_grams": sorted(n for n, r in records.items() if r.get("clamped")),
            # data rank below the rank (deficient_words): factors past the data unmeasured
            "rank_deficient_grams": short_of_rank(records),
            "asymmetric": sorted(n for n, r in records.items() if r.get("asymmetric")),
            # the ≤ 1.001 check: whitened layers only, the one method that claims the optimum
            "max_loss_ratio": by_method.get("whitened"),
            # every method's own worst loss / whitened optimum (asvd and svd do not reach it: 4..600 measured)
            "max_loss_ratio_by_method": by_method,
            # layers whose whitened optimum is 0 under a loss that is not: no ratio (their loss_ratio_note)
            "undefined_loss_ratios": sorted(n for n, r in records.items()
                                            if "loss_ratio" in r and r["loss_ratio"] is None),
            # asymmetric fits: the factorized layer's fit to the reference outputs above the
            # undamped rank-r optimum of that fit, a share of its output energy (the damping's cost)
            "max_fit_gap": max(gaps) if gaps else None}


def max_ratio_by_method(records: dict[str, dict]) -> dict[str, float]:
    """method -> the largest finite loss_ratio of the layers it factorized (methods with none left out;
    an older report's Infinity is not a ratio): only whitened's is the ≤ 1.001 optimality check."""
    out: dict[str, float] = {}
    for r in records.values():
        ratio = r.get("loss_ratio")
        if isinstance(ratio, (int, float)) and math.isfinite(ratio):
            method = r.get("method", "whitened")
            out[method] = max(out.get(method, ratio), ratio)
    return out
