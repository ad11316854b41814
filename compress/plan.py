"""`dit-compress plan`: what a recipe will do, without factorizing or loading weights.

The teacher is instantiated on the meta device from its config (shipped configs for the known hub
ids, so real-model recipes plan without the Hub). Each pass's `plan(model, adapter)` applies the
structural changes it can know in advance (explicit block removal, fixed ranks) to that meta model
and returns a description; parameters are then counted before and after, by role and by block.
plan_walk walks the passes; plan_words prints the plan.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from compress.arch import get_adapter
from compress.calib_footprint import backward_bytes, footprint
from compress.inputs import Sampling, source_sampling
from compress.calib_pipeline import check_size
from compress.calib_prompts import one_branch, read_prompts
from compress.devices import unusable
from compress.errors import UserError
from compress.io import config_model_class, from_config
from compress.plan_budget import blocks_left, spare_bound
from compress.plan_machine import device_memory
from compress.plan_memory import beyond_disk, beyond_memory, memory_where, peak_memory
from compress.plan_walk import PassWalk
from compress.io_export import warn_if_export_wider
from compress.io_headers import check_teacher_weights, pickled_folder, reads_headers
from compress.io_source import KNOWN_CONFIGS
from compress.io_source_config import TeacherSource, checked
from compress.io_source_recipe import checked_sources
from compress.recipe_teacher_config import teacher_config_of
from compress.passes import build_passes
from compress.passes.removed_blocks import planned_blocks, possible_counts
from compress.passes.svd_objective import resolved_step
from compress.recipe_where import recipe_where, teacher_given
from compress.report import console, layer_rows, note, param_count, warn
from compress.runner_checks import checked_in_order
from compress.runner_checks_objective import resolve_objectives
from compress.runner_stream import check_streaming, streamed_weights
from compress.stream_files import check_streamable


def meta_model(source: str | TeacherSource, config: str | None = None, where: str = ""):
    """The teacher on the meta device, built from its config (the toys with their small weights; a
    dit-compress output with its low-rank layers and removed blocks, as run loads it):
    of a source checked already (a TeacherSource), or checked here (`where`: the start of an error
    about it, recipe_where.teacher_where)."""
    src = source if isinstance(source, TeacherSource) else checked(source, config, where, hub=False)
    if src.kind == "toy":
        from compress.toy import load_toy_teacher

        return load_toy_teacher(src.source[4:])
    if src.kind == "folder" and "compression" in src.config:  # a dit-compress output, compressed further
        from compress.io import transformer_folder
        from compress.io_output import empty_compressed

        return empty_compressed(transformer_folder(Path(src.source).expanduser()))
    from accelerate import init_empty_weights

    cls = config_model_class(src.config, src.config_file())  # None for a Hub id's: the class alone
    with init_empty_weights():
        return from_config(cls, src.config, f"the config of teacher {src.source}")


def by_key(rows: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r[key]] += r["params"]
    return dict(out)


def block_params(model, rows: list[dict]) -> dict[str, int]:
    """{block: all its parameters} (norms and other non-linears too, as inspect's table by block
    counts them, report.other_params), the top level as "-": they add up to the model's count."""
    from compress.report import other_params

    return by_key(rows + other_params(model, rows), "block")


