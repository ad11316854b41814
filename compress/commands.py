"""`dit-compress importance`, `eval`, `convert` and `lora`: load, call the module that does the work, print."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from compress.arch import get_adapter
from compress.errors import UserError
from compress.io import cast, check_same_architecture, load_teacher, load_teacher_of, looks_local
from compress.io_export import is_output
from compress.io_output import load_transformer, output_folder
from compress.report import console, output_file, read_report, results, to_json
from compress.report_teacher import recorded_teacher, teacher_to_load, warn_if_teacher_changed


def _is_recipe(source: str) -> bool:
    return source.endswith((".yaml", ".yml"))


def _importance_source(source: str, teacher_arg: str | None, config_arg: str | None, overrides: list[str]):
    """The recipe `source` names (with `overrides`, --set), or None for a toy teacher scanned
    directly; checked, nothing loaded: what the scan needs to know (its settings, the family) is
    known before the teacher loads."""
    from compress.recipe import load_recipe

    if _is_recipe(source):
        return load_recipe(source, overrides)
    if looks_local(source) and not Path(source).expanduser().exists():
        raise UserError(f"{source}: no such recipe or teacher")
    _check_teacher_or_recipe(source)
    if not source.startswith("toy:"):
        raise UserError(f"{source}: a real teacher is scanned on its pipeline's samples of the "
                        "prompts a recipe gives; pass a recipe whose teacher it is "
                        "(dit-compress importance RECIPE)")
    _check_no_recipe_options(source, teacher_arg, config_arg, overrides)
    return None


def _teacher_and_inputs(source: str, recipe, teacher_arg: str | None = None, config_arg: str | None = None):
    """(teacher source, teacher model, input source, block loader) from a recipe (None: `source` is
    a toy teacher, _importance_source); the loader (compress.stream.CheckpointBlocks) is None unless
    the recipe streams. `teacher_arg`, `config_arg`: --teacher, --teacher-config of a recipe, as
    plan and run take them."""
    from compress.inputs import check_pipeline_packages, input_source
    from compress.recipe import CalibrationConfig
    from compress.runner import load_checked_teacher, resolve_device

    loader = None
    if recipe is not None:
        check_pipeline_packages(recipe, teacher_arg)  # before a hub teacher downloads
        device = resolve_device(recipe)  # the scan runs where the recipe's passes would
        if recipe.stream:  # as its run would: the top level resident, blocks read as they run
            models = _read_only_streams(recipe, device)
            teacher_source, teacher = load_checked_teacher(recipe, teacher_arg, config_arg, models=models)
            loader = models.loaders[id(teacher)]
        else:
            from compress.runner import DTYPES
            from compress.runner_stream import warn_if_too_big

            warn_if_too_big(teacher_arg or recipe.teacher, DTYPES[recipe.compute_dtype], device, student=False)
            teacher_source, teacher = load_checked_teacher(recipe, teacher_arg, config_arg)
            teacher = cast(teacher, device)
        calib, recipe_dir = recipe.calibration, Path(source).parent
    else:
        teacher_source, teacher = source, load_teacher(source).eval()
        calib, recipe_dir = CalibrationConfig(), None
    family = get_adapter(teacher).family
    return teacher_source, teacher, input_source(family, teacher_source, calib, teacher, recipe_dir), loader


def _check_no_recipe_options(source: str, teacher_arg: str | None, config_arg: str | None,
                             overrides: list[str]) -> None:
    """--teacher, --teacher-config and --set change a recipe: with a toy teacher scanned directly
    they would change nothing, which is said rather than ignored."""
    given = [flag for flag, value in (("--teacher", teacher_arg), ("--teacher-config", config_arg),
                                      ("--set", overrides)) if value]
    if given:
        raise UserError(f"{' and '.join(given)} change{'s' if len(given) == 1 else ''} a recipe, and {source} is a "
                        "toy teacher scanned as it is: pass a recipe (dit-compress importance RECIPE "
                        f"{given[0]} ...), or leave {' and '.join(given)} out")


def _check_teacher_or_recipe(source: str) -> None:
    """A source importance takes that is not a recipe is a teacher (io_source.check_source), not a
    dit-compress output (its folder or its weight file): that says how to scan its teacher."""
    from compress.io_source import check_source, check_suffix, output_weights

    path = Path(source).expanduser()
    if path.is_dir() and is_output(path):
        raise UserError(_output_words(source, path, "this is a dit-compress output"))
    if path.is_file() and output_weights(path):
        raise UserError(_output_words(source, path.parent, f"this is a weight file of the dit-compress output "
                                                           f"{path.parent}"))
    if path.is_file():
        check_suffix(Path(source), "importance reads a recipe (.yaml) or a teacher: a folder or a checkpoint file")
    check_source(source)


def _output_words(source: str, out: Path, what: str) -> str:
    """Why importance does not take the output `out` (given as `source`, which is `what`), and what
    it takes instead: the recipe that made it (its copy, out/recipe.yaml, where there) or its toy teacher."""
    teacher = recorded_teacher(out)[0]
    made = f" (compressed from {teacher})" if teacher else ""
    recipe = out / "recipe.yaml"
    words = (f"{source}: importance scans a teacher, and {what}{made}: pass the recipe that made it, which "
             "names its teacher")
    named = _recipe_teacher(recipe)
    if named and (not teacher or _same_teacher(named, teacher)):
        words += f" (its copy: dit-compress importance {recipe})"
    elif named:  # run with --teacher: the copy names the recipe's own
        words += f" (its copy, {recipe}, names {named}, not that teacher)"
    if teacher and teacher.startswith("toy:"):
        words += f", or the toy teacher itself (dit-compress importance {teacher})"
    return words


def _recipe_teacher(recipe: Path) -> str | None:
    """The `teacher:` an output's recipe copy names ('' where it names none), or None where there is
    no copy or it does not read."""
    import yaml

    try:
        data = yaml.safe_load(recipe.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return str(data.get("teacher") or "") if isinstance(data, dict) else None


def _same_teacher(a: str, b: str) -> bool:
    """Two teacher sources name the same one (local paths compared resolved)."""
    from compress.report_teacher import absolute_source

    return absolute_source(a) == absolute_source(b)


def _read_only_streams(recipe, device):
    """A runner_stream.StreamedModels that writes nothing, in the recipe's compute dtype."""
    from compress.runner import DTYPES
    from compress.runner_stream import StreamedModels

    return StreamedModels(None, DTYPES[recipe.compute_dtype], device)


