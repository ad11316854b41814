"""A run before its passes (`Runner.prepare`): folders, recipe and saved work checked before anything
loads, the teacher loaded and checked, memory and disk warnings, the keys of its caches (fingerprint,
teacher identity, sampled inputs) and the passes' RunContext."""

from __future__ import annotations

import functools
from pathlib import Path

from compress.arch import get_adapter
from compress.calib_footprint import footprint
from compress.calib_prompts import one_branch
from compress.inputs import check_pipeline_packages, input_source, moved
from compress.io_export import warn_if_beyond_export_range, warn_if_export_wider
from compress.io_source_recipe import checked_sources
from compress.passes import build_passes
from compress.passes.base import RunContext
from compress.output_names import lora_rerun_note, replaced_note
from compress.plan import warn_if_beyond_memory
from compress.report import console, note
from compress.report_teacher import absolute_source
from compress.runner_checks import check_passes
from compress.runner_checks_objective import check_resumed, resolve_objectives, saved_before_notes
from compress.runner_folders import check_folders, check_run_folder, nothing_saved, say_if_nothing_to_resume
from compress.runner_measured import (calibration_keys, check_measured_for_another, check_measured_for_another_teacher,
                                      keyed_source)
from compress.runner_answers import RESUMES_AFTER, resumes_after
from compress.runner_ranks import announce, is_follower, several_processes
from compress.runner_caches import finished_run
from compress.runner_resume import (finished_and_reusable, fingerprint, inputs_change, read_state, recorded_teacher,
                                    stage_dirs)
from compress.runner_teacher_id import (named_teacher, older_checksum, same_teacher, teacher_identity,
                                        teacher_moved, weights_checksum)
from compress.runner_setup import DTYPES, load_checked_teacher
from compress.runner_stages import discard_finished, resumable
from compress.runner_stop_words import LOADING
from compress.runner_memory import NO_ACTIVATIONS, warn_if_activations_too_big, warn_if_streamed_too_big
from compress.runner_stream import check_streaming, streamed_weights
from compress.words import counted


