"""What an svd pass holds while it calibrates, for plan's peak memory (plan_memory.peak_memory): its
float64 statistics (`svd_statistics`, at the block that holds most), the largest of factorizing its
widest target, its block's own output Fisher and sequential calibration's probe, and the square roots
of its output Fishers that it keeps (`calibrating`, one pass's parts at a time).
"""

from __future__ import annotations

from compress.passes.svd_targets import is_model_wide, stats_key, uses_output_gram
from compress.passes.svd_walk import from_conditioning
from compress.plan_factorize import factorizing_bytes
from compress.plan_fisher import block_fishers, fisher_roots, tap
from compress.plan_fisher import part as _part
from compress.report import block_prefix


def calibrating(recipe, plan: dict, taps: dict[int, list[dict]], resident: float) -> list[list[dict]]:
    """Per svd pass, what its walk holds at once (the passes calibrate one after another, so one
    pass's parts are never beside another's): its statistics at the block that holds most, the
    largest of factorizing its widest target, its block's own output Fisher (fisher: block) and
    within-block sequential calibration's probe, and the square roots of its output Fishers that it
    keeps. taps: svd_statistics' by pass index; resident: what the run holds as its walk starts."""
    found, f = [], plan["calibration"]
    for index, step in enumerate(plan["passes"]):
        if not (s := step.get("statistics")):
            continue
        own = {index: taps[index]} if index in taps else {}
        block = _factorizing(index, s) + block_fishers(recipe, plan, own, resident)
        if f["probe_bytes"]:  # at a block whose statistics are held
            block.append(_part("within-block sequential calibration's one-row probe", f["probe_bytes"],
                               ["teacher"],
                               " or ".join(f"{k}: false" for k in _svd_keys(recipe, "sequential"))))
        found.append(_statistics(index, s) + ([max(block, key=lambda p: p["bytes"])] if block else [])
                     + fisher_roots(recipe, plan, own, resident))
    return found


# ---- an svd pass's statistics ---------------------------------------------------------------------
def svd_statistics(targets: list, paired: bool, sequential: bool, config=None) -> dict:
    """The float64 statistics an svd pass's calibration holds (calib_stats.Stats; svd_walk.walk) of its
    `targets` (LinearInfo, the model as the pass finds it): per stats key a Gram (d, d) and a sum (d,),
    with a reference stream (`paired`: svd_decisions.fits_asymmetrically) a block input's cross term (d, d) and
    the reference's sum (d,) too; an output Gram (out, out) its sum (out,) and Σ x² (in,).
    {"held": bytes kept from the walk's start to its end (the conditioning's, the top level's, inputs
    shared by every block), "block": the largest of a block's own, "where": that block ("group index"),
    "module": its module name, "bytes": the peak, held and that block's, twice over with within-block
    `sequential` calibration (a level's statistics of one more run of the block beside the block's and
    the level's before: a bound), "sequential", "factorize": bytes of the float64 temporaries
    factorizing its widest target (`factorize_bytes`, as the pass's `config` fits and centers it),
    "widest": that target, "taps": per target what plan_fisher.fisher_sweep reads}."""
    held, blocks, modules = {}, {}, {}
    for info in targets:
        key = stats_key(info)
        if from_conditioning(info) or info.group is None or is_model_wide(info):
            held[key] = _key_bytes(info, False)  # no reference stream: conditioning, captures, captions
        else:
            blocks.setdefault(f"{info.group} {info.block}", {})[key] = _key_bytes(info, paired)
            modules.setdefault(f"{info.group} {info.block}", block_prefix(info.name))
    own = {where: sum(keys.values()) for where, keys in blocks.items()}
    where = max(own, key=own.get, default=None)
    block = own.get(where, 0)
    size = factorizing_bytes(config)
    widest = max(targets, key=lambda info: size(info, paired), default=None)
    return {"held": sum(held.values()), "block": block, "where": where, "module": modules.get(where),
            "sequential": sequential,
            "bytes": sum(held.values()) + block * (2 if sequential else 1),
            "factorize": size(widest, paired) if widest else 0, "widest": widest.name if widest else None,
            "taps": [tap(info) for info in targets]}


def _key_bytes(info, paired: bool) -> int:
    """Bytes of one stats key's float64 Stats (see svd_statistics)."""
    if uses_output_gram(info):
        d = info.out_features
        return 8 * (d * d + d + info.in_features)
    d = info.in_features
    return 8 * (d * d + d) * (2 if paired else 1)


def _statistics(i: int, s: dict) -> list[dict]:
    """svd pass `i`'s statistics (its svd_statistics `s`) at its peak."""
    if not s["bytes"]:
        return []
    where = f"{s['module'] or s['where']} holds most" if s["where"] else "held over the whole walk, no block's own"
    what = f"svd statistics (float64; {where}{', up to twice with sequential' if s['sequential'] else ''})"
    return [_part(what, s["bytes"], [f"passes.{i}.svd.targets"],
                  f"passes.{i}.svd.sequential: false" if s["sequential"] else "")]


def _factorizing(i: int, s: dict) -> list[dict]:
    if not s["factorize"]:
        return []
    return [_part(f"factorizing the widest target ({s['widest']}, float64)", s["factorize"],
                  [f"passes.{i}.svd.targets"])]


def _svd_keys(recipe, option: str) -> list[str]:
    return [f"passes.{i}.svd.{option}" for i, spec in enumerate(recipe.passes) if spec.name == "svd"]
