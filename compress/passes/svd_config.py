"""The svd pass's recipe keys (`SVDConfig`, its values checked at recipe load by svd_values) and the
notes on `ranks` patterns an earlier pattern shadows (`shadow_notes`), the file's or a --set's, and
on keys the recipe wrote that the pass does not use (`unused_notes`).
Imports no torch (the notes import svd_targets as they are made): recipe.load_recipe builds an
SVDConfig before torch's start-up."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from compress.passes.svd_values import CENTER_DEFAULT, CHOICES, ENERGY_DEFAULT, check_values


@dataclass
class SVDConfig:
    """Recipe keys of the svd pass."""

    targets: list = field(default_factory=lambda: ["attention", "mlp"])  # names, re:, roles
    ignore: list = field(default_factory=list)
    method: str = "whitened"  # whitened | asvd | svd
    alpha: float = 0.5  # asvd scaling exponent
    allocation: str = "uniform"  # uniform | per_role | energy | global
    ratio: float = 0.5  # kept-parameter ratio (uniform; global budget)
    ratios: dict | None = None  # per_role: role -> ratio (None keeps the role dense)
    energy: float = ENERGY_DEFAULT  # energy allocation: fraction of calibration output energy kept
    sensitivity: bool | None = None  # global: weight layers by measured final-prediction effect
    sensitivity_batches: int = 2  # calibration batches used to measure sensitivity
    trust_region: float | None = 2.0  # global: ranks within this factor of the uniform rank (null: any)
    multiple: int = 16  # ranks are multiples of this
    activations: str = "student"  # student (error-aware) | teacher
    # absorb upstream error (svd_compensate); null: wherever it applies (method whitened, the
    # prediction's Fisher); true insists, so a recipe where it cannot apply is an error
    compensate: bool | None = None
    compensate_batches: int | None = None  # calibration batches for its gradient and line search (None: all)
    compensate_toward: str = "teacher"  # teacher (also undo earlier passes) | input (the model as found)
    compensate_search: str = "walk"  # β ladder: walk (from the previous stage's β) | ladder (every step)
    ranks: dict = field(default_factory=dict)  # pattern -> explicit rank (overrides allocation)
    center: list = field(default_factory=lambda: list(CENTER_DEFAULT))  # patterns: centered Gram + bias fold
    modulation_grid: int = 64  # timesteps per calibration batch for modulation Grams (0: own)
    # weight outputs by their effect on the prediction: all | modulation (those only) | none; or by
    # their effect on their block's output: block (streamable, no compensation)
    fisher: str = "all"
    # Fishers one backward sweep holds, as measured (more targets: more sweeps); auto: half the
    # memory free on the run's device when the sweeps start (svd_fisher_budget.fisher_budget)
    fisher_memory_gb: float | Literal["auto"] = 2.0
    fisher_probes: int = 4  # random probes per calibration batch for the output Fisher
    fisher_damping: float = 1e-3  # λ = damping · mean Fisher eigenvalue
    # whole-model backwards (the prediction's Fisher, compensation) recompute each block's activations
    # instead of keeping them: Flux.1-dev at 1024² keeps ~24 GiB per calibration sample otherwise, 2.1 with
    gradient_checkpointing: bool = False
    # fit block targets to the outputs the uncompressed model gives them, from the inputs the student
    # feeds them (cross term of both streams): true | false | auto (targets without the prediction's Fisher)
    asymmetric: bool | str = "auto"
    asymmetric_damping: float = 1e-2  # λ = damping · mean eigenvalue of the student's input Gram
    # within a block, take each target's stats with the block's earlier targets already compressed
    # (one re-run of the block per level of stats keys, in forward order; svd_walk.in_order): true | false |
    # auto (where block targets are fitted asymmetrically: there it measured 0.85-0.96x the error)
    sequential: bool | str = "auto"
    # the prediction the output Fisher and compensation weigh errors by: each calibration row's own (branches:
    # the prompt's and the empty prompt's), or the guided one of each row pair, u + s·(c − u), s the source's
    # guidance scale (guided; guided_fisher / guided_compensation: that part alone); auto: guided_compensation
    # where a distill pass follows and the calibration pairs the branches, else branches (svd_objective.resolve)
    objective: str = "auto"
    progress: bool = True
    CHOICES = CHOICES  # the string keys' choices (svd_values): refused at recipe load naming them

    def validate(self) -> None:
        check_values(self)  # values alone, at recipe load (svd_values)


def shadow_notes(targets, ranks: dict, set_keys: dict | None = None,
                 added: set | None = None) -> list[tuple[str, str, tuple]]:
    """(key, note, keys read: which layers are targets, the patterns before it) per `ranks` pattern
    an earlier one shadows (shadowed_ranks). `set_keys`: the option keys (ranks.P) a --set gave, to
    that --set; `added`: those a --set added rather than gave another value where the file has them
    (None: every one). A --set pattern the recipe lacks goes before the file's to give its layers
    their rank, so a file pattern it shadows is meant: no note; one the file has stands where the
    file has it, so the file's order is advised as without it. Where the two came from different
    places, reordering is not the user's to do: the note says why."""
    from compress.passes.svd_targets import shadowed_ranks

    out, set_keys, patterns = [], set_keys or {}, list(ranks)
    for p, e in shadowed_ranks(targets, ranks):
        reads = ("targets", "ignore", *(f"ranks.{q}" for q in patterns[:patterns.index(p)]))
        p_set, e_set = set_keys.get(f"ranks.{p}"), set_keys.get(f"ranks.{e}")
        e_added = e_set and (added is None or f"ranks.{e}" in added)
        if e_added and not p_set:
            continue
        if not p_set:  # e: the file's pattern, its value given by a --set: the file's order
            e_set = None
        words = f"svd.ranks: pattern {p!r} gives no layer its rank: {e!r}, earlier, matches every layer it does"
        if p_set == e_set:  # both in the file, or in one --set
            out.append((f"ranks.{p}", f"{words} (the first matching pattern wins); put it before {e!r} "
                                      f"to give those layers its rank, or remove it", reads))
            continue
        how = ("both were set on the command line: a --set pattern new to the recipe goes before the others "
               "(the last one first), one the recipe has stays where it is" if e_set else
               f"the --set replaced the recipe's {p!r} where the file has it, after {e!r}")
        out.append((f"ranks.{p}", f"{words} (the first matching pattern wins; {how})", reads))
    return out


