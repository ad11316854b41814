"""The svd pass's recipe keys' values alone, no model (`check_values`: SVDConfig.validate, at recipe
load; BadValue names the key), the string keys' choices and which allocation reads which key.
Imports no torch: a recipe's svd options are refused before torch's start-up (recipe.load_recipe).
The checks against the model are svd_checks'."""

from __future__ import annotations

import dataclasses
import re

from compress.errors import BadValue, as_yaml, did_you_mean, not_one_of
from compress.passes.svd_objective import OBJECTIVES, PARTS
from compress.recipe_names import METHODS, ROLES
from compress.recipe_yaml import spelling_hint

ALLOCATIONS = ("uniform", "per_role", "energy", "global")
FISHER = ("all", "block", "modulation", "none")
# SVDConfig's string keys' choices (SVDConfig.CHOICES: refused at recipe load naming them, and in check_values)
CHOICES = {"method": METHODS, "allocation": ALLOCATIONS, "activations": ("student", "teacher"), "fisher": FISHER,
           "compensate_toward": ("teacher", "input"), "compensate_search": ("walk", "ladder"),
           "objective": OBJECTIVES}  # auto, or what the Fisher and compensation read (svd_objective)
ENERGY_DEFAULT = 0.99  # SVDConfig.energy's default: another value asks for allocation: energy
CENTER_DEFAULT = ["modulation"]  # SVDConfig.center's default: left alone where no modulation is targeted


def _bad(key: str, message: str, *reads: str) -> BadValue:
    """A BadValue at `key` whose check read `reads` besides it (and nothing else of the pass): at a
    line of the file the error names the --sets of those keys alone (recipe_convert.with_sets), not
    every --set of the pass. A BadValue made otherwise says nothing of what it read: all are named."""
    return BadValue(key, message, reads=reads)


def check_syntax(pattern, key: str, at: str | None = None) -> None:
    """A pattern alone (no model): a string, and for `re:` a regex that compiles. Errors name the
    recipe key `at` (targets.1, ranks.modulation; default `key`)."""
    if not isinstance(pattern, str):
        raise BadValue(at or key, f"svd.{key}: patterns must be strings (a module name, a role or "
                                  f"re:REGEX), got {pattern!r}", reads=())
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as err:
            raise BadValue(at or key, f"svd.{key}: bad regex {pattern!r}: {err}", reads=()) from None


def check_values(c) -> None:
    """The keys' values alone, no model (SVDConfig.validate: at recipe load, BadValue names the key)."""
    for key, allowed in CHOICES.items():
        if getattr(c, key) not in allowed:
            raise _bad(key, not_one_of(f"svd.{key}", getattr(c, key), allowed))
    _check_numbers(c)
    _check_counts(c)
    _check_patterns(c)
    _check_allocation_keys(c)


def _check_objective(c) -> None:
    """svd.objective guided (or a part of it) where the part it guides is not done: it would do nothing."""
    parts = PARTS.get(c.objective, ())
    if parts and c.fisher not in ("all", "modulation"):
        raise _bad("objective", f"svd.objective: {c.objective} needs the prediction's Fisher (fisher: all or "
                                f"modulation); this pass has fisher: {c.fisher}, where it would do nothing: set "
                                "svd.fisher: all or modulation, or svd.objective: branches", "fisher")
    if parts == ("compensation",) and (c.compensate is False or c.method != "whitened"):
        raise _bad("objective", f"svd.objective: {c.objective} needs compensation (method: whitened, compensate not "
                                f"false); this pass has method: {c.method}, compensate: {as_yaml(c.compensate)}, where "
                                "it would do nothing: set svd.method: whitened with svd.compensate not false, or "
                                "svd.objective: branches", "method", "compensate")


