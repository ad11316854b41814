"""`dit-compress plan`'s words: a plan (plan.make_plan's dict) printed (`print_plan`): each pass on a
line or two (`step_words`), the parameters by role with the footnotes of their bounds (≤), and the
total line (`total_words`: exact, or an upper bound and why)."""

from __future__ import annotations

import json
from collections import Counter

from rich.cells import cell_len
from rich.text import Text

from compress.calib_footprint import describe, human_size
from compress.plan_budget import range_words, ranged_keys
from compress.plan_memory import memory_words
from compress.passes.svd import LATER
from compress.passes.svd_objective import resolved_words
from compress.report import results
from compress.report_fit import JSON_OR_WIDER, fitted_rows, is_piped, lines_width, print_fitted, wrapped


def where_words(step: dict) -> str:
    return step["set"] if step.get("set") else f"line {step['line']}"


def step_words(step: dict) -> str:
    """A pass's plan on a line or two: long lists and name -> rank maps counted, not dumped
    (`plan --json` has them whole)."""
    hidden = ("pass", "line", "set", "fisher", "streamed_scan", "student", "at_most", "statistics",
              "calibrates", "objective")
    ranges = ranged_keys(step)  # a removal's counts per group, fewest–most (in the key's own place)
    shown = {k: v for k, v in step.items() if k not in hidden and k not in {f"{r}_min" for r in ranges}}
    bound = bounded_keys(step)
    words = "; ".join(f"{key}: {'≤ ' if key in bound and value != LATER else ''}"
                      f"{range_words(step[f'{key}_min'], value) if key in ranges else _brief(key, value)}"
                      for key, value in shown.items())
    if bound:
        return f"{words}; ≤: {_at_most_words(step['at_most'])}"
    if ranges:
        return f"{words}; ranges: {_takes_words(step['at_most'])} before it, from groups picked at run time"
    return words


def bounded_keys(step: dict) -> set[str]:
    """The keys of a step with `at_most` (after removals whose blocks are picked at run time) that
    are counted over every block, upper bounds: an svd pass's targets and parameters (a removal's
    blocks per group are ranges: plan_budget.count_ranges)."""
    if not step.get("at_most"):
        return set()
    return {k for k in ("targets", "params_before", "params_after") if k in step}


def _at_most_words(unplaced: list[dict]) -> str:
    """Why a step's counts are bounds: the removals before it whose blocks are picked at run time."""
    return f"counted over every block, but {_takes_words(unplaced)} before it at run time"


def _takes_words(unplaced: list[dict]) -> str:
    """'remove_blocks (line 4) takes 2 blocks' for each removal whose blocks are picked at run time."""
    return " and ".join(f"{u['pass']} ({where_words(u)}) takes {u['blocks']} block{'s' if u['blocks'] > 1 else ''}"
                        for u in unplaced)


def _rank_order(rank) -> tuple:
    """Numeric ranks first, ascending; then words ("dense", "decided after calibration")."""
    return (1, 0, str(rank)) if isinstance(rank, str) else (0, rank, "")


def _brief(key: str, value) -> str:
    if key == "ranks" and isinstance(value, dict):  # layer -> rank | "dense" | LATER
        counts = Counter(value.values())
        if len(counts) <= 1:
            return str(next(iter(counts), "none"))
        return ", ".join(f"{rank} ×{n}" for rank, n in sorted(counts.items(), key=lambda kv: _rank_order(kv[0])))
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} ({', '.join(map(str, value[:2]))}, …, {value[-1]})"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


NO_CALIBRATION = "calibration: none (no pass calibrates: the run draws only its held-out inputs)"


def calibration_words(calib: dict) -> str:
    """plan's calibration line: the inputs and their activations (`describe`) where some pass calibrates
    (calibration.used); where none does, the inputs a pass reads all the same (calibration.drawn:
    distill's teacher samples), which hold no block activations, or NO_CALIBRATION. Through a pipeline
    source it says the pipeline is sampled, for minutes where it is a real one (not calibration.toy_pipeline)."""
    if calib.get("used", True):
        return describe(calib)
    if not calib.get("drawn"):
        return NO_CALIBRATION
    how = ""
    if calib.get("source") == "pipeline":  # a real pipeline samples for minutes, a toy's in seconds
        how = ", sampling the pipeline" + ("" if calib.get("toy_pipeline") else " (minutes)")
    return (f"calibration: {calib['rows']:,} inputs drawn{how}, though no pass calibrates: a pass reads them "
            "(distill's data: teacher_samples) and holds no block activations of them (memory counts none)")


