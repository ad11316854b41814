"""`dit-compress eval` and `convert`: load, call the module that does the work, print (`lora` is
commands_lora's)."""

from __future__ import annotations

import shlex
from pathlib import Path

from compress.arch import get_adapter
from compress.errors import UserError
from compress.eval_errors import teacher_relative, teacher_relative_streamed
from compress.io import load_teacher, pipeline_without_transformer, read_config
from compress.output_names import is_output, lost_output, missing_output, new_folder_taken, output_usage, run_output
from compress.io_output import load_transformer, output_folder
from compress.io_source import check_source, looks_local, no_checkpoint_file, output_weights
from compress.io_teacher_of import load_teacher_of
from compress.measured_against import against, teacher_fields, teacher_loras
from compress.recipe_where import option_where
from compress.report import console, error_figure, note, output_file, read_report, results, to_json, warn
from compress.report_teacher import recorded_teacher, teacher_to_load, toy_base, warn_if_teacher_changed


def _load_model(model: str, teacher_arg: str | None, config_arg: str | None = None,
                grid: Path | None = None, seed: int | None = None):
    """(model, (teacher source or None, its config or None), output folder or None); `teacher_arg`,
    `config_arg`: --teacher, --teacher-config (report_teacher.recorded_teacher). A model that is no
    output is loaded only where it is scored as a toy (a toy teacher, or --teacher one): any other is
    refused from its files alone (check_measurable; --grid and --seed, the toy's, first), not after
    loading it."""
    path = output_folder(model)  # a pipeline folder (a pipeline's save_pretrained): its transformer/
    if looks_local(model) and not path.exists():
        raise UserError(f"{model}: no such model (a dit-compress output folder or a teacher)")
    if is_output(path):
        return load_transformer(path), teacher_to_load(path, teacher_arg, config_arg), path
    if config_arg and not teacher_arg:
        raise UserError(f"--teacher-config is the config of a single-file teacher; {model} is not a dit-compress "
                        "output, whose teacher it would be, and no --teacher names one")
    if toy_base(teacher_arg or model) is None:  # a real teacher, refused before it loads (FLUX.1-dev: ~24 GB)
        _toy_options_only(grid, seed)
        if path.is_file() and output_weights(path):
            check_source(model)  # an output's weight file: the folder to give is named
        if (path / "config.json").is_file():
            read_config(path / "config.json")  # a damaged one is named (an output's, maybe), not called no output
        if path.is_dir() and (refused := pipeline_without_transformer(path)) is not None:
            raise refused  # as load_teacher and load_transformer say it
        check_measurable(None, None, model)
    return load_teacher(model, config_key="--teacher-config").eval(), (teacher_arg, config_arg), None


