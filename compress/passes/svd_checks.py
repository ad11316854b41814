"""The svd pass's recipe checks (before any compute) and its report's summary."""

from __future__ import annotations

from torch import nn

from compress.arch.base import Adapter
from compress.errors import UserError
from compress.linalg import METHODS
from compress.passes.svd_global import check_global_budget
from compress.passes.svd_targets import check_explicit_ranks, matches, resolve_targets

ALLOCATIONS = ("uniform", "per_role", "energy", "global")
FISHER = ("all", "block", "modulation", "none")


def check_config(c, model: nn.Module, adapter: Adapter) -> None:
    """Every svd key against its allowed values and the model's linears (c: an SVDConfig)."""
    _one_of("method", c.method, METHODS)
    _one_of("allocation", c.allocation, ALLOCATIONS)
    _one_of("activations", c.activations, ("student", "teacher"))
    _one_of("fisher", c.fisher, FISHER)
    _one_of("compensate_toward", c.compensate_toward, ("teacher", "input"))
    _one_of("compensate_search", c.compensate_search, ("walk", "ladder"))
    _check_numbers(c)
    infos = adapter.linears(model)
    targets = resolve_targets(infos, c.targets, c.ignore)
    check_explicit_ranks(targets, c.ranks)
    for p in c.center:
        if not any(matches(p, i) for i in infos):
            raise UserError(f"svd.center: pattern {p!r} matches no linear layer of the model")
    biasless = [i.name for i in targets if centered(c, i) and model.get_submodule(i.name).bias is None]
    if biasless:
        raise UserError(f"svd.center: {', '.join(biasless[:3])}{' …' if len(biasless) > 3 else ''} "
                        "has no bias to take the mean error; leave it out of svd.center")
    if c.allocation == "per_role":
        _check_ratios(c.ratios, {i.role for i in targets})
    if c.allocation == "global":
        check_global_budget(targets, c)


def _check_numbers(c) -> None:
    if c.asymmetric not in (True, False, "auto"):
        raise UserError(f"svd.asymmetric must be true, false or auto, got {c.asymmetric!r}")
    if c.asymmetric is True and (c.method != "whitened" or c.activations != "student"):
        raise UserError("svd.asymmetric: true needs method: whitened and activations: student")
    if not c.asymmetric_damping > 0:
        raise UserError(f"svd.asymmetric_damping must be > 0, got {c.asymmetric_damping}")
    if not 0 < c.ratio <= 1:
        raise UserError(f"svd.ratio must be in (0, 1], got {c.ratio}")
    if not 0 < c.energy <= 1:
        raise UserError(f"svd.energy must be in (0, 1], got {c.energy}")
    if c.compensate_batches is not None and not (isinstance(c.compensate_batches, int)
                                                 and c.compensate_batches >= 1):
        raise UserError(f"svd.compensate_batches must be an integer ≥ 1 (or null: all), "
                        f"got {c.compensate_batches!r}")
    if c.trust_region is not None and not c.trust_region >= 1:
        raise UserError(f"svd.trust_region must be ≥ 1 (or null for no bound), got {c.trust_region}")
    if c.fisher_memory_gb != "auto" and not c.fisher_memory_gb > 0:
        raise UserError(f"svd.fisher_memory_gb must be > 0 (GiB) or auto, got {c.fisher_memory_gb}")
    if not isinstance(c.multiple, int) or c.multiple < 1:
        raise UserError(f"svd.multiple must be an integer ≥ 1, got {c.multiple!r}")


def check_streaming(c) -> None:
    """Block weights streamed: everything but whole-model forwards (the prediction's Fisher, and
    with it compensation; global's measured sensitivities)."""
    if c.fisher in ("all", "modulation"):
        raise UserError(f"svd.fisher: {c.fisher} needs the whole model in memory (one forward and "
                        "backward per probe); with stream: true set svd.fisher: block (each "
                        "block's own output Fisher) or none")
    if c.allocation == "global" and c.sensitivity is not False:
        raise UserError("svd.sensitivity needs the whole model in memory (one forward per layer); "
                        "with stream: true set svd.sensitivity: false")


def centered(c, info) -> bool:
    """Whether a target is factorized on its centered Gram with the mean error folded into its
    bias (svd.center)."""
    return any(matches(p, info) for p in c.center)


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"svd.{key} must be one of {', '.join(allowed)}; got {value!r}")


def _check_ratios(ratios, roles: set[str]) -> None:
    if not isinstance(ratios, dict) or not ratios:
        raise UserError("svd.ratios (role -> kept-parameter ratio) is required for allocation: per_role")
    for role, r in ratios.items():
        if r is not None and not 0 < r <= 1:
            raise UserError(f"svd.ratios.{role} must be in (0, 1] or null, got {r}")
    missing = sorted(roles - set(ratios))
    if missing:
        raise UserError(f"svd.ratios has no ratio for targeted role(s) {', '.join(missing)}")


def merge_report(report: dict, this: dict, records: dict[str, dict], c) -> None:
    """A recipe may hold several svd passes: `passes` keeps each pass's own summary; layers,
    compensation stages, cache hits and fused layers accumulate; the summary covers every layer
    factorized so far; `global` is the last global allocation's."""
    layers = {**report.get("layers", {}), **records}
    compensation = dict(report.get("compensation", {}))
    n = len(report.get("passes", [])) + 1
    for label, search in this["compensation"].items():
        compensation[label if label not in compensation else f"{label} (svd pass {n})"] = search
    report.update(summary(layers, c), layers=layers, compensation=compensation,
                  passes=report.get("passes", []) + [this],
                  cache_hits=report.get("cache_hits", []) + this["cache_hits"],
                  fused_gelu=sorted(set(report.get("fused_gelu", [])) | set(this["fused_gelu"])),
                  **({"global": this["global"]} if "global" in this else {}))


def summary(records: dict[str, dict], c) -> dict:
    before = sum(r["params_dense"] for r in records.values())
    after = sum(r["kept_params"] for r in records.values())
    ratios = [r["loss_ratio"] for r in records.values() if "loss_ratio" in r]
    return {"method": c.method, "allocation": c.allocation, "activations": c.activations, "fisher": c.fisher,
            "params_before": before, "params_after": after,
            "kept_ratio": after / before if before else 1.0,
            "dense": sorted(n for n, r in records.items() if r["rank"] == "dense"),
            "clamped_grams": sorted(n for n, r in records.items() if r.get("clamped")),
            "asymmetric": sorted(n for n, r in records.items() if r.get("asymmetric")),
            "max_loss_ratio": max(ratios) if ratios else None}