def print_plan(plan: dict) -> None:
    _say(f"{plan['recipe']}  teacher {plan['teacher']} ({plan['family']})", (len(str(plan["recipe"])), "bold"))
    if plan.get("stream"):
        s = plan["stream"]
        _say(f"  streamed: the top level ({s['top_level_params']:,} params) and one block at a "
             f"time (at most {s['largest_block_params']:,}) resident: "
             f"{s['resident_params'] / plan['params_before']:.1%} of the teacher's weights")
    _say(f"  {calibration_words(plan['calibration'])}")
    if "memory" in plan:
        _say(f"  {memory_words(plan['memory'])}")
    for step in plan["passes"]:
        _say(f"  {step['pass']} ({where_words(step)}): {step_words(step)}", (2 + len(step["pass"]), "cyan"))
        if "objective" in step:  # svd.objective auto: what it runs as, and why
            _say(f"    {resolved_words(step['objective'])}")
        if "streamed_scan" in step:
            f = step["streamed_scan"]
            _say("    streamed skip scan: none (the scores of the importance pass before it)"
                 if not f["scans"] else
                 f"    streamed skip scan: {f['scans']} scan(s), each block read once per "
                 f"calibration batch: the checkpoint read {f['checkpoint_reads']} times "
                 f"(at most {f['block_reads']:,} block reads); up to N + 1 residual streams of "
                 f"a batch held, about {human_size(f['batch_bytes'])}")
        if "fisher" in step:
            f = step["fisher"]
            per = (f"fisher_memory_gb: auto, {f['sweep_gib']} GiB per sweep: half the memory free here now"
                   + (f" less the {human_size(f['resident_bytes'])} the run holds by then"
                      if f.get("resident_bytes") else "")
                   if f["memory_gb"] == "auto" else f"fisher_memory_gb: {f['memory_gb']} GiB per sweep")
            sweeps = f"{f['sweeps']} backward sweep{'s' if f['sweeps'] != 1 else ''}"
            targets = f"{f['targets']} target{'s' if f['targets'] != 1 else ''}"
            _say(f"    output Fisher of {targets}: {sweeps} over the "
                 f"calibration batches ({per}), {human_size(f['disk_bytes'])} on disk while the pass runs")
            plain, checkpointed = (human_size(n) for n in plan["backward"])
            other = (f"svd.gradient_checkpointing; {plain} without" if f["gradient_checkpointing"]
                     else f"{checkpointed} with svd.gradient_checkpointing: true")
            _say(f"    its whole-model backwards keep about "
                 f"{checkpointed if f['gradient_checkpointing'] else plain} per calibration batch ({other})")
    later = plan.get("decided_later", [])
    open_roles = {role for entry in later for role in entry["roles"]}  # ranks decided after calibration
    most, marks = plan["by_role_after_at_most"], plan["by_role_after_is"]
    rows = []
    for role, n in plan["by_role_before"].items():
        after = most.get(role, 0)
        bound = "≤ " if marks.get(role) == "at most" else ""
        rows.append([role, f"{n:,}", f"{bound}{after:,}", f"{bound}{after / n:.1%}"])
    columns = [("role", "left"), ("before", "right"), ("after (planned)", "right"), ("ratio", "right")]
    print_fitted(results, fitted_rows("parameters by role (linears)", None, columns, rows, results.width,
                                      ("before", "after (planned)"), JSON_OR_WIDER, whole_names=True,
                                      piped=is_piped(results)))
    for line in [ROLE_BASE, *_role_notes(plan, open_roles)]:  # (the base as a line: whole piped, for grep)
        _say(line)
    _say(total_words(plan))


def _say(line: str, lead: tuple[int, str] = (0, "")) -> None:
    """A line of the plan on `results`, its first `lead[0]` characters in style `lead[1]` (the recipe, a
    pass's name; no markup read in it), broken at its spaces where the terminal is narrower (as inspect's
    notes are: report_fit.wrapped), its continuation lines two further in than it. Piped, whole (as
    report.soft_wrap keeps it: `plan R | grep memory` gets the line)."""
    if "\n" in line:  # each of its lines as a line
        first, rest = line.split("\n", 1)
        return _say(first, lead), _say(rest)
    width, (styled, style) = lines_width(results), lead
    indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
    pieces = [line] if width is None or cell_len(line) <= width else wrapped(line, width, indent)
    at, own = 0, len(indent) - 2  # the line's own indent: not styled
    for k, piece in enumerate(pieces):
        body = piece[len(indent):] if k else piece  # (the first keeps the line's own indent)
        at = line.index(body, at)
        text, shift = Text(piece), len(piece) - len(body) - at  # a character of `line` at i is at i + shift
        if max(at, own) < min(at + len(body), styled):
            text.stylize(style, max(at, own) + shift, min(at + len(body), styled) + shift)
        results.print(results.highlighter(text))
        at += len(body)