def importance(args) -> int:
    from compress.passes.importance import save_json, scan
    from compress.passes.importance_report import plot_heatmap, render_table
    from compress.stream import streamed

    to_stdout = args.json == "-"  # the scan as JSON on standard output, in place of the table
    json_path = output_file(args.json, "--json") if args.json and not to_stdout else None  # before the scan
    png = output_file(args.png, "--png", figure=True) if args.png else None
    recipe = _importance_source(args.source, args.teacher, args.teacher_config, args.overrides)  # None: a toy
    config = _importance_config(recipe, args.buckets, args.teacher)  # before the teacher loads
    png = png or _default_png(recipe.model if recipe is not None else args.source[len("toy:"):])
    _, teacher, inputs, loader = _teacher_and_inputs(args.source, recipe, args.teacher, args.teacher_config)
    adapter = get_adapter(teacher)
    with streamed(teacher, loader) if loader is not None else nullcontext():  # pipeline sampling
        batches = inputs.calibration()
    result = scan(teacher, adapter, batches, buckets=config.buckets, progress=config.progress,
                  skips=not config.proxy_only, loader=loader)
    if to_stdout:
        print(to_json(result.to_dict()))
    else:
        results.print(render_table(result, width=results.width))
    console.print(f"wrote {plot_heatmap(result, png)}")
    if json_path:
        console.print(f"wrote {save_json(result, json_path)}")
    return 0


def _importance_config(recipe, buckets: int | None, teacher_arg: str | None = None):
    """The settings the scan runs with: those of the recipe's first importance pass (buckets,
    proxy_only, progress), so the scan is the one `run` records; the pass's defaults for a toy
    teacher or a recipe without one. `buckets` (--buckets, None where not given) overrides the
    pass's, and is at most the noise levels the calibration inputs hold (`_noise_levels`): more
    leave columns no input falls in."""
    import dataclasses

    from compress.passes.importance import ImportanceConfig

    spec = next((p for p in recipe.passes if p.name == "importance"), None) if recipe is not None else None
    config = dataclasses.replace(spec.config) if spec is not None else ImportanceConfig()
    if buckets is None:
        return config
    levels, how = _noise_levels(recipe, teacher_arg)
    if buckets > levels:
        more = "a recipe with more calibration inputs" if recipe is None else "more calibration inputs (--set)"
        raise UserError(f"--buckets {buckets}: more buckets than the {levels} noise levels the calibration inputs "
                        f"hold ({how}); pass --buckets {levels} or fewer, or {more}")
    return dataclasses.replace(config, buckets=buckets)