def make_plan(recipe, teacher: str | None = None, teacher_config: str | None = None,
              sources: TeacherSource | None = None, passes: list | None = None, run_dir: Path | None = None) -> dict:
    """The plan of `recipe` (`teacher`, `teacher_config`: --teacher, --teacher-config). `run` hands
    it what it checked and made already: `sources` (io_source_recipe.checked_sources of the recipe, then
    `teacher` and `teacher_config` are not read) and `passes` (passes.build_passes of the recipe). Without
    --teacher-config, the recipe's `teacher_config:` is read (recipe_teacher_config.teacher_config_of).
    `run_dir`: the run folder whose free disk bounds the peak a run can hold (run's; None: its default)."""
    src, model, adapter = _teacher(recipe, teacher, teacher_config, sources)
    source = src.source
    before_rows, before = layer_rows(model), param_count(model)
    before_blocks = block_params(model, before_rows)
    passes = passes if passes is not None else build_passes(recipe)
    if recipe.stream:
        check_streaming(passes, recipe.passes, recipe.path)
    streamed = streamed_weights(model, adapter) if recipe.stream else None
    if recipe.device != "auto" and (why := unusable(torch.device(recipe.device))):  # the run refuses it (resolve_device)
        note(f"{recipe_where(recipe, 'device', recipe.device)}: device {recipe.device}, but {why}; this plan holds, "
             "its run needs a machine with that GPU")
    sampled = src.sampling or source_sampling(recipe.calibration, source)  # checked_sources': one read of a folder's
    inputs, toy, calib = _calibration(recipe, source, model, sampled)  # model_index.json a plan passes down
    walk = PassWalk(recipe, model, adapter, calib)
    single = one_branch(recipe.model, toy)  # a pipeline source's FluxPipeline: one branch (svd.objective guided)
    resolve_objectives(passes, recipe.passes, inputs, recipe.calibration, single, recipe.stream)  # svd.objective auto
    for p, spec in checked_in_order(passes, recipe.passes, model, adapter, inputs, recipe.calibration, single):
        walk.add(p, spec)  # then applied
        if (resolved := resolved_step(p.config)) is not None:
            walk.steps[-1]["objective"] = resolved
    steps, later, unplaced, uneven = walk.steps, walk.later, walk.unplaced, walk.uneven
    after_rows, after = layer_rows(model), param_count(model)
    after_roles = by_key(after_rows, "role")
    spare, spare_roles = spare_bound(model, adapter, planned_blocks(model, adapter))
    counts = adapter.block_counts(model)
    plan = {
        "calibration": calib,
        "backward": backward_bytes(calib, model.config, sum(counts.values())),
        "recipe": recipe.path, "teacher": source, "family": adapter.family,
        **blocks_left(possible_counts(model, adapter)),
        "passes": steps, "stream": streamed,
        "params_before": before, "params_after_planned": after,
        "params_after_is": "at most" if later or unplaced or uneven else "exact",
        "params_after_at_most": walk.params_at_most(after, spare),
        "decided_later": later, "unplaced_removals": unplaced, "uneven_removals": uneven, "params_spare": spare,
        "by_role_before": by_key(before_rows, "role"), "by_role_after": after_roles,
        "by_role_after_at_most": {r: n + spare_roles.get(r, 0) for r, n in after_roles.items()},
        "by_role_after_is": by_role_after_is(before_rows + after_rows, later, bool(unplaced or uneven)),
        "by_block_before": before_blocks, "by_block_after": block_params(model, after_rows),
        "by_block_after_is": by_block_after_is(unplaced, uneven, later),
    }
    calib["used"] = calibrates(passes, steps)  # false: no pass reads these inputs; plan says so in their place
    # drawn all the same where a pass reads them without holding their activations (distill's teacher samples)
    calib["drawn"] = draws(passes, steps)
    calib["source"] = inputs  # how they are drawn: a pipeline source samples the pipeline (minutes)
    calib["toy_pipeline"] = toy
    plan["memory"] = peak_memory(recipe, plan, calib["used"], calib["drawn"], passes, sampled.index)
    plan["memory"]["refusal"] = _refusal(recipe, plan, run_dir)
    _warn_beyond_memory(recipe, plan, run_dir)  # --json too (stderr)
    return plan


def _teacher(recipe, teacher: str | None, teacher_config: str | None, sources: TeacherSource | None) -> tuple:
    """(the teacher's sources, checked: there, of the recipe's family; its meta model; its adapter), its
    weight files' headers checked as run checks them (make_plan's arguments)."""
    src = sources or checked_sources(recipe, teacher, teacher_config_of(recipe, teacher_config, teacher), hub=False)
    if recipe.stream:  # a single file or an output: refused as the run's checkpoint_of refuses it
        check_streamable(src)
    headers_read = src.weights_read.model is not None  # check_weights built it and read its files' headers
    model = src.weights_read.model if headers_read else meta_model(src)  # its config, read once
    src.weights_read.model = None  # the passes apply to `model`: taken once
    adapter = get_adapter(model)
    if adapter.family != recipe.model:  # a pickle's family, from its config
        raise UserError(_family_words(recipe, src, teacher, type(model).__name__, adapter.family))
    if not headers_read:  # its files' headers, not its tensors: run's refusal, before any numbers
        check_teacher_weights(src, model)
    _note_pickled(src)
    warn_if_export_wider(recipe, src)  # its files' headers: a bfloat16 teacher exported in float32
    return src, model, adapter