def prepare(runner) -> None:
    """Everything before the passes, on `runner` (a Runner): its passes, source, teacher, adapter,
    prompts, inputs_id, identity, teacher_files, inputs_cache (sampled_calls) and ctx."""
    src = _checked_before_loading(runner)
    kind = src.sampling.kind  # the calibration source's: toy, pipeline, synthetic
    single = one_branch(runner.recipe.model, src.sampling.toy)  # a pipeline source's FluxPipeline: one branch
    resolve_objectives(runner.passes, runner.recipe.passes, kind, runner.recipe.calibration, single,  # auto
                       runner.recipe.stream)
    for said in saved_before_notes(runner.passes, runner.recipe.passes):  # an output's recipe.yaml of 0.1.0
        note(said)
    if (resumed := getattr(runner, "resumes_from", None)) and resumed[1] is not None:  # --resume: the stage it
        state = next(st for i, _, st in resumed[0] if i == resumed[1])  # continues from ran auto as it does now?
        check_resumed(runner.passes, runner.recipe.passes, state, resumed[1])
    runner.doing = LOADING
    runner.source, runner.teacher = load_checked_teacher(runner.recipe, runner.teacher_arg, runner.teacher_config,
                                                         runner.models, sources=src)  # finite, checked
    warn_if_beyond_export_range(runner.teacher, runner.recipe.export.dtype)
    runner.adapter = get_adapter(runner.teacher)
    done = _done_before(runner)  # --resume: the passes done before
    for i, p in enumerate(runner.passes):  # what only a pass that runs needs is not asked of them (kd_teacher: base)
        p.resumed_past = done is not None and i <= done
    check_passes(runner.passes, runner.recipe.passes, runner.teacher, runner.adapter,  # distill's data: toy,
                 kind, runner.recipe.calibration, single)  # buckets, svd.objective; the check's (checked_sources)
    if runner.recipe.stream:
        check_streaming(runner.passes, runner.recipe.passes, runner.recipe.path)
    runner.models.warn_if_short_of_disk(runner.passes, runner.recipe.passes, runner.teacher, runner.adapter)
    src = input_source(runner.recipe.model, runner.source, runner.recipe.calibration,
                       runner.teacher, Path(runner.recipe.path).parent)
    runner.prompts = getattr(src, "prompts", None)  # what a pipeline source read (recipe.yaml inlines it)
    # the prompts read and the pipeline's parts but the transformer: keys of the caches, compared by --resume
    runner.inputs_id = src.inputs_identity() if hasattr(src, "inputs_identity") else None
    weights = streamed_weights(runner.teacher, runner.adapter) if runner.recipe.stream else None
    _warn_of_memory(runner, weights, getattr(src, "toy", False))  # PipelineSource's: a toy's pipeline
    runner.run_dir.mkdir(parents=True, exist_ok=True)
    teacher_id = _cache_keys(runner, src)
    if not is_follower() and _keeps_measured(runner):  # the teacher and calibration known: what another measured
        check_measured_for_another(runner.run_dir, teacher_id, runner.passes, runner.identity,  # refused, naming
                                   resume=runner.resume, calibration=runner.calibration_keys,  # what differs
                                   config_by=runner.config_by)
    if runner.reading_back:  # (say_if_nothing_to_resume) said once this teacher and calibration are that run's
        note(runner.reading_back)
    if not is_follower() and not (runner.resume or runner.restart):  # the teacher and prompts known: as
        note_reusable(runner)  # --resume compares them (the stages are discarded only once the passes start)
    runner.ctx = RunContext(
        adapter=runner.adapter, family=runner.recipe.model, teacher=runner.teacher,
        run_dir=runner.run_dir, seed=runner.recipe.calibration.seed,
        device=runner.device,  # where passes compute (distill trains there)
        # computed on first use, once (pipeline calibration samples the teacher: minutes)
        calibration_inputs=functools.cache(teacher_forwards(runner, src.calibration)),
        eval_inputs=functools.cache(teacher_forwards(runner, src.heldout)),
        heldout_guidance=getattr(src, "heldout_guidance", lambda: None),  # (after eval_inputs: runner_heldout)
        train_batch=src.train_batch, task_loss=getattr(src, "task_loss", None),
        calibration=runner.recipe.calibration,
        source_kind=kind,  # (svd.objective's words where its batches pair no branches)
        scheduler_config=getattr(src, "scheduler_config", lambda: None),
        unconditional=getattr(src, "unconditional", None),
        fingerprint=teacher_id,
        resume=runner.resume,
        before_saving=functools.partial(discard_finished, runner),  # (a distill first pass's checkpoint)
        finished_note=lambda: runner.interrupt_note() if getattr(runner, "finished_stages", False) else "")
    if weights is not None:
        console.print(f"streaming: the top level ({weights['top_level_params']:,} params) stays resident, "
                      f"blocks (at most {weights['largest_block_params']:,}) are read one at a time")
        runner.ctx.report["stream"] = dict(weights, compute_dtype=runner.recipe.compute_dtype)