def _noise_levels(recipe, teacher_arg: str | None) -> tuple[int, str]:
    """(how many distinct noise levels the scan's calibration inputs hold at most, how, in words): a
    pipeline source keeps min(timesteps, sample_steps) sampler steps; the toy and synthetic sources
    draw each of their num_prompts × timesteps inputs at its own level."""
    from compress.inputs import source_kind
    from compress.recipe import CalibrationConfig

    calib = recipe.calibration if recipe is not None else CalibrationConfig()
    teacher = teacher_arg or (recipe.teacher if recipe is not None else "toy:")
    if source_kind(calib, teacher) == "pipeline":
        return (min(calib.timesteps, calib.sample_steps),
                f"calibration.timesteps {calib.timesteps} of a {calib.sample_steps}-step sampler")
    return calib.num_prompts * calib.timesteps, (f"calibration.num_prompts × timesteps: {calib.num_prompts} × "
                                                 f"{calib.timesteps} inputs")


def _default_png(family: str) -> Path:
    """importance-<family>.png in the working folder, where the heatmap goes without --png; checked
    before the teacher loads, an error naming that file and --png (the user gave no --png)."""
    name = f"importance-{family}.png"
    return output_file(Path.cwd() / name, f"the heatmap {name} (the default; --png PATH writes it elsewhere)",
                       figure=True)


def _load_model(model: str, teacher_arg: str | None, config_arg: str | None = None):
    """(model, (teacher source or None, its config or None), output folder or None); `teacher_arg`,
    `config_arg`: --teacher, --teacher-config (report_teacher.recorded_teacher)."""
    path = output_folder(model)  # a pipeline folder (a pipeline's save_pretrained): its transformer/
    if looks_local(model) and not path.exists():
        raise UserError(f"{model}: no such model (a dit-compress output folder or a teacher)")
    if is_output(path):
        return load_transformer(path), teacher_to_load(path, teacher_arg, config_arg), path
    if config_arg and not teacher_arg:
        raise UserError(f"--teacher-config is the config of a single-file teacher; {model} is not a dit-compress "
                        "output, whose teacher it would be, and no --teacher names one")
    return load_teacher(model).eval(), (teacher_arg, config_arg), None


def evaluate(args) -> int:
    grid = output_file(args.grid, "--grid", figure=True) if args.grid else None  # before any work
    check_lora_option(args.model, args.lora)
    streamed_out = _streamed_output(args.model, args.teacher, args.teacher_config)
    if streamed_out is not None:
        _toy_options_only(grid, args.seed)
        warn_if_teacher_changed(streamed_out[0], streamed_out[1], "eval")
        return _print(_teacher_relative_streamed(*streamed_out), args.json)
    model, (teacher_source, teacher_config), out = _load_model(args.model, args.teacher, args.teacher_config)
    if out is not None:
        warn_if_teacher_changed(out, teacher_source, "eval")
    family = get_adapter(model).family
    toy = (teacher_source or args.model).startswith("toy:")
    if not toy:
        _toy_options_only(grid, args.seed)
        check_measurable(out, teacher_source, args.model)  # before the teacher loads
    teacher = load_teacher_of(model, teacher_source, teacher_config, args.lora) if teacher_source else None
    if not toy:
        return _print(_teacher_relative(model, teacher, teacher_source, out), args.json)
    from compress.toy.evaluate import evaluate as toy_evaluate

    what = "the model and its teacher" if teacher is not None else "the model"
    seed = 0 if args.seed is None else args.seed
    with console.status(f"eval: sampling 200 toy digits with {what} (20 steps each) and scoring them"):
        result = toy_evaluate(model, family, teacher=teacher, seed=seed)
    if grid:
        from compress.toy.grid import save_sample_grid

        console.print(f"wrote {save_sample_grid(model, family, grid, seed=seed)}")
    return _print(result, args.json)