def evaluate(args) -> int:
    _not_a_recipe(args.model)
    name = _cached_output(args.model)  # a Hub id: the cache's copy, where it is an output
    grid = output_file(args.grid, "--grid", figure=True) if args.grid is not None else None  # before any work
    check_lora_option(name, args.lora)
    streamed_out = _streamed_output(name, args.teacher, args.teacher_config)
    if streamed_out is not None:
        _toy_options_only(grid, args.seed)
        warn_if_teacher_changed(streamed_out[0], streamed_out[1], "eval")
        named = teacher_fields(streamed_out[1], args.teacher)
        return _print(teacher_relative_streamed(*streamed_out, bool(args.teacher)), args.json, named, args.model)
    model, (teacher_source, teacher_config), out = _load_model(name, args.teacher, args.teacher_config,
                                                                  grid, args.seed)
    if out is not None:
        warn_if_teacher_changed(out, teacher_source, "eval")
    family = get_adapter(model).family
    toy = toy_base(teacher_source or name) is not None  # a toy, or an output of a toy's output
    if not toy:
        _toy_options_only(grid, args.seed)
        check_measurable(out, teacher_source, name)  # before the teacher loads
    where = option_where(args.teacher)  # '' of the recorded teacher: its errors name it
    teacher = load_teacher_of(model, teacher_source, teacher_config, args.lora, where=where) if teacher_source else None
    named = teacher_fields(teacher_source, args.teacher, teacher_loras(model, args.lora)) if teacher_source else None
    if not toy:
        return _print(teacher_relative(model, teacher, teacher_source, out), args.json, named, args.model)
    from compress.toy.evaluate import evaluate as toy_evaluate, measured_on_line, unguided_run_note

    what = "the model and its teacher" if teacher is not None else "the model"
    seed = 0 if args.seed is None else args.seed
    # a line, not a status: rich before 14.1 refuses the sampling's bars inside a spinner
    console.print(f"eval: sampling 200 toy digits with {what} (20 steps each) and scoring them",
                  highlight=False, markup=False)
    result = toy_evaluate(model, family, teacher=teacher, seed=seed, progress=True)  # a bar per model's sampling
    if out is not None and (said := unguided_run_note(out, result)) is not None:
        note(said)
    report = read_report(out) if out is not None and not args.teacher else {}  # its figures: against its own teacher
    beside = measured_on_line(result, report, of_run=out is not None)  # a toy as it is: no run, no run's inputs
    code = _print(result, args.json, named, args.model, beside)  # the scores first: a grid that cannot be written loses none
    if grid:
        from compress.toy.grid import save_sample_grid

        console.print(f"wrote {save_sample_grid(model, family, grid, seed=seed)}")
    return code


def _cached_output(model: str) -> str:
    """`model`, or for a Hub id (ORG/NAME, not there as a path) the Hugging Face cache's copy of it
    where that is an output, as inspect and bench read it (cached_output_said: else one line
    saying how to download it, or that the cache's copy is no output). eval loads no Hub teacher:
    a real teacher is refused as no output (check_measurable), and no Hub id is a toy."""
    if (missing := missing_output(model, output_usage("eval"))) is not None:  # a local path: not looked for in the cache
        raise UserError(missing)
    _not_a_run_folder(model, "eval")
    cached = cached_output_said(model, "eval")
    return model if cached is None else str(cached)


def cached_output_said(source: str, what: str) -> Path | None:
    """io_output.cached_output for the command `what` (eval, bench): the Hugging Face cache's copy of
    the Hub id `source` where it is an output (None for a path), and where it is read, a note saying so,
    once: the command's other lines name `source`, the id the user gave."""
    from compress.io_output import cached_output

    cached = cached_output(source, what)
    if cached is not None:
        note(f"{source}: reading the Hugging Face cache's copy of it, {cached}")
    return cached


def given_output(given: str | Path, command: str) -> Path:
    """The output folder `command` (inspect, bench) was `given` (as typed: ./x is a path): that folder
    where it is one (load_transformer says whether it is an output; a run folder runs/NAME whose output
    out/NAME is there is told that), else the Hugging Face cache's copy of a Hub id (cached_output_said,
    which notes once that it reads it). The weight file of an output is refused in eval's words
    (io_source.check_source: give its folder); another file, or a path not there, in the command's
    (output_names.missing_output: a local path is never looked for in the cache)."""
    usage = output_usage(command)
    out = Path(given).expanduser()
    if out.is_file():
        if output_weights(out):
            check_source(str(out))  # raises: "... is a weight file of the dit-compress output ...: give that folder"
        raise UserError(f"{out} is a file: {command} takes an output folder {usage}")
    if out.is_dir():
        _not_a_run_folder(str(given), command)
        return out
    if (missing := missing_output(str(given), usage)) is not None:
        raise UserError(missing)
    cached = cached_output_said(str(out), command)  # a Hub id: the cache's copy, where it is an output
    if cached is None:
        raise UserError(f"{out}: no such output folder {usage}")
    return cached