def _note_pickled(src: TeacherSource) -> None:
    """Notes that plan does not read the weights of teacher `src` where they are pickles (a pickle loads
    whole): a single .pth / .bin file ('... a .pth teacher's weights (a pickle loads whole) ...'), or a
    folder of .bin weights, one or sharded (io_headers.pickled_folder: '... a .bin teacher's weights (DIR:
    a pickle loads whole) ...', DIR its transformer folder); run checks them against its config."""
    if src.kind == "file" and not reads_headers(src):
        what = f"{Path(src.source).suffix or 'pickle'} teacher's weights (a pickle loads whole)"
    elif (pickled := pickled_folder(src)) is not None:
        what = f".bin teacher's weights ({pickled}: a pickle loads whole)"
    else:
        return
    note(f"plan does not read a {what}; run checks them against its config")


def _family_words(recipe, src: TeacherSource, teacher: str | None, name: str, family: str) -> str:
    """The refusal of a single-file teacher whose config is of another family than the recipe's model
    (a pickle's, or one whose tensor names do not tell: TeacherSource.family is None), naming the config
    that told it. Another source's family is refused before, from the same config
    (io_source_recipe.checked_sources, which made make_plan's sources, of the same recipe)."""
    from_flag = teacher or src.source != recipe.teacher
    told = (f"config {src.config_arg} given for" if src.config_arg else f"config {src.config_file()} beside")
    return (f"{recipe_where(recipe, 'model', recipe.model)}: model is '{recipe.model}' but the {told} the teacher "
            f"{src.source}{teacher_given(recipe, from_flag)} describes a {name} ({family}); set model: {family} "
            "or give the config of its own transformer")


def _calibration(recipe, source: str, model, sampled: Sampling) -> tuple[str, bool, dict]:
    """(the calibration inputs' kind: inputs.source_kind; whether a pipeline source samples in a toy's
    pipeline; their footprint, of the teacher's config) of the recipe and teacher `source` (`sampled`:
    its calibration source, checked), a toy pipeline given calibration.height / width refused as the
    run's PipelineSource refuses it."""
    inputs = sampled.kind
    pipeline = inputs == "pipeline"
    prompts = len(read_prompts(recipe.calibration, Path(recipe.path).parent)) if pipeline else 0
    # a toy's pipeline (toy:NAME, or one a toy saved) samples in seconds, as calib_footprint tells it
    toy = pipeline and sampled.toy
    if pipeline:  # as the run's PipelineSource refuses it
        check_size(recipe.calibration, toy)
    return inputs, toy, footprint(recipe, source, model.config, prompts, toy=toy, kind=inputs)


def calibrates(passes: list, steps: list[dict] | None = None) -> bool:
    """Whether the run computes calibration inputs for some pass: one that needs calibration
    (`needs_calibration`) whose plan step (of `steps`, make_plan's; None: not planned, every such pass
    counts) does not say it reads none (a removal of no block: remove_blocks_budget.reads_none). Plan's
    calibration.used and its memory; the run's activation-memory warning (runner_prepare)."""
    steps = steps if steps is not None else [{}] * len(passes)
    return any(getattr(p, "needs_calibration", False) and step.get("calibrates", True)
               for p, step in zip(passes, steps))


def draws(passes: list, steps: list[dict] | None = None) -> bool:
    """Whether the run draws calibration inputs at all: some pass calibrates (`calibrates`), or one reads
    them without holding block activations of them (Pass.reads_calibration_inputs: distill's data:
    teacher_samples). Plan's calibration.drawn, and whether its memory counts a pipeline source's
    text encoders and VAE (sampling the pipeline draws them: plan_memory.peak_memory)."""
    return calibrates(passes, steps) or any(p.reads_calibration_inputs() for p in passes)


def by_role_after_is(rows: list[dict], later: list, blocks_open: bool) -> dict[str, str]:
    """{role: "exact" | "at most"} of plan's by_role_after_at_most (`rows`: the linears before and
    after, layer_rows): "at most" for a role whose ranks an svd pass decides after calibration
    (`later`, counted dense) and, where which blocks go is picked at run time (`blocks_open`), for a
    role with linears in blocks; a role only at the top level keeps its count, which no removal changes."""
    open_roles = {role for entry in later for role in entry["roles"]}
    in_blocks = {r["role"] for r in rows if r["block"] != "-"} if blocks_open else set()
    return {r["role"]: "at most" if r["role"] in open_roles | in_blocks else "exact" for r in rows}