def _toy_options_only(grid: Path | None, seed: int | None) -> None:
    """--grid and --seed are the toy evaluation's; a UserError for a real model."""
    if grid:
        raise UserError("--grid draws the toy pipelines' samples; sample a real model with its pipeline")
    if seed is not None:
        raise UserError("--seed seeds the toy evaluation's samples; a real model is measured on its run's "
                        "held-out inputs (calibration.seed of its recipe.yaml)")


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(to_json(result))
    else:
        for key, value in result.items():
            results.print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return 0


def _streamed_output(model: str, teacher_arg: str | None,
                     config_arg: str | None = None) -> tuple[Path, str, str | None] | None:
    """(output folder, teacher source, its --teacher-config) when `model` is the output of a streamed run of a real
    teacher (its recipe.yaml says stream: true): eval then streams both models as the run did. A pipeline
    folder (a pipeline's save_pretrained): its transformer/."""
    path = output_folder(model)
    if not (path / "recipe.yaml").is_file() or not is_output(path):
        return None
    from compress.recipe import load_recipe

    teacher = recorded_teacher(path, teacher_arg, config_arg)[0]
    if not load_recipe(path / "recipe.yaml").stream or not teacher or teacher.startswith("toy:"):
        return None
    if _took_loras(path):  # its teacher takes them resident (io.load_teacher_of): measured as a resident run's
        return None
    return (path, *teacher_to_load(path, teacher_arg, config_arg))


def check_lora_option(model: str, loras: list[str] | None) -> None:
    """--lora gives the new place of a LoRA a dit-compress output took: a UserError for a model that
    is no output, or an output that took none (a streamed output's eval would ignore it). A pipeline
    folder: its transformer/, as eval reads it."""
    if not loras:
        return
    path = output_folder(model)
    if not is_output(path):
        raise UserError(f"--lora gives the new place of a LoRA a dit-compress output took (dit-compress lora); "
                        f"{model} is not a dit-compress output")
    if not _took_loras(path):
        raise UserError("--lora: the model took no LoRA (dit-compress lora); its teacher is compared as it is")


def _took_loras(out: Path) -> bool:
    """Whether the output took LoRAs (dit-compress lora), as its config's compression section records."""
    from compress.io import read_json

    section = read_json(out / "config.json").get("compression")
    return isinstance(section, dict) and bool(section.get("loras"))


def _heldout_pipeline(out: Path, source: str) -> str:
    """The teacher source whose pipeline gives eval the output's held-out inputs (input_source):
    `source` (--teacher, else the recorded teacher) where it is one (a folder with model_index.json,
    a Hub id, a toy), so a pipeline moved since is sampled where it is now; else (a bare transformer
    folder or a single file, in which nothing samples) the teacher the run recorded. A local path
    absolute, as the run records it: the keys of its inputs cache hold it."""
    from compress.report_teacher import absolute_source

    path = Path(source).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        source = recorded_teacher(out)[0] or source
    return absolute_source(source)


def _teacher_relative_streamed(out: Path, teacher_source: str, teacher_config: str | None) -> dict:
    """_teacher_relative with teacher and student streamed block by block (each on meta but for
    its top level) on the recipe's device and in its compute dtype, as the run held them."""
    from compress.inputs import input_source, moved
    from compress.passes.base import predictions, relative_error
    from compress.recipe import load_recipe
    from compress.runner import DTYPES, load_checked_teacher, resolve_device

    recipe = load_recipe(out / "recipe.yaml")
    device, dtype = resolve_device(recipe), DTYPES[recipe.compute_dtype]
    models = _read_only_streams(recipe, device)
    _, teacher = load_checked_teacher(recipe, teacher_source, teacher_config, models=models)
    student = models.restore(out).requires_grad_(False).eval()
    check_same_architecture(student, teacher, teacher_source)
    adapter = get_adapter(teacher)
    src = input_source(adapter.family, _heldout_pipeline(out, teacher_source), recipe.calibration, teacher)
    report = read_report(out)
    if report.get("inputs_cache") and hasattr(src, "cache_dir"):  # the run's sampled inputs
        src.cache_dir = Path(report["inputs_cache"])
    with models.forwards(teacher), console.status("eval: the teacher's held-out predictions, block by block"):
        batches = [moved(b, device, dtype) for b in src.heldout()]
        reference = predictions(teacher, adapter, batches)
    with models.forwards(student), console.status("eval: the student's, block by block"):
        error = relative_error(student, reference, adapter, batches)
    return {"family": adapter.family, "pred_rel_error": error, "streamed": True}


