"""What a run is keyed and resumed by: the fingerprint that keys the calibration caches, the recipe
keys `--resume` compares (but those no result depends on; the teacher it compares: runner_teacher_id),
with the differences in words; and what an interrupted run left in
its run folder (`interrupted_run`), which a run without --resume must not silently discard
(runner_kept says it in words).
Imports no torch: the CLI reads the run folder after a Ctrl-C that may come before torch is in."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import compress
from compress import json_read
from compress.recipe import Recipe
from compress.runner_pending import read_record
from compress.runner_resume_moves import differing, pass_moves, pass_name
from compress.runner_resume_older import as_ran
from compress.runner_resume_step import distill_checkpoints, resumed_step
from compress.runner_teacher_id import as_compared


# calibration keys that change where activations are kept, not any statistic or result
CALIBRATION_RESULT_FREE = ("spill_activations",)


# calibration keys that only say which prompts a pipeline source reads: its `inputs` identity holds
# those read (a digest), compared apart (`inputs_change`); the toy and synthetic sources read none. An
# output's recipe.yaml writes them inline, a prompt_file's lines too (recipe_dump.inline_prompts).
PROMPT_KEYS = ("prompts", "prompt_file")


def result_bearing(calibration: dict, prompts_apart: bool = False) -> dict:
    """The calibration keys that can change a statistic or a result (`prompts_apart`: but PROMPT_KEYS)."""
    free = CALIBRATION_RESULT_FREE + (PROMPT_KEYS if prompts_apart else ())
    return {k: v for k, v in calibration.items() if k not in free}


def fingerprint(source: str, weights: str, recipe: Recipe, inputs: dict | None = None) -> str:
    """Teacher identity (source + `weights_checksum`) + calibration config (but for
    CALIBRATION_RESULT_FREE) + code version, and `inputs` (a pipeline source's `inputs_identity`:
    the prompts read and the pipeline's other parts, which the config names but does not hold; with
    them, not the PROMPT_KEYS that chose those prompts, so that an output's recipe.yaml, its prompts
    inline, keys the same statistics)."""
    from compress.calib_stats import STATS_VERSION

    h = hashlib.sha256(f"{source}|{compress.__version__}|{STATS_VERSION}|{weights}|".encode())
    h.update(json.dumps(result_bearing(asdict(recipe.calibration), inputs is not None), sort_keys=True).encode())
    if inputs is not None:  # None (toy, synthetic): the fingerprint older runs gave
        h.update(json.dumps(inputs, sort_keys=True).encode())
    return h.hexdigest()[:16]


def inputs_change(before: dict, now: dict, pipeline: str, prompts_from: str | None = None) -> str | None:
    """What differs between two `inputs_identity`s (of the pipeline source `pipeline`), in words
    ('the calibration prompts changed (PROMPTS_FROM)': `prompts_from`, the keys the recipe reads them
    from now, calib_prompts.prompts_in_words; without it, as runner_prepare asks only whether they
    changed, no keys are named); None where nothing does."""
    if before.get("prompts") != now.get("prompts"):
        return "the calibration prompts changed" + (f" ({prompts_from})" if prompts_from else "")
    was, is_ = before.get("pipeline") or {}, now.get("pipeline") or {}
    differ = sorted(name for name in was.keys() | is_.keys() if was.get(name) != is_.get(name))
    if differ:
        more = f", and {len(differ) - 1} more file{'s' if len(differ) > 2 else ''}" if len(differ) > 1 else ""
        how = "is gone" if differ[0] not in is_ else "is new" if differ[0] not in was else "differs"
        return f"the calibration pipeline changed ({pipeline}/{differ[0]} {how}{more})"
    return None


# top-level keys of what is written, not of any pass's result: the export may change on --resume
RESULT_FREE = ("export",)
# top-level keys compared as the teacher's identity is (runner_teacher_id), not as written: `teacher: t`, `t/`
# and an output's recipe.yaml's absolute path are one, as `teacher_config: cfg` and --teacher-config cfg are
TEACHER_APART = ("teacher", "teacher_config")


def recipe_changes(before: dict, now: dict, passes, done: int | None = None, prompts_apart: bool = True,
                   report: dict | None = None) -> list[str]:
    """The keys (dotted paths) where two resolved recipes differ, but RESULT_FREE, TEACHER_APART, those a pass
    declares cannot change its result (`Pass.result_free`: progress bars, how often distill
    checkpoints, how far this run goes), CALIBRATION_RESULT_FREE and, `prompts_apart`, PROMPT_KEYS
    (the prompts read are compared apart, as a stage's `inputs`: `inputs_change`; a stage that records
    none compares them here: `inputs_apart`). With `done`, only the first
    `done` passes (those a resume keeps) are compared: the passes still to run may change. `before`'s passes
    are read as the dit-compress that saved them ran them (runner_resume_older.as_ran: a key it did not
    write, a default moved since, svd.objective auto as what it ran as by the stage's `report`)."""
    if isinstance(before.get("passes"), list) and isinstance(now.get("passes"), list):
        before = dict(before, passes=as_ran(before["passes"], now["passes"], list(passes), report))

    def view(raw: dict) -> dict:
        raw = {k: v for k, v in raw.items() if k not in RESULT_FREE + TEACHER_APART}
        calibration = raw.get("calibration")
        if isinstance(calibration, dict):
            raw = dict(raw, calibration=result_bearing(calibration, prompts_apart))
        specs = raw.get("passes", [])
        if not isinstance(specs, list):
            return raw
        if done is not None:
            specs = specs[:done]
        elif len(specs) != len(passes):
            return raw
        return dict(raw, passes=[_kept(spec, p) for spec, p in zip(specs, passes)] + specs[len(passes):])

    changed = differing(view(before), view(now))
    moved = _moved(before.get("passes"), now.get("passes"), passes, done) if changed else None
    return changed if moved is None else sorted(k for k in changed if not k.startswith("passes.")) + moved


def _moved(before, now, passes, done: int | None) -> list[str] | None:
    """Where passes were inserted, removed or moved (runner_resume_moves.pass_moves), what `recipe_changes`
    says of the passes; None where none was (or the passes are no lists)."""
    if not (isinstance(before, list) and isinstance(now, list)):
        return None
    by_name = {p.name: p for p in passes}
    kept = lambda spec: _kept(spec, by_name[pass_name(spec)]) if pass_name(spec) in by_name else spec  # noqa: E731
    return pass_moves(*[[json.dumps(kept(spec), sort_keys=True, default=str) for spec in specs]
                        for specs in (before, now)], done)


def _kept(spec, p):
    """A pass's spec ({name: options}) without the options `p` declares result-free (when it is
    that pass), nor, of an svd pass, the keys its allocation never reads (`_unread`)."""
    if not isinstance(spec, dict) or p.name not in spec:
        return spec
    return {k: _without(opts, {*p.result_free, *_unread(k, opts)}) if isinstance(opts, dict) else opts
            for k, opts in spec.items()}


def _without(opts: dict, keys: set[str]) -> dict:
    return {o: v for o, v in opts.items() if o not in keys}


def _unread(name: str, opts: dict) -> set[str]:
    """The keys of an svd pass's options that its allocation never reads: an older run's recipe
    may hold one at another value (ratio: 0.4 under energy) that the recipe now refuses, and the
    user removed, though its stages' results never depended on it. Imported here, not above: an
    svd pass object (`p`) has imported svd_checks, and the run folder is read before torch is in."""
    if name != "svd" or "allocation" not in opts:
        return set()
    from compress.passes.svd_values import unread_keys

    return unread_keys(opts["allocation"])


# ---- what an interrupted run left --------------------------------------------------------------
FINISHED = "finished.json"  # in the run folder's stages/: written once the run's output is
# in the run folder's stages/, written by each run once it starts its passes: {"fingerprint": the one
# (`fingerprint`) that keys its calib/<fingerprint>/ and teacher-sample caches, RAN: its resolved recipe, ...}
RUN_RECORD = "run.json"
RAN = "recipe"  # in RUN_RECORD: the resolved recipe of the run that last started its passes (`unsaved_changes`)
# in a stage's state.json: the STATS_VERSION (calib_stats) its run measured block statistics under
# (`statistics_change`); an older run's stage records none: read as the one its run recorded (`read_state`)
STATISTICS = "statistics"
STATISTICS_OF = "dit-compress's statistics"  # what `statistics_change` says differs: '... 2, now 3'
TEACHER_SAMPLES = Path("distill") / "teacher_samples"  # distill_data's caches: <key>/shard-*.safetensors
SAMPLES_ABOUT = "about.json"  # in each: the fingerprint and distill keys of its key, its shard count


def stage_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(pass index, folder) of the completed stages in `run_dir` (stages/<i>-<pass>/state.json)."""
    found = []
    for d in (Path(run_dir) / "stages").glob("*-*"):
        index = d.name.split("-", 1)[0]
        if index.isdigit() and (d / "state.json").is_file():
            found.append((int(index), d))
    return sorted(found)


def read_state(stage: Path) -> dict | None:
    """A stage folder's state.json (recipe, teacher as --resume compares it: `as_compared`, report, block
    map), or None when it cannot be read."""
    try:
        state = json_read.read(Path(stage) / "state.json")
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if STATISTICS not in state:  # an older run's stage: the version its run recorded, where it did
        from compress.runner_measured import recorded_statistics  # (it imports this module)

        state = dict(state, **{STATISTICS: recorded_statistics(Path(stage).parent.parent)})
    return state_as_compared(state)


def state_as_compared(state: dict) -> dict:
    """A stage's state (or a streamed stage's record: runner_pending) with its teacher `as_compared`."""
    return dict(state, teacher=as_compared(state["teacher"])) if "teacher" in state else state


def run_record(run_dir: Path) -> dict:
    """The RUN_RECORD of the run that last started its passes in `run_dir`; {} where there is none (a run
    folder of an older dit-compress) or it cannot be read."""
    try:
        record = json_read.read(Path(run_dir) / "stages" / RUN_RECORD)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint the run that last started its passes in `run_dir` recorded (RUN_RECORD); None
    where there is none (a run folder of an older dit-compress) or it cannot be read."""
    fp = run_record(run_dir).get("fingerprint")
    return fp if isinstance(fp, str) else None


