"""The svd pass's recipe keys (`SVDConfig`, its values checked at recipe load by svd_values) and the
notes on `ranks` patterns an earlier pattern shadows (`shadow_notes`), the file's or a --set's.
Imports no torch (the notes import svd_targets as they are made): recipe.load_recipe builds an
SVDConfig before torch's start-up."""

from __future__ import annotations

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
    # guidance scale (guided; guided_fisher / guided_compensation: that part alone)
    objective: str = "branches"
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