def _not_a_run_folder(given: str, command: str) -> None:
    """A UserError where `given` is a run folder runs/NAME (no output) whose run's output out/NAME is
    there (output_names.run_output): that output is named, with the command that reads it; a finished
    run's whose output is gone (output_names.lost_output), or the folder of a run that has not finished
    (`_unfinished_run`): said so, with how to get or finish it."""
    folder = Path(given).expanduser()
    if not folder.is_dir() or is_output(output_folder(folder)):
        return
    if (output := run_output(folder)) is not None:
        raise UserError(f"{given} is a run folder (a run's caches and checkpoints), not an output; the output "
                        f"of that run is {output}: dit-compress {command} {output}")
    if (lost := lost_output(folder, given, command)) is not None:
        raise UserError(lost)
    if (saved := _unfinished_run(folder)) is not None:
        flags = _rerun_flags(folder, given)
        rerun = ("rerun its recipe to start it over (dit-compress run RECIPE" if saved == NOTHING_SAVED
                 else "rerun its recipe with --resume to continue it (dit-compress run RECIPE --resume")
        raise UserError(f"{given} is the run folder of a run that has not finished ({saved}): it wrote no output "
                        f"yet; {rerun}{flags}), then dit-compress {command} its output")


def _rerun_flags(folder: Path, given: str) -> str:
    """The options of a rerun of the unfinished run in `folder` (as `given`): --out of the output it
    recorded (stages/run.json, runner_stages.record_run) where that is not run's own default out/NAME of a
    runs/NAME, and --run-dir where the folder is not a runs/NAME."""
    from compress import json_read
    from compress.output_names import as_typed
    from compress.runner_resume import RUN_RECORD

    try:
        out = json_read.read(folder / "stages" / RUN_RECORD).get("out")
    except (OSError, ValueError, AttributeError):  # none recorded (an older run's), or not readable
        out = None
    runs = folder.parent.name == "runs"  # runs/NAME: run's default run folder for a recipe NAME.yaml
    out = as_typed(Path(out)) if isinstance(out, str) and out else None
    default = out is None or (runs and out.resolve() == folder.resolve().parent.parent / "out" / folder.name)
    return ("" if default else f" --out {out}") + ("" if runs else f" --run-dir {given}")


NOTHING_SAVED = "no pass saved yet"  # _unfinished_run's words of a run that saved nothing: a rerun starts over


def _unfinished_run(folder: Path) -> str | None:
    """What the run folder `folder` of a run that has not finished (what a run writes in it there:
    runner_folders.RUN_WRITTEN; no stages/finished.json) holds, in words ('1 of 2 passes done',
    runner_kept.saved_in_words; 'no pass saved yet'); None for another folder, or a finished run's."""
    from compress.runner_folders import RUN_WRITTEN
    from compress.runner_kept import saved_in_words
    from compress.runner_resume import FINISHED, interrupted_run

    if (folder / "stages" / FINISHED).is_file() or not any(RUN_WRITTEN.fullmatch(p.name) for p in folder.iterdir()):
        return None
    info = interrupted_run(folder)
    return NOTHING_SAVED if info is None else saved_in_words(info)


def _toy_options_only(grid: Path | None, seed: int | None) -> None:
    """--grid and --seed are the toy evaluation's; a UserError for a real model."""
    if grid:
        raise UserError("--grid draws the toy pipelines' samples; sample a real model with its pipeline")
    if seed is not None:
        raise UserError("--seed seeds the toy evaluation's samples; a real model is measured on its run's "
                        "held-out inputs (calibration.seed of its recipe.yaml)")


def _print(result: dict, as_json: bool, named: dict | None = None, given: str | None = None,
           beside: str | None = None) -> int:
    """eval's result, as --json or a line per key; `named` (measured_against.teacher_fields): the
    teacher it was measured against, keys in --json and a line above the others ('OUT' records it,
    OUT as the user `given` it: a Hub id, not the cache's snapshot); `beside`: a line below the figures
    (a toy's: the inputs they are measured on, toy.evaluate.measured_on_line), not in --json; a
    pred_rel_error or guided_error above 1 warned of."""
    if as_json:
        print(to_json({**(named or {}), **result}))
    else:
        if named:
            results.print(f"measured {against(named, given)}", markup=False, highlight=False)
        for key, value in result.items():
            results.print(f"{key:>28}: {_figure(key, value)}")
        if beside:
            results.print(beside, markup=False, highlight=False)
    _warn_above_one(result)
    return 0