def recorded_teacher(run_dir: Path) -> dict | None:
    """The teacher identity (teacher_identity's, `as_compared`) the run that last started its passes in
    `run_dir` recorded (RUN_RECORD), which --resume of a distill checkpoint with no stage saved compares;
    None where there is none (an older dit-compress's record) or it cannot be read."""
    teacher = run_record(run_dir).get("teacher")
    return as_compared(teacher) if isinstance(teacher, dict) and "source" in teacher else None


def reusable_stage(stages: list[tuple[int, dict | None]], now: dict, passes) -> tuple[int | None, list]:
    """Of a run folder's completed stages [(pass index, its state or None)]: the index of the latest
    whose recipe agrees with `now` as far as the passes it completed (`recipe_changes` with `done`),
    which --resume continues from (None: none does), and the later ones it passes over, latest first,
    as [(pass index, the keys where their recipe differs)]. A state that could not be read (None) or
    records no recipe is neither."""
    skipped = []
    for i, state in sorted(stages, key=lambda s: s[0], reverse=True):
        recipe = state.get("recipe") if state else None
        if not isinstance(recipe, dict):
            continue
        changed = (recipe_changes(recipe, now, passes, i + 1, inputs_apart(state), state.get("report"))
                   or statistics_change(state, passes, i))
        if not changed:
            return i, skipped
        skipped.append((i, changed))
    return None, skipped