def _checked_before_loading(runner):
    """The folders, the passes' configs, the run folder's saved work (--resume: which stage it continues
    from) and the teacher's sources, checked before anything loads; the sources returned."""
    main = not is_follower()  # rank 0 checks and owns the folders; the other ranks only read (runner_ranks)
    runner.reading_back = None
    if main:
        if took := lora_rerun_note(runner.recipe.path, runner.out):  # an output's own recipe.yaml, the output
            note(took)  # LoRA'd since: the rerun leaves the LoRA out (said before an existing output is refused)
        check_folders(runner.out, runner.run_dir, runner.overwrite, runner.teacher_arg or runner.recipe.teacher,
                      runner.teacher_config, runner.config_by)
        if replaced := replaced_note(runner.out, runner.teacher_arg or runner.recipe.teacher, runner.recipe.model):
            note(replaced)  # --overwrite about to replace an output of another teacher or model family
    runner.passes = build_passes(runner.recipe)  # every config error before compute
    runner.models.passes = runner.passes, runner.recipe.passes  # a resident teacher too big: whether they stream
    if main and runner.resume:  # which stage it continues from, and a distill checkpoint of other settings (one
        # it keeps): said now, not after the teacher loads
        from compress.passes.distill_resume import check_resumable_configs

        runner.resumes_from = resumable(runner)
        if several_processes():  # the followers' checks ask nothing of the passes done (_done_before)
            runner.about[RESUMES_AFTER] = runner.resumes_from[1]  # in every record from now on
            announce(runner.run_dir, runner.about)
        if not runner.resumes_from[2]:  # stages passed over: the checkpoints go with them (runner_restore)
            distills = [(i, s.config) for i, s in enumerate(runner.recipe.passes) if s.name == "distill"]
            check_resumable_configs(runner.run_dir, [c for _, c in distills], runner.recipe.calibration,
                                    [i for i, _ in distills])
    check_pipeline_packages(runner.recipe, runner.teacher_arg)  # before a hub teacher downloads
    # there, of the recipe's family (a Hub id's config fetched, never its weights): checked once
    src = checked_sources(runner.recipe, runner.teacher_arg, runner.teacher_config)
    if src.kind in ("toy", "folder"):  # a --teacher-config they do not read (warned): not compared by
        runner.teacher_config = None  # --resume nor recorded, as if not given
    if main and runner.resume:  # nothing saved: what another teacher measured is refused, as a plain rerun refuses it
        if _resumes_nothing(runner):  # (it reads back only this teacher's)
            check_measured_for_another_teacher(runner.run_dir, named_teacher(src.source, runner.teacher_config),
                                               runner.passes, resume=True,
                                               config_by=runner.config_by)
        runner.reading_back = say_if_nothing_to_resume(runner.run_dir, runner.resumes_from[0], runner.passes,
                                                       runner.run_dir_was)  # what it reads back: said once loaded
    if main and not (runner.resume or runner.restart):  # saved work a fresh start would discard: refused
        # (of another teacher: said as --resume would, its source and --teacher-config compared)
        check_run_folder(runner.run_dir, runner.recipe.raw, runner.passes,
                         named_teacher(src.source, runner.teacher_config), runner.recipe, runner.config_by)
    # warns (an estimate), refusing only a peak more than the memory and the run folder's free disk together;
    # whether some pass reads calibration inputs, as plan says (`_warn_of_memory`)
    runner.calibrates = warn_if_beyond_memory(runner.recipe, src, runner.passes, runner.run_dir)
    warn_if_export_wider(runner.recipe, src)  # plan's warning (its make_plan above is quiet)
    return src


def _done_before(runner) -> int | None:
    """--resume: the index of the last pass whose saved stage the run continues from (None: none, or no
    --resume): rank 0's runner.resumes_from; a follower's as rank 0's record says (resumes_after: it
    reads no saved stage itself), so neither asks for what only a pass that runs needs."""
    if is_follower():
        return resumes_after(runner.run_dir, runner.followed) if runner.resume else None
    return (getattr(runner, "resumes_from", None) or ((), None, ()))[1]


def _keeps_measured(runner) -> bool:
    """Whether this run keeps what the run folder's unfinished run measured (not --restart): a plain rerun,
    or --resume where that run saved nothing else (`_resumes_nothing`)."""
    return not runner.restart and not finished_run(runner.run_dir) and (not runner.resume or _resumes_nothing(runner))


def _resumes_nothing(runner) -> bool:
    """--resume with nothing saved to continue from (`nothing_saved`) in a run folder whose run did not finish."""
    return nothing_saved(runner.run_dir, runner.resumes_from[0]) and not finished_run(runner.run_dir)


def _warn_of_memory(runner, weights: dict | None, toy: bool) -> None:
    """Calibration's activations (with the streamed weights where `weights`) against what is free;
    none where no pass reads calibration inputs (plan.calibrates: a removal of no block reads none): then
    only the streamed weights, where streamed. toy: whether a pipeline source samples in a toy's pipeline."""
    if not runner.calibrates and weights is None:
        return
    held = (footprint(runner.recipe, runner.source, runner.teacher.config, len(runner.prompts or ()), toy=toy)
            if runner.calibrates else NO_ACTIVATIONS)
    runner.activation_bytes = held["bytes"]  # whether spilling them would fit the run folder's disk (out of memory)
    spilled = runner.recipe.calibration.spill_activations
    if weights is not None:  # weights and activations together, against what is free
        warn_if_streamed_too_big(weights, held, DTYPES[runner.recipe.compute_dtype], runner.device, spilled)
    else:
        warn_if_activations_too_big(held, runner.device, spilled)


