"""svd.objective auto resolved per svd pass before the checks, by plan and run alike (`resolve_objectives`):
what each pass runs as (svd_objective.resolve: guided_compensation where a distill pass follows and the
calibration holds both CFG branches of each input, else branches), recorded on its config
(svd_objective.objective_of reads it; plan prints it, report.json's svd summary records it)."""

from __future__ import annotations

from compress.errors import UserError
from compress.passes.svd_objective import AUTO, RESOLVED, no_pairs, resolve, set_resolved


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
    than auto gives it now, refused: --resume compares the passes up to that stage alone, and a distill pass
    added or removed after it changes what auto runs the pass as, so a rerun would not make the same model."""
    ran = (((state or {}).get("report") or {}).get("svd") or {}).get("passes") or []
    svd = [i for i, spec in enumerate(specs) if spec.name == "svd"]
    for j, i in enumerate(svd[:len(ran)]):
        p, was = passes[i], ran[j].get("objective") if isinstance(ran[j], dict) else None
        resolved = p.config.__dict__.get(RESOLVED)
        if i > done or resolved is None or was in (None, resolved[0]):
            continue
        raise UserError(f"--resume: passes.{i}.svd (line {specs[i].line}) ran as {was} under svd.objective auto, "
                        f"and auto runs it as {resolved[0]} now ({resolved[1]}): the passes after an svd pass decide "
                        "what auto runs it as; undo the change to resume, or rerun with --restart to start over")