# the keys an allocation reads, none of which a pass whose `ranks` give every target its rank uses
ALLOCATION_KEYS = ("allocation", "ratio", "ratios", "energy", "sensitivity", "sensitivity_batches", "trust_region",
                   "multiple")
COMPENSATE_KEYS = ("compensate_batches", "compensate_toward", "compensate_search")
FISHER_KEYS = ("fisher_probes", "fisher_damping", "fisher_memory_gb")


def unused_notes(c: SVDConfig, targets) -> list[tuple[str, str, tuple]]:
    """(key, note, keys read) per key the recipe wrote (svd_values.written_keys; where not known, one
    at other than its default) that this pass, on its resolved `targets` (LinearInfo), does not use:
    asvd's alpha under another method, the asymmetric fit's damping where no target is fitted so,
    compensation's keys where it does not apply, the output Fisher's where none is measured, gradient
    checkpointing without a whole-model backward, modulation_grid without modulation targets,
    sensitivity_batches with sensitivity: false, the allocation's keys where `ranks` gives every
    target its rank; and a pattern listed twice in targets, ignore or center. Warned, not refused: a
    user may switch a mode off and keep its tuned values (the run is the same as without them)."""
    from compress.passes.svd_values import written_keys
    from compress.recipe_convert import field_default

    written, fields = written_keys(c), dataclasses.fields(c)
    said = [f.name for f in fields if (f.name in written if written is not None
                                       else getattr(c, f.name) != field_default(f))]
    why = _unused_reasons(c, targets)
    out = [(k, f"svd.{k} is not used {why[k][0]}", why[k][1]) for k in said if k in why]
    return out + _repeated_patterns(c)