def _teacher_relative(model, teacher, source: str, out: Path) -> dict:
    """Real models: teacher-relative error on the run's held-out prompts and seeds (check_measurable
    first)."""
    from compress.inputs import input_source, moved
    from compress.recipe import load_recipe
    from compress.passes.base import predictions, relative_error

    recipe = load_recipe(out / "recipe.yaml")
    adapter = get_adapter(teacher)
    report = read_report(out)
    src = input_source(adapter.family, _heldout_pipeline(out, source), recipe.calibration, teacher)
    if report.get("inputs_cache") and hasattr(src, "cache_dir"):  # the run's sampled inputs
        src.cache_dir = Path(report["inputs_cache"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = cast(teacher, device)
    with console.status("eval: the teacher's held-out predictions"):
        batches = [moved(b, device, teacher.dtype) for b in src.heldout()]
        reference = predictions(teacher, adapter, batches)
    model = cast(model, device, teacher.dtype)  # the export's dtype (often bf16) computed like the teacher
    with console.status("eval: the model's"):
        error = relative_error(model, reference, adapter, batches)
    return {"family": adapter.family, "pred_rel_error": error}


def check_measurable(out: Path | None, teacher: str | None, name: str) -> None:
    """What eval needs to measure a real model: an output folder, its recipe.yaml (whose calibration
    settings give the held-out inputs; no option stands in for it, so it is asked for first) and its
    teacher; a UserError saying which is missing. A folder a loaded output was re-saved to (save_pretrained)
    holds only config.json and the weights: the recipe.yaml of the run's output makes it measurable."""
    if out is None:
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
    """A single-file teacher as a diffusers transformer folder (config.json, safetensors shards), in
    the file's own dtypes, tensor by tensor (compress.io_convert): what `stream: true` reads."""
    from compress.io_convert import convert_file
    from compress.runner import sigterm_as_interrupt

    for what, given in (("checkpoint", args.file), ("output", args.out)):
        if not given.strip():  # Path("") is ".", the current folder
            raise UserError(f"the {what} path is empty; convert FILE OUT reads FILE and writes the new folder OUT")
    source, out = Path(args.file).expanduser(), Path(args.out).expanduser()
    if not source.is_file():
        raise not_a_file(args.file, source)
    if out.exists() or out.is_symlink():
        raise UserError(f"{args.out} exists; convert writes a new folder")
    with sigterm_as_interrupt():  # a killed convert leaves no hidden partial folder, as Ctrl-C
        done = convert_file(source, out, config=args.teacher_config)
    shards = f"{done['shards']} shard{'s' if done['shards'] != 1 else ''}"
    results.print(f"wrote {out}: a diffusers {done['class']} folder ({done['tensors']} tensors, "
                  f"{', '.join(done['dtypes'])}, {shards}); stream it with --teacher {out}")
    return 0


def not_a_file(given: str, source: Path) -> UserError:
    """convert's error for a source that is no file: a folder holding one (the README's layout for a
    single file, config.json beside it) names the file to give; a diffusers folder (its weights or
    shards, a transformer/ or model_index.json) is what stream: true reads already."""
    from compress.stream_files import convertible_files, listed

    if not source.is_dir():
        return UserError(f"{given}: no such file; convert reads a single-file checkpoint")
    files = convertible_files(source)
    if files:
        which = f"the file in it, {files[0]}" if len(files) == 1 else f"one of the files in it ({listed(files)})"
        return UserError(f"{given}: a folder; convert reads a single-file checkpoint: give {which}")
    return UserError(f"{given}: a folder; convert reads a single-file checkpoint (a folder is already what "
                     "stream: true reads)")


def with_lora_noted(files: dict[str, str], model, lora_source: str, scale: float, done: dict) -> dict[str, str]:
    """The copied report and model card of an output that took a LoRA: the report's student_params
    are the merged model's (its grown factors included) and it lists the LoRA (`lora_source`: as the
    config records it) with the layers it left out (removed blocks, text encoder) or stored dense; the
    card says so."""
    from compress.report import param_count

    files, params = dict(files), param_count(model)
    if "report.json" in files:
        try:
            report = json.loads(files["report.json"])
        except ValueError:
            report = None  # a damaged copy stays as it was (inspect says what it cannot use)
        if isinstance(report, dict):
            report["student_params"] = params
            report["loras"] = report.get("loras", []) + [{
                "lora": str(lora_source), "scale": scale, "merged": done["merged"], "rank_added": done["rank_added"],
                "densified": done["densified"], "dropped": done["dropped"], "not_merged": done["not_merged"]}]
            files["report.json"] = json.dumps(report, indent=2, default=str) + "\n"
    if "README.md" in files:
        files["README.md"] += (f"\nA LoRA was merged in afterwards (`dit-compress lora`): `{lora_source}` at scale "
                               f"{scale:g}, {done['merged']} layers; parameters now {params:,}. The per-layer "
                               "numbers in report.json are those of the factorization, before it.\n")
    return files


def lora(args) -> int:
    """A compressed output with a teacher's LoRA merged into it (compress.lora), written as a new
    output folder beside the old one (its recipe, report, block map and model card copied)."""
    import math

    from compress.io_export import save_compressed
    from compress.lora import merge_lora

    source, new = Path(args.out).expanduser(), Path(args.new).expanduser()
    if new.exists() or new.is_symlink():
        raise UserError(f"{args.new} exists; lora writes a new output folder")
    if not math.isfinite(args.scale):
        raise UserError(f"--scale must be a finite number, got {args.scale}")
    if args.scale == 0:
        raise UserError("--scale 0: a scale of 0 merges nothing")
    model = load_transformer(source)
    done = merge_lora(model, args.lora, scale=args.scale, teacher=args.teacher, teacher_config=args.teacher_config)
    files = {name: (source / name).read_text() for name in ("recipe.yaml", "report.json", "block_map.json", "README.md")
             if (source / name).is_file()}
    check_teacher_blocks(model, done["dropped"], files.get("report.json"), args.lora)
    recorded = model.compression_meta["loras"][-1]["source"]  # absolute where local, as config.json records it
    save_compressed(model, new, dtype=_recorded_dtype(source),
                    files=with_lora_noted(files, model, recorded, args.scale, done))
    grown = f", {len(done['rank_added'])} factorized ones by rank {sorted(set(done['rank_added'].values()))}" \
        if done["rank_added"] else ""
    dense = f", {len(done['densified'])} stored dense (grown past break-even)" if done["densified"] else ""
    dropped = f"; {len(done['dropped'])} of its layers were in removed blocks" if done["dropped"] else ""
    results.print(f"wrote {new}: {done['merged']} layers took the LoRA at scale {args.scale:g}{grown}{dense}"
                  f"{dropped} (listed in report.json)")
    return 0


def check_teacher_blocks(model, dropped: list[str], report_text: str | None, lora: str) -> None:
    """A UserError where a LoRA module merge_lora counted as in a removed block is in a block the
    teacher never had: past the teacher's block count, which the output's report.json records (the
    first removal pass's blocks_before) and its block map does not (a removed last block). merge_lora
    checks this itself where the teacher's config is at hand offline (lora.check_teacher_count); this
    is for a teacher that is not (moved, or a Hub id of no shipped config)."""
    from compress.lora_keys import blocks_named, check_blocks

    try:
        removal = json.loads(report_text).get("remove_blocks") if report_text else None
    except (ValueError, AttributeError):
        return  # a damaged report: merge_lora's own checks stand
    runs = (removal.get("passes") or [removal]) if isinstance(removal, dict) else []
    before = runs[0].get("blocks_before") if runs and isinstance(runs[0], dict) else None
    for g in get_adapter(model).groups:
        count = before.get(g.name) if isinstance(before, dict) else None
        if isinstance(count, int):
            check_blocks(g.attr, count, blocks_named(g.attr, dropped), lora)


def _recorded_dtype(out: Path):
    """The dtype the output at `out` records it was exported in (compression.dtype), None where it
    records none: `lora` writes its output in it again, as run did."""
    from compress.io import read_config
    from compress.io_output import as_dtype

    recorded = read_config(output_folder(out) / "config.json").get("compression", {}).get("dtype")
    return as_dtype(recorded) if recorded else None