def statistics_version() -> int:
    """This dit-compress's STATS_VERSION (calib_stats, which imports torch: imported here, not above)."""
    from compress.calib_stats import STATS_VERSION

    return STATS_VERSION


def statistics_change(state: dict, passes, i: int) -> list[str]:
    """["dit-compress's statistics 2, now 3"] where the stage of pass i (its `state`) holds what a pass up to
    it (of `passes`) made of block statistics it measured (`Pass.measures_statistics`: an svd pass's factors)
    under another STATS_VERSION (STATISTICS) than this dit-compress's, which reads back none of them: --resume
    keeps it no more than a stage of another calibration; likewise where neither the stage nor its run's
    record says which (an older dit-compress's: `read_state`), as it may be another ('... not recorded by
    the older dit-compress that wrote it, now 3'); [] where not."""
    if not any(getattr(p, "measures_statistics", False) for p in list(passes)[:i + 1]):
        return []
    was, now = state.get(STATISTICS), statistics_version()
    if not isinstance(was, int):
        return [f"{STATISTICS_OF} not recorded by the older dit-compress that wrote it, now {now}"]
    return [] if was == now else [f"{STATISTICS_OF} {was}, now {now}"]


def of_other_statistics(changed: list[str]) -> bool:
    """Whether a stage `reusable_stage` passed over, where it differs in `changed`, did for `statistics_change`."""
    return len(changed) == 1 and changed[0].startswith(STATISTICS_OF)


