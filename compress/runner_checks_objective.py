"""svd.objective auto resolved per svd pass before the checks, by plan and run alike (`resolve_objectives`):
what each pass runs as (svd_objective.resolve: guided_compensation where a distill pass follows and the
calibration holds both CFG branches of each input, else branches), recorded on its config
(svd_objective.objective_of reads it; plan prints it, report.json's svd summary records it)."""

from __future__ import annotations

from compress.errors import UserError
from compress.passes.svd_objective import AUTO, RESOLVED, no_pairs, resolve, set_resolved
from compress.runner_resume_older import MOVED

OLDER, BEFORE_AUTO = MOVED[("svd", "objective")]  # branches, the default of dit-compress 0.1.0


def resolve_objectives(passes, specs, inputs: str | None, calibration, single: bool, stream: bool) -> None:
    """Each svd pass of `passes` (their recipe entries `specs`) under svd.objective auto given the objective it
    runs as. `inputs`: the calibration source's kind (inputs.source_kind), `calibration` the recipe's
    CalibrationConfig and `single` whether a pipeline source's pipeline runs one branch (svd_objective.no_pairs
    reads them; None: not known, as if they paired), `stream` the recipe's."""
    unpaired = no_pairs(calibration, inputs, single) if inputs is not None and calibration is not None else None
    for i, (p, spec) in enumerate(zip(passes, specs)):
        if getattr(p.config, "objective", None) != AUTO:
            continue
        distill = next((s.line for s in specs[i + 1:] if s.name == "distill"), None)
        set_resolved(p.config, *resolve(p.config, distill, unpaired and unpaired[0], stream, saved_before(p.config)))


def saved_before_notes(passes, specs) -> list[str]:
    """run's note for each svd pass of `passes` that auto runs as branches because its recipe is an output's
    recipe.yaml saved before svd.objective existed (`saved_before`; plan prints it in its pass's lines)."""
    return [f"svd.objective auto runs passes.{i}.svd (line {spec.line}) as branches: {p.config.__dict__[RESOLVED][1]}"
            for i, (p, spec) in enumerate(zip(passes, specs))
            if getattr(p.config, "objective", None) == AUTO and RESOLVED in p.config.__dict__ and saved_before(p.config)]


def saved_before(c) -> bool:
    """Whether config `c` is a saved recipe's (an output's recipe.yaml: marked, or older and writing every key,
    svd_values.SAVED_KEYS) whose pass writes no objective key at all: saved before svd.objective existed, so
    its run weighed by branches. A saved recipe of auto writes `objective: auto  # default`."""
    from compress.passes.svd_values import SAVED_KEYS

    given = c.__dict__.get("_given")
    if given is None or "objective" in given or "objective" in c.__dict__.get("_filled", ()):
        return False
    return "_filled" in c.__dict__ or SAVED_KEYS <= set(given)


def check_resumed(passes, specs, state: dict | None, done: int) -> None:
    """--resume: an svd pass under auto that the saved stage it continues from ran (`state`: the state.json of
    pass `done`'s stage, whose report records each svd pass's objective) as another objective
    than auto gives it now, refused before the run folder is touched: --resume compares the passes up to that
    stage alone, and a distill pass added or removed after it changes what auto runs the pass as, so a rerun
    would not make the same model. A stage saved under branches (an older dit-compress's default, which
    runner_resume_older reads as auto; or the recipe's own then) is refused in `_branches_words`; where auto
    runs the pass as that stage did, it is kept (the same model)."""
    ran = (((state or {}).get("report") or {}).get("svd") or {}).get("passes") or []
    svd = [i for i, spec in enumerate(specs) if spec.name == "svd"]
    for j, i in enumerate(svd[:len(ran)]):
        p, record = passes[i], ran[j] if isinstance(ran[j], dict) else {}
        was = record.get("objective") or OLDER  # a report before the objective was recorded: branches
        resolved = p.config.__dict__.get(RESOLVED)
        if i > done or resolved is None or was == resolved[0]:
            continue
        if record.get("objective_given", was) != AUTO:
            raise UserError(_branches_words(i, specs[i].line, done, resolved, was, "objective_given" in record))
        raise UserError(f"--resume: passes.{i}.svd (line {specs[i].line}) ran as {was} under svd.objective auto, "
                        f"and auto runs it as {resolved[0]} now ({resolved[1]}): the passes after an svd pass decide "
                        "what auto runs it as; undo the change to resume, or rerun with --restart to start over")


def _branches_words(i: int, line: int, done: int, resolved: tuple[str, str], was: str, given: bool) -> str:
    """--resume's refusal of the saved stages of passes i..done, whose svd pass i (recipe line `line`) ran as
    `was`, not auto: auto runs it as `resolved` (objective, why) now. `given`: its recipe set `was` (a stage of
    this dit-compress's), else an older dit-compress's default (its summary records no objective_given)."""
    import compress

    saved = f"pass {i + 1} was" if i == done else f"passes {i + 1}-{done + 1} were"
    svd, runs = f"passes.{i}.svd (line {line})", f"{resolved[0]}: {resolved[1]}"
    why = (f"{saved} saved with {svd} run as {was}, which its recipe set; this recipe leaves svd.objective to "
           f"auto, which runs it as {runs}" if given else
           f"{saved} saved by dit-compress {BEFORE_AUTO}, whose svd.objective default was {was} "
           f"({compress.__version__}'s is auto, which runs {svd} as {runs})")
    return (f"--resume: {why}; to keep them, add `objective: {was}` to that svd pass and rerun with --resume; "
            "to recompute them, rerun with --restart")