ROLE_BASE = ("ratio: after / before, of the teacher's parameters (removed blocks count in before); inspect's "
             "'of dense' is of the student's remaining layers")


def _role_notes(plan: dict, open_roles: set) -> list[str]:
    """The footnotes of the role table's bounds (≤), one per cause."""
    later, unplaced, uneven = plan["decided_later"], plan["unplaced_removals"], plan["uneven_removals"]
    notes = []
    if open_roles:
        notes.append(f"≤: {', '.join(_pass_words(e) for e in later)} decide{'s' if len(later) == 1 else ''} "
                     f"the ranks of {', '.join(sorted(open_roles))} after calibration; their layers are "
                     "counted here as before it")
    if unplaced:
        notes.append(f"≤: {_takes_words(unplaced)}, picked by importance at run time from any group: the roles "
                     "with layers in blocks are counted here with every block (those only outside the blocks "
                     "are exact)")
    if uneven:
        notes.append(f"≤: {_uneven_words(uneven)}; each role counted as if the blocks with least of it go")
    return notes


def _pass_words(entry: dict) -> str:
    return f"{entry['pass']} ({where_words(entry)}, allocation {entry['allocation']})"


def _uneven_words(uneven: list[dict]) -> str:
    """'remove_blocks (line 4) picks blocks of group 'blocks', whose blocks differ in size, at run time'."""
    return " and ".join(f"{u['pass']} ({where_words(u)}) picks blocks of group"
                        f"{'s' if len(u['groups']) > 1 else ''} {', '.join(repr(g) for g in u['groups'])}, "
                        "whose blocks differ in size, at run time" for u in uneven)


def total_words(plan: dict) -> str:
    """The total line: exact where every rank and block is planned; else an upper bound, the budget of
    each global pass taken off (decided_later, budget_savings), as if the smallest blocks go of
    removals placed at run time (smallest_blocks; spare_bound: of groups whose blocks differ)."""
    words, uneven = _bound_words(plan), plan.get("uneven_removals")
    if not uneven:
        return words
    most, before = plan["params_after_at_most"], plan["params_before"]
    said = f"{_uneven_words(uneven)}: counted as if the smallest go"
    if words.endswith("(planned)"):
        return f"total parameters: {before:,} -> at most {most:,} ({most / before:.1%}; planned: {said})"
    return f"{words[:-1]}; {said})"


def _bound_words(plan: dict) -> str:
    before, counted, most = plan["params_before"], plan["params_after_planned"], plan["params_after_at_most"]
    later, unplaced = plan.get("decided_later", []), plan.get("unplaced_removals", [])
    if unplaced:
        n = sum(u["blocks"] for u in unplaced)
        smallest = "smallest block goes" if n == 1 else f"{n} smallest blocks go"
        ranks = f"; {_later_words(later)}, ranks decided after calibration" if later else ""
        return (f"total parameters: {before:,} -> at most {most:,} ({most / before:.1%}; planned: "
                f"{_takes_words(unplaced)}, picked by importance at run time from any group: counted as if "
                f"the {smallest}{ranks})")
    if not later:
        return f"total parameters: {before:,} -> {counted:,} (planned)"
    if most - plan.get("params_spare", 0) < counted:  # a budget saves some
        return (f"total parameters: {before:,} -> at most {most:,} ({most / before:.1%}; planned: "
                f"{_later_words(later)}, ranks decided after calibration)")
    return (f"total parameters: {before:,} -> at most {most:,} ({most / before:.1%}; planned: "
            f"{', '.join(_pass_words(e) for e in later)} decide{'s' if len(later) == 1 else ''} ranks after "
            "calibration; their layers are counted dense)")


def _later_words(later: list[dict]) -> str:
    """How the total counts each svd pass whose ranks are decided after calibration: at its budget
    (allocation global) or dense."""
    return "; ".join(f"{_pass_words(e)} keeps at most its budget, {e['budget_params']:,} of its targets' "
                     f"{e['dense_params']:,} dense" if "budget_params" in e else
                     f"{_pass_words(e)} counted dense" for e in later)