def _cache_keys(runner, src) -> str:
    """The teacher's identity and files, the sampled inputs' cache (a pipeline source's), on `runner`;
    the fingerprint that keys the calibration caches and checkpoints returned."""
    from compress.io_signature import teacher_signature

    weights_sum = weights_checksum(runner.teacher, runner.models)  # read once: streamed files are large
    runner.teacher_files = teacher_signature(runner.source)  # eval and bench notice the files replaced later; a
    # rerun naming a copy of the teacher elsewhere knows it before the teacher loads (runner_teacher_id.copied)
    runner.identity = teacher_identity(runner.source, runner.teacher_config, runner.teacher, weights_sum,
                                       runner.teacher_files)
    # the teacher as report.json records it: `pipe`, `pipe/` and `./pipe` key the same caches and checkpoints,
    # and so does a copy of the teacher the run folder's run read elsewhere (keyed_source: moved); its weights
    # and the config it loaded with (the identity's checksum: a config.json edited in place makes another model,
    # whose statistics are measured again)
    runner.keyed_as = keyed_source(runner.run_dir, runner.identity)
    _say_if_moved(runner)
    key = runner.keyed_as or absolute_source(runner.source)
    runner.calibration_keys = calibration_keys(runner.recipe, runner.inputs_id)
    teacher_id = fingerprint(key, runner.identity["checksum"], runner.recipe, runner.inputs_id)
    runner.inputs_cache = None  # sampled inputs (pipeline calibration: minutes to hours)
    if hasattr(src, "cache_dir"):
        from compress.calib_pipeline import inputs_cache_name

        # not the batching (records are per call), nor the prompts (each call's file is named by them)
        name = inputs_cache_name(key, weights_sum, runner.inputs_id["pipeline"])
        runner.inputs_cache = src.cache_dir = (runner.run_dir / "inputs" / name).resolve()
        runner.sampled_calls = src.call_files  # this run's calls among those cached (interrupt_note)
    return teacher_id


def _say_if_moved(runner) -> None:
    """A note where the run folder's run read this teacher at another path (teacher_moved): its
    saved work and measurements are this teacher's, kept (not for --restart, which starts over)."""
    before = recorded_teacher(runner.run_dir)
    said = teacher_moved(before, runner.identity) if before is not None and not runner.restart else None
    if said and not is_follower():
        note(f"{said} since {runner.run_dir} was written: what that run saved and measured there is this teacher's")


def note_reusable(runner) -> None:
    """A finished run in the run folder whose first passes this recipe shares is started over (its
    stages discarded), as documented; a note says --resume would have kept them, where it would: the
    stage it keeps (`_kept_stage`) of this teacher and calibrated on the prompts read now."""
    keeps = _kept_stage(runner)
    if not keeps:
        return
    total = len(runner.passes)
    shared = ("shares this recipe's one pass" if keeps == total == 1 else
              f"shares all {keeps} passes with this recipe" if keeps == total else
              f"shares its first {counted(keeps, 'pass', 'passes')} with this recipe")
    console.print(f"note: {runner.run_dir} holds a finished run that {shared}: starting over "
                  "(Ctrl-C now and add --resume to keep them, with the same teacher)")


def _kept_stage(runner) -> int:
    """How many passes --resume would keep of the finished run in the run folder (`finished_and_reusable`),
    0 also where it would refuse that stage: another teacher (`same_teacher`), other prompts or pipeline
    parts (`inputs_change`), as runner_restore checks them."""
    keeps = finished_and_reusable(runner.run_dir, runner.recipe.raw, runner.passes)
    state = read_state(dict(stage_dirs(runner.run_dir))[keeps - 1]) if keeps else None
    if not state:
        return 0
    before = state.get("teacher")
    if before is not None and not older_checksum(before, runner.identity) and not same_teacher(before, runner.identity):
        return 0
    inputs = state.get("inputs")
    if isinstance(inputs, dict) and runner.inputs_id is not None and inputs_change(
            inputs, runner.inputs_id, runner.recipe.calibration.pipeline or runner.source):
        return 0
    return keeps


def teacher_forwards(runner, make):
    """make() with whole-teacher forwards allowed (pipeline sampling, streamed or not)."""
    dtype = DTYPES[runner.recipe.compute_dtype]

    def run():
        with runner.models.forwards(runner.teacher):
            return [moved(b, runner.device, dtype) for b in make()]  # no copy when already there
    return run