def _unused_reasons(c: SVDConfig, targets) -> dict[str, tuple[str, tuple]]:
    """key -> ('with method: whitened (...)', the keys the reason read) of the keys this pass does not use."""
    from compress.passes.svd_decisions import fits_asymmetrically, prediction_fisher
    from compress.passes.svd_targets import explicit_rank

    why = {}
    if targets and all(explicit_rank(i, c.ranks) is not None for i in targets):
        for k in ALLOCATION_KEYS:
            why[k] = ("here: svd.ranks gives every target of this pass its rank", ("ranks", "targets", "ignore"))
    if c.method != "asvd":
        why.setdefault("alpha", (f"with method: {c.method} (it is asvd's scaling exponent)", ("method",)))
    if not fits_asymmetrically(c, targets):
        why.setdefault("asymmetric_damping", _no_asymmetric_fit(c))
    weighted = [i for i in targets if prediction_fisher(c, i)]
    modulation = any(i.role == "modulation" for i in targets)
    no_targets = ("with fisher: modulation: no target of this pass is a modulation linear",
                  ("fisher", "targets", "ignore"))
    if c.fisher == "none" or (c.fisher == "modulation" and not modulation):
        for k in FISHER_KEYS:
            why.setdefault(k, no_targets if c.fisher == "modulation" else ("with fisher: none", ("fisher",)))
    if not weighted:  # no whole-model backward: the prediction's Fisher, compensation
        why.setdefault("gradient_checkpointing", no_targets if c.fisher == "modulation" else
                       (f"with fisher: {c.fisher} (no backward through the whole model)", ("fisher",)))
    compensation = no_compensation(c) or (None if weighted else no_targets)
    if compensation:
        for k in COMPENSATE_KEYS:
            why.setdefault(k, compensation)
    if not modulation:
        why.setdefault("modulation_grid", ("here: no target of this pass is a modulation linear "
                                           "(it sets the timesteps of their Grams)", ("targets", "ignore")))
    if c.allocation == "global" and c.sensitivity is False:
        why.setdefault("sensitivity_batches", ("with sensitivity: false", ("sensitivity",)))
    return why


def _no_asymmetric_fit(c: SVDConfig) -> tuple[str, tuple]:
    """Why no target of the pass is fitted asymmetrically (svd_decisions.fitted_to_reference)."""
    if c.asymmetric is False:
        return "with asymmetric: false", ("asymmetric",)
    if c.method != "whitened" or c.activations != "student":
        return (f"with method: {c.method}" if c.method != "whitened" else "with activations: teacher",
                ("method", "activations"))
    return (f"here: no target of this pass is fitted asymmetrically (asymmetric: {c.asymmetric}; auto fits "
            f"only targets without the prediction's Fisher, and fisher: {c.fisher} gives it to them)",
            ("asymmetric", "fisher", "targets", "ignore"))


def no_compensation(c: SVDConfig) -> tuple[str, tuple] | None:
    """Why compensation does not apply to this pass, by its keys alone (svd.SVDPass._compensation_roots)."""
    if c.compensate is False:
        return "with compensate: false", ("compensate",)
    if c.method != "whitened":
        return f"with method: {c.method} (compensation needs whitened)", ("method",)
    if c.fisher in ("none", "block"):
        return f"with fisher: {c.fisher} (compensation needs the prediction's Fisher: all or modulation)", ("fisher",)
    return None


def _repeated_patterns(c: SVDConfig) -> list[tuple[str, str, tuple]]:
    """A pattern listed twice in targets, ignore or center: the second changes nothing (likely a slip
    for another pattern), noted at its item."""
    out = []
    for key in ("targets", "ignore", "center"):
        patterns = getattr(c, key)
        for n, p in enumerate(patterns):
            if p in patterns[:n]:
                out.append((f"{key}.{n}", f"svd.{key} lists {p!r} twice ({key}.{patterns.index(p)} and {key}.{n}): "
                                          "the second changes nothing; list each pattern once, or write the one "
                                          "meant", ()))
    return out