def inputs_apart(state: dict) -> bool:
    """Whether a stage's `state` records the prompts its pipeline source read (`inputs`), which --resume
    compares apart from the recipe's PROMPT_KEYS; a toy or synthetic source's, or an older run's, does not."""
    return isinstance(state.get("inputs"), dict)


def passed_over_in_words(skipped: list) -> str:
    """'the saved pass 3 was of another recipe (it differs in passes.2.distill.steps): not kept' for
    the stages `reusable_stage` passed over (numbered from 1, as the passes are); those of other statistics
    (`statistics_change`): 'the saved pass 2 was measured with other statistics (dit-compress's statistics 2,
    now 3): not kept'."""
    said = []
    for stats in (False, True):
        these = [(i, changed) for i, changed in skipped if of_other_statistics(changed) == stats]
        if not these:
            continue
        done = sorted(i + 1 for i, _ in these)
        which = f"pass {done[0]} was" if len(done) == 1 else f"passes {', '.join(map(str, done))} were"
        keys = sorted({k for _, changed in these for k in changed})
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        said.append(f"the saved {which} measured with other statistics ({shown}): not kept" if stats else
                    f"the saved {which} of another recipe (it differs in {shown}): not kept")
    return "; ".join(said)


def not_kept_in_words(earliest: int, changed: list[str], streamed: bool) -> str:
    """Where --resume keeps nothing (the earliest saved stage, of pass index `earliest`, differs in
    `changed`) though the first pass that changed comes after passes whose stages would be kept, had
    they been saved: ': a streamed run keeps only its latest stage (pass 4), so passes 1-3, before the
    changed one, cannot be resumed from' (`streamed`: the stage's recipe streamed), else ''."""
    changed_passes = [re.findall(r"passes\.(\d+)", k) for k in changed]  # keys, or words of a pass inserted ...
    if not all(changed_passes):
        return ""  # a key outside the passes (calibration, model ...): no stage would be kept
    first = min(int(n) for found in changed_passes for n in found)  # the first pass that changed, from 0
    if first == 0 or earliest < first:
        return ""
    before = "pass 1" if first == 1 else f"passes 1-{first}"
    why = (f"a streamed run keeps only its latest stage (pass {earliest + 1})" if streamed
           else f"the earliest stage it keeps is of pass {earliest + 1}")
    return f": {why}, so {before}, before the changed one, cannot be resumed from"


def interrupted_run(run_dir: Path, now: dict | None = None, passes=()) -> dict | None:
    """What an unfinished run left in `run_dir` that a fresh start would discard: {"done": passes
    completed, "total": passes of its recipe (None: unknown), "step": the latest distill checkpoint
    step of the pass --resume runs next (`resumed_step`, of the recipe of the run that stopped: RAN, else
    its latest stage's, else `now`; None: none), "changed": the keys where its recipe differs from `now`
    as --resume compares them, or that its statistics do (`statistics_change`; None: unknown, or no `now`)}
    (no stage saved, a distill checkpoint of a recipe `now` whose first pass is distill: "total" is `now`'s
    count, as its passes are counted in words), and where they differ, "keeps": how many passes --resume would
    keep (those of its latest stage saved for `now`'s recipe, `reusable_stage`); None when there is
    nothing, or the run finished (its output was written)."""
    stages, checkpoints = stage_dirs(run_dir), distill_checkpoints(run_dir)
    pending = read_record(run_dir)  # a streamed stage being written when the run stopped: --resume writes it
    if (Path(run_dir) / "stages" / FINISHED).is_file() or not (stages or checkpoints or pending):
        return None
    info = {"done": 0, "total": None, "step": None, "changed": None}
    latest = [(i, read_state(d) or {}) for i, d in stages[-1:]]
    if pending and pending[0] > max((i for i, _ in stages), default=-1):
        latest.append(pending)
    if latest:
        i, state = latest[-1]
        info["done"], before = i + 1, state.get("recipe")
        if isinstance(before, dict) and isinstance(before.get("passes"), list):
            info["total"] = len(before["passes"])
            info["changed"] = None if now is None else (
                recipe_changes(before, now, passes, i + 1, inputs_apart(state), state.get("report"))
                or statistics_change(state, passes, i))
    elif checkpoints and now is not None and first_pass_is_distill(now):  # no stage: the checkpoint is of the
        info["total"] = len(now["passes"])  # first pass, a distill pass; the passes in all as this recipe counts them
    if info["changed"]:  # what --resume would keep: the passes of the latest stage of this recipe
        k, _ = reusable_stage([(i, read_state(d)) for i, d in stages], now, passes)
        info["keeps"] = 0 if k is None else k + 1
    ran = next((r["passes"] for r in (run_record(run_dir).get(RAN), latest and latest[-1][1].get("recipe"), now)
                if isinstance(r, dict) and isinstance(r.get("passes"), list)), None)
    info["step"] = resumed_step(run_dir, info["done"], None if ran is None else [pass_name(s) for s in ran])
    return info