def _check_numbers(c) -> None:
    _true_false_or_auto(c, "asymmetric")
    if c.compensate is True and (c.method != "whitened" or c.fisher not in ("all", "modulation")):
        raise _bad("compensate", "svd.compensate: true needs method: whitened and the prediction's "
                                     f"Fisher (fisher: all or modulation); this pass has method: {c.method}, "
                                     f"fisher: {c.fisher}, where it would do nothing", "method", "fisher")
    _check_objective(c)
    if c.asymmetric is True and (c.method != "whitened" or c.activations != "student"):
        raise _bad("asymmetric", "svd.asymmetric: true needs method: whitened and activations: student",
                       "method", "activations")
    _true_false_or_auto(c, "sequential")
    if c.sequential is True and c.activations != "student":
        raise _bad("sequential", "svd.sequential: true needs activations: student (with teacher "
                                     "activations every target's stats come from the teacher)", "activations")
    for key in ("asymmetric_damping", "fisher_damping"):
        if not getattr(c, key) > 0:
            raise _bad(key, f"svd.{key} must be > 0, got {getattr(c, key)}")
    if not c.alpha >= 0:
        raise _bad("alpha", f"svd.alpha (asvd's scaling exponent) must be ≥ 0, got {c.alpha}")
    for key in ("ratio", "energy"):
        if not 0 < getattr(c, key) <= 1:
            raise _bad(key, f"svd.{key} must be in (0, 1], got {getattr(c, key)}")
    if c.trust_region is not None and not c.trust_region >= 1:
        raise _bad("trust_region", f"svd.trust_region must be ≥ 1 (or null for no bound), "
                                       f"got {c.trust_region}")
    if c.fisher_memory_gb != "auto" and not c.fisher_memory_gb > 0:
        raise _bad("fisher_memory_gb", f"svd.fisher_memory_gb must be > 0 (GiB) or auto, "
                                           f"got {c.fisher_memory_gb}")


def _true_false_or_auto(c, key: str) -> None:
    """A bool-or-auto key (read as any string by the recipe): yes or 1 refused with how to write it."""
    value = getattr(c, key)
    if isinstance(value, bool) or value == "auto":
        return
    hint = (spelling_hint(value, {bool}) or did_you_mean(value, ("auto",))) if isinstance(value, str) else ""
    raise _bad(key, f"svd.{key} must be true, false or auto, not {value!r}{hint}")