def _figure(key: str, value) -> str:
    """One of eval's figures as its table prints it: an error as report.json's other readers print one
    (report.error_figure: 0.1780, 4 significant figures), another float to 4 significant figures (28.38)."""
    if key in ("pred_rel_error", "guided_error") and isinstance(value, float):
        return error_figure(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _warn_above_one(result: dict) -> None:
    """A warning where eval's pred_rel_error or guided_error is above 1, in the words the run's check warns
    of a stage's (runner_heldout.above_one_words)."""
    from compress.runner_heldout import above_one_words

    for key in ("pred_rel_error", "guided_error"):
        err = result.get(key)
        if isinstance(err, (int, float)) and (said := above_one_words(err, "the model", key == "guided_error")):
            warn(f"eval: {key}: {said}")


def _not_a_recipe(model: str) -> None:
    """eval given a recipe (a file the loaders would call 'not a checkpoint: a teacher is ...'), or a folder
    of recipes (recipes/: no model in it, its YAML files named), which was called 'not a dit-compress output:
    ...; a real teacher has no toy scores'."""
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        raise UserError(f"{model} is a recipe: eval takes an output folder (dit-compress eval OUT, OUT written "
                        f"by run: dit-compress run {model}) or a teacher source")
    recipes = sorted(p.name for p in path.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if path.is_dir() else []
    if recipes and not any((path / name).exists() for name in ("config.json", "model_index.json", "transformer")):
        shown = ", ".join(recipes[:3]) + (", ..." if len(recipes) > 3 else "")
        raise UserError(f"{model} is a folder of recipes ({shown}), not a model: eval takes an output folder "
                        f"(dit-compress eval OUT, OUT written by run: dit-compress run {path / recipes[0]}) or a "
                        "teacher source")


def _streamed_output(model: str, teacher_arg: str | None,
                     config_arg: str | None = None) -> tuple[Path, str, str | None] | None:
    """(output folder, teacher source, its --teacher-config) when `model` is the output of a streamed run of a real
    teacher (its recipe.yaml says stream: true): eval then streams both models as the run did; but not with a
    teacher that is a single file, which cannot be streamed (noted: compared resident, where its run would
    have refused it). A pipeline folder (a pipeline's save_pretrained): its transformer/."""
    path = output_folder(model)
    if not (path / "recipe.yaml").is_file() or not is_output(path):
        return None
    from compress.recipe import load_recipe

    teacher = recorded_teacher(path, teacher_arg, config_arg)[0]
    if not load_recipe(path / "recipe.yaml", saved=True).stream or not teacher or teacher.startswith("toy:"):
        return None
    if _took_loras(path):  # its teacher takes them resident (load_teacher_of): measured as a resident run's
        return None
    source, config = teacher_to_load(path, teacher_arg, config_arg)
    if source and (file := Path(source).expanduser()).is_file():  # a single file cannot be streamed: compared resident
        if not (config or (file.parent / "config.json").is_file()):  # refused as it loads: no note before that
            return None
        note(f"eval compares {model} with teacher {source} resident, not streamed as its run was: a single file "
             f"cannot be streamed (dit-compress convert {source} FOLDER, then --teacher FOLDER streams it)")
        return None
    return path, source, config


def check_lora_option(model: str, loras: list[str] | None) -> None:
    """--lora gives the new place of a LoRA a dit-compress output took: a UserError for a model that
    is no output, or an output that took none (a streamed output's eval would ignore it). A pipeline
    folder: its transformer/, as eval reads it."""
    if not loras:
        return
    path = output_folder(model)
    if not is_output(path):
        raise UserError(f"--lora gives the new place of a LoRA a dit-compress output took (dit-compress lora or "
                        "compress.merge_lora); "
                        f"{model} is not a dit-compress output")
    if not _took_loras(path):
        raise UserError("--lora: the model took no LoRA (dit-compress lora or compress.merge_lora); its teacher is "
                        "compared as it is")


def _took_loras(out: Path) -> bool:
    """Whether the output took LoRAs (dit-compress lora), as its config's compression section records."""
    from compress.report_teacher import recorded_loras

    return bool(recorded_loras(out))


def check_measurable(out: Path | None, teacher: str | None, name: str) -> None:
    """What eval needs to measure a real model: an output folder, its recipe.yaml (whose calibration
    settings give the held-out inputs; no option stands in for it, so it is asked for first) and its
    teacher; a UserError saying which is missing. A folder a loaded output was re-saved to (save_pretrained)
    holds only config.json and the weights: the recipe.yaml of the run's output makes it measurable."""
    if out is None:  # a Hub id was read from the cache before (_cached_output)
        raise UserError(f"{name} is not a dit-compress output: eval measures a compressed output folder "
                        "against its teacher (dit-compress eval OUT); a real teacher has no toy scores")
    if not (out / "recipe.yaml").is_file():
        raise UserError(f"{out} has no recipe.yaml, whose calibration settings give eval its held-out inputs (a "
                        "folder re-saved with save_pretrained holds only config.json and the weights): copy the "
                        "recipe.yaml of the output the run wrote into it, or rerun the recipe")
    if not teacher:
        raise UserError(f"{out}: neither report.json nor config.json (compression.teacher) names the teacher "
                        "it was compressed from; pass --teacher")


def convert(args) -> int:
    """A single-file teacher, or a folder of .bin weights (io_convert.pickled_folder), as a diffusers
    transformer folder (config.json, safetensors shards), in the file's own dtypes, tensor by tensor
    (compress.io_convert): what `stream: true` reads."""
    from compress.io_convert import check_folder_model, convert_file, pickled_folder
    from compress.runner import sigterm_as_interrupt

    for what, given in (("checkpoint", args.file), ("output", args.out)):
        if not given.strip():  # Path("") is ".", the current folder
            raise UserError(f"the {what} path is empty; convert FILE OUT reads FILE and writes the new folder OUT")
    source, out = Path(args.file).expanduser(), Path(args.out).expanduser()
    if (missing := no_checkpoint_file(args.file)) is not None:  # (cli.main says it before torch's import)
        raise UserError(missing)
    if source.is_dir():  # of another model (a VAE's): said as run says it
        check_folder_model(source)
    if not source.is_file() and not pickled_folder(source):  # a folder of .bin weights converts whole
        raise not_a_file(args.file, source)
    if (taken := new_folder_taken(out, args.out, "convert writes a new folder")) is not None:
        raise UserError(taken)
    with sigterm_as_interrupt():  # a killed convert leaves no hidden partial folder, as Ctrl-C
        done = convert_file(source, out, config=args.teacher_config)
    shards = f"{done['shards']} shard{'s' if done['shards'] != 1 else ''}"
    results.print(f"wrote {out}: a diffusers {done['class']} folder ({done['tensors']} tensors, "
                  f"{', '.join(done['dtypes'])}, {shards}); stream it with --teacher {shlex.quote(str(out))}")
    return 0


def not_a_file(given: str, source: Path) -> UserError:
    """convert's error for a source that is a folder (one not there: io_source.no_checkpoint_file): a
    folder holding a file (docs/STREAMING.md's layout for a single file, config.json beside it) names the
    file to give; a diffusers folder (its weights or shards, a transformer/ or model_index.json) is what
    stream: true reads already."""
    from compress.stream_files import convertible_files, listed

    files = convertible_files(source)
    if files:
        which = f"the file in it, {files[0]}" if len(files) == 1 else f"one of the files in it ({listed(files)})"
        return UserError(f"{given}: a folder; convert reads a single-file checkpoint: give {which}")
    return UserError(f"{given}: a folder; convert reads a single-file checkpoint (a folder is already what "
                     "stream: true reads)")