def unsaved_changes(run_dir: Path, info: dict, now: dict, passes) -> dict:
    """`info` (`interrupted_run`'s) where its saved passes are `now`'s (info["changed"] == [], as only those
    are compared: --resume keeps them and runs the rest as they are now) but the pass that stopped, which
    the run ran after them, is another now (the recipe it recorded, RAN, differs from `now` in result-bearing
    keys of its passes up to that one, or outside its passes: `recipe_changes`): those keys as "changed", its
    saved passes as "keeps", as of another recipe whose first passes --resume keeps (a plain rerun said 'an
    interrupted run of this recipe'). A change only to passes after it (never run): `info`, 'of this recipe';
    a record of none (an older run's): `info`."""
    if info["changed"] != [] or (info["total"] is not None and info["done"] >= info["total"]):
        return info
    ran = run_record(run_dir).get(RAN)
    changed = recipe_changes(ran, now, passes, info["done"] + 1) if isinstance(ran, dict) else []
    return {**info, "changed": changed, "keeps": info["done"]} if changed else info


def first_pass_is_distill(now: dict) -> bool:
    """Whether the first pass of the resolved recipe `now` (Recipe.raw) is a distill pass."""
    passes = now.get("passes") if isinstance(now, dict) else None
    first = passes[0] if isinstance(passes, list) and passes else None
    return isinstance(first, dict) and list(first) == ["distill"]


def finished_and_reusable(run_dir: Path, now: dict, passes) -> int:
    """How many passes of the finished run in `run_dir` (its output written) `now`'s recipe shares,
    as --resume would keep them (`reusable_stage`); 0 when the run is not finished or shares none."""
    if not (Path(run_dir) / "stages" / FINISHED).is_file():
        return 0
    k, _ = reusable_stage([(i, read_state(d)) for i, d in stage_dirs(run_dir)], now, passes)
    return 0 if k is None else k + 1


def resume_note(run_dir: Path, recipe: Recipe, passes, fingerprint: str | None = None,
                inputs: list[Path] | None = None) -> str:
    """'; RUN_DIR keeps its work (...): --resume continues from ...' where `run_dir` holds saved work
    of `recipe`'s unfinished run (after an error that stopped it), or what its svd pass, sampling
    calls or teacher sampling measured that a rerun reads back (`passes`, `fingerprint`, `inputs`: as
    `work_kept`), else ''."""
    from compress.runner_kept import work_kept  # (it reads this module's names: imported here, not above)

    info = interrupted_run(run_dir, recipe.raw, passes)
    go_on = ""
    if info is not None:
        done, total = info["done"], len(recipe.passes)
        if done >= total:
            go_on = "--resume only writes the output"
        elif info["step"] is not None:
            go_on = f"--resume continues from pass {done + 1}'s checkpoint (with the same keys)"
        else:
            go_on = f"--resume continues from pass {done + 1} (whose keys may change)"
    return work_kept(run_dir, info, go_on, fingerprint, inputs, passes)


def resumed_in_words(done: int, names: list[str]) -> str:
    """What --resume says it keeps, numbered from 1 as the passes are: 'after pass 1/2 (remove_blocks)'
    for `done` (fewer than all) completed passes of the recipe's pass `names`; once all were done,
    runner_restore.resuming_words says so."""
    return f"after pass {done}/{len(names)} ({names[done - 1]})"