def by_block_after_is(unplaced: list, uneven: list, later: list) -> str:
    """What plan's by_block_after is: "placeholders" after a removal whose blocks are picked at run
    time (over several groups: every block counted; or in a group whose blocks differ in size: the
    smallest counted as gone), so neither which blocks are there nor their counts are the run's;
    "at most" where only ranks are decided after calibration (those layers counted dense); else "exact"."""
    if unplaced or uneven:
        return "placeholders"
    return "at most" if later else "exact"


def _warn_beyond_memory(recipe, plan: dict, run_dir: Path | None = None) -> None:
    """plan's and run's warning of a peak beyond the memory, at the line of the key that drives it most;
    plan's, in its place, of one that run refuses (the plan's memory.refusal), in run's words, of the
    disk under `run_dir` (None: run's default run folder, which plan --run-dir changes, as run's does)."""
    if refusal := plan["memory"]["refusal"]:  # a warning: what this machine has, as a device not here is noted
        other = ("" if run_dir is not None else
                 " with its default --run-dir (plan --run-dir DIR measures another folder's disk)")
        warn(f"{refusal}; `dit-compress run` would refuse this before it loads the teacher{other}")
    elif warning := beyond_memory(plan["memory"], device_memory(recipe.device)):
        warn(f"{_memory_where(recipe, plan)}: {warning}")


def _refusal(recipe, plan: dict, run_dir: Path | None) -> str | None:
    """run's refusal of the plan's peak, beyond the memory and the disk free under `run_dir` together
    (plan_memory.beyond_disk), at the line of the key that drives it most; None where it fits. run_dir
    None: run's default, runs/NAME (output_names.default_name), or its nearest existing parent's disk."""
    from compress.output_names import default_name

    run_dir = Path("runs") / default_name(recipe.path) if run_dir is None else run_dir
    words = beyond_disk(recipe, plan["memory"], run_dir)
    return f"{_memory_where(recipe, plan)}: {words}" if words else None


def _memory_where(recipe, plan: dict) -> str:
    """Where the recipe gives the key that drives the peak most (memory_where), its `teacher:` line
    not where --teacher named another teacher (the one planned)."""
    return memory_where(recipe, plan["memory"], str(plan["teacher"]) != str(recipe.teacher))


def warn_if_beyond_memory(recipe, sources: TeacherSource, passes: list, run_dir: Path | None = None) -> bool:
    """`plan`'s warning of a peak beyond the machine's memory, for `run` before it loads the teacher:
    the recipe planned on a meta teacher (a fraction of a second) from the sources and passes the run
    checked and made already (`make_plan`), the plan's other notes held back (the run says them as
    it checks). Nothing when it cannot be planned without the Hub (a Hub id with no shipped config),
    nor when planning fails: the run's own checks say what is wrong. Returns whether some pass
    calibrates (`calibrates`: the plan's calibration.used, or from the passes alone where unplanned)."""
    if not planned_without_hub(sources):
        return calibrates(passes)
    try:
        with _quiet(console):
            plan = make_plan(recipe, sources=sources, passes=passes, run_dir=run_dir)
    except UserError:
        return calibrates(passes)
    if run_dir is not None and plan["memory"]["refusal"]:  # a peak no spill could hold: refused before the
        raise UserError(plan["memory"]["refusal"])       # teacher loads, not warned
    _warn_beyond_memory(recipe, plan, run_dir)
    return plan["calibration"]["used"]


def planned_without_hub(src: TeacherSource) -> bool:
    """Whether the source's config is at hand without the Hub (whether or not HF_HUB_OFFLINE is set):
    all but a Hub id with neither a shipped config (KNOWN_CONFIGS) nor --teacher-config
    (TeacherSource.config)."""
    return src.kind != "hub" or bool(src.config_arg) or src.source in KNOWN_CONFIGS


@contextmanager
def _quiet(out):
    """Nothing printed on the rich console `out` while inside."""
    was, out.quiet = out.quiet, True
    try:
        yield
    finally:
        out.quiet = was