def _check_counts(c) -> None:
    for key in ("multiple", "fisher_probes", "sensitivity_batches"):
        if not _is_int(getattr(c, key)) or getattr(c, key) < 1:
            raise _bad(key, f"svd.{key} must be an integer ≥ 1, got {getattr(c, key)!r}")
    if c.compensate_batches is not None and not (_is_int(c.compensate_batches) and c.compensate_batches >= 1):
        raise _bad("compensate_batches", f"svd.compensate_batches must be an integer ≥ 1 (or null: all), "
                                             f"got {c.compensate_batches!r}")
    if not _is_int(c.modulation_grid) or c.modulation_grid < 0:
        raise _bad("modulation_grid", "svd.modulation_grid must be an integer ≥ 0 (0: the calibration's "
                                          f"own timesteps), got {c.modulation_grid!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_patterns(c) -> None:
    for key in ("targets", "ignore", "center"):
        if not isinstance(getattr(c, key), list):
            raise _bad(key, f"svd.{key} must be a list of patterns, got {getattr(c, key)!r}")
        for n, p in enumerate(getattr(c, key)):
            check_syntax(p, key, f"{key}.{n}")
    for p, rank in c.ranks.items():
        check_syntax(p, "ranks", f"ranks.{p}")
        if not _is_int(rank) or rank < 1:
            raise _bad(f"ranks.{p}", f"svd.ranks: rank {as_yaml(rank)} for {p!r} must be an integer ≥ 1"
                                         f"{_colon_hint(p, rank) or _rank_hint(rank)}")


def _rank_hint(rank) -> str:
    """How to write the integer a rank nearly is: '1_000' -> 1000, 8.0 -> 8; else ''."""
    if isinstance(rank, str):
        return spelling_hint(rank, {int})
    if isinstance(rank, float) and rank.is_integer() and rank >= 1:
        return f" (an integer is written without a dot or exponent: {int(rank)})"
    return ""


def _colon_hint(pattern: str, rank) -> str:
    """YAML reads `modulation:8` (no space after the colon) as one key 'modulation:8' without a value:
    recipe_yaml refuses it where nothing follows ({modulation:8}); a quoted key ({'modulation:8'}), an
    explicit null ({modulation:8: null}) or a --set of either reaches this hint. The rank is after the
    last colon (a module name has none, so neither has a regex matching one): 're:norm:8' is re:norm at
    8, but 're:8' the regex 8 ('re' is no pattern). A regex is often quoted (re:[ab] must be, in a flow
    mapping), and 'modulation: 8' was (the space is there): their hint quotes the pattern alone, where
    'write 're:[ab]: 8'' made one key again, and 'modulation: 8' was told to write what it wrote."""
    name, colon, value = pattern.rpartition(":")
    name, value = name.rstrip(), value.strip()
    if rank is not None or not value.isdigit() or name in ("", "re"):
        return ""
    said = f" (YAML reads '{pattern}' as one key without a value: "
    if name.startswith("re:") or pattern[len(name) + 1:][:1].isspace():
        return f"{said}quote the pattern alone, then its rank: '{name}': {value})"
    return f"{said}write '{name}: {value}', with a space)"


# key -> the allocations that read it; another allocation ignores it, so the recipe writing it there is
# refused, whatever its value (ratio: 0.5 under energy planned as without it)
READ_BY = {"ratio": ("uniform", "global"), "energy": ("energy",), "sensitivity": ("global",),
           "sensitivity_batches": ("global",), "trust_region": ("global",)}

# keys every saved recipe of an svd pass writes (recipe.to_plain: every key, defaults filled in), since
# the pass's first version: a pass writing them all, in a recipe without default marks, is taken for
# an older output's recipe.yaml (saved before the marks), whose defaults were filled in rather than meant
SAVED_KEYS = frozenset({"ratio", "ratios", "energy", "sensitivity", "sensitivity_batches", "progress"})


def unread_keys(allocation) -> set[str]:
    """The svd keys an `allocation` never reads (ratios but for per_role, READ_BY's of the others):
    whatever their values, its result is the same (`--resume` compares a saved stage without them)."""
    return {key for key, allocations in READ_BY.items() if allocation not in allocations} | \
        ({"ratios"} if allocation != "per_role" else set())


def judged_by_value(c) -> bool:
    """Whether only the values of config `c` tell which keys its recipe gave: a config made otherwise
    (no `_given`), or an older saved recipe's pass, without marks, that writes every key (SAVED_KEYS),
    where a key at its default counts as filled in. A dump marks those '# default' (recipe_dump.filled_keys),
    so that read back it is judged as it was."""
    given = c.__dict__.get("_given")
    return given is None or ("_filled" not in c.__dict__ and SAVED_KEYS <= set(given))


def written_keys(c) -> set[str] | None:
    """The keys of the pass the recipe wrote (the file or a --set; the loader records them as the
    config's `_given`, less those a saved recipe marks '# default': `_filled`), None where only the
    values tell (`judged_by_value`). A null written where null is the default (ratios, sensitivity)
    counts as left out: `--set KEY=null` sets such a key, it cannot remove it."""
    if judged_by_value(c):
        return None
    given = c.__dict__["_given"]
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    return {k for k in given if not (getattr(c, k, None) is None and defaults.get(k) is None)}


def _said(c, key: str, written: set[str] | None, default) -> bool:
    """Whether the recipe gives `key`: it wrote it (`written`), or, where that is not known, its value
    is not the default."""
    return key in written if written is not None else getattr(c, key) != default


def _check_allocation_keys(c) -> None:
    """ratios belong to per_role, and the keys of READ_BY to their allocations: a key the recipe
    writes (`written_keys`; where not known, one at other than its default) under another allocation
    would be ignored."""
    written = written_keys(c)
    if _said(c, "ratios", written, None) and c.allocation != "per_role":
        raise _bad("ratios", f"svd.ratios is only read by allocation: per_role (this pass has "
                                 f"allocation: {c.allocation}); remove it or set allocation: per_role", "allocation")
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    for key, allocations in READ_BY.items():
        if _said(c, key, written, defaults[key]) and c.allocation not in allocations:
            which = " or ".join(allocations)
            raise _bad(key, f"svd.{key} is only read by allocation: {which} (this pass has "
                                f"allocation: {c.allocation}); remove it or set allocation: {which}", "allocation")
    if c.allocation == "per_role":
        _check_ratios(c.ratios)



def _check_ratios(ratios) -> None:
    if not isinstance(ratios, dict) or not ratios:
        raise _bad("allocation", "svd.ratios (role -> kept-parameter ratio) is required for "
                                     "allocation: per_role", "ratios")
    for role, r in ratios.items():
        if role not in ROLES:
            raise _bad(f"ratios.{role}", f"svd.ratios: unknown role {role!r}"
                                             f"{did_you_mean(str(role), ROLES)} (roles: {', '.join(ROLES)})")
        if r is not None and (not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r <= 1):
            raise _bad(f"ratios.{role}", f"svd.ratios.{role} must be a number in (0, 1] or null "
                                             f"(dense), got {r!r}")
