"""`dit-compress importance`: its source (a recipe, or a toy teacher scanned directly) and settings
checked before the teacher loads, the teacher and its calibration inputs, the scan printed."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

from compress.errors import NumericError, UserError
from compress.interrupts import interrupts_held
from compress.output_names import is_output
from compress.recipe_teacher_config import teacher_config_of
from compress.report import console, output_file, results, to_json
from compress.report_teacher import recorded_teacher, toy_base
from compress.words import counted


def _is_recipe(source: str) -> bool:
    """A .yaml / .yml path, or a pipe (`<(cat r.yaml)`, /dev/stdin of one): a teacher is never one, and plan and run
    read a recipe from it (F9 stop 51)."""
    from compress.recipe_folder import special_kind

    return source.endswith((".yaml", ".yml")) or special_kind(Path(source).expanduser()) == "a pipe"


def _importance_recipe(source: str, overrides: list[str]):
    """The recipe `source` names (with `overrides`, --set), every check of it made before torch's and
    diffusers' start-up (seconds): a mistyped recipe is refused in a moment; None where `source` is
    not a recipe (_check_toy_source)."""
    from compress.recipe import load_recipe

    return load_recipe(source, overrides, command="importance") if _is_recipe(source) else None


def _check_toy_source(source: str, teacher_arg: str | None, config_arg: str | None, overrides: list[str]) -> None:
    """`source`, not a recipe, is a toy teacher scanned directly (what the scan needs to know, its
    settings and the family, is known before the teacher loads), with no option that changes a recipe."""
    from compress.io_source import looks_local

    if looks_local(source) and not Path(source).expanduser().exists():
        from compress.recipe_folder import meant_recipe
        from compress.recipe_shipped import shipped_hint

        meant = meant_recipe(Path(source)) or shipped_hint(source, "importance")
        raise UserError(f"{source}: no such recipe or teacher{meant}")  # recipes/toy-pixart
    _check_teacher_or_recipe(source)
    if not source.startswith("toy:"):
        raise UserError(f"{source}: a real teacher is scanned on its pipeline's samples of the "
                        "prompts a recipe gives; pass a recipe whose teacher it is "
                        "(dit-compress importance RECIPE)")
    _check_no_recipe_options(source, teacher_arg, config_arg, overrides)


def _teacher_and_inputs(source: str, recipe, teacher_arg: str | None = None, config_arg: str | None = None):
    """(teacher source, teacher model, input source, block loader) from a recipe (None: `source` is
    a toy teacher, _check_toy_source); the loader (compress.stream.CheckpointBlocks) is None unless
    the recipe streams. `teacher_arg`, `config_arg`: --teacher, --teacher-config of a recipe, as
    plan and run take them."""
    from compress.arch import get_adapter
    from compress.eval_errors import read_only_streams
    from compress.inputs import check_pipeline_packages, input_source
    from compress.io import cast, load_teacher
    from compress.recipe import CalibrationConfig
    from compress.runner_setup import load_checked_teacher, resolve_device

    loader = None
    if recipe is not None:
        check_pipeline_packages(recipe, teacher_arg)  # before a hub teacher downloads
        device = resolve_device(recipe)  # the scan runs where the recipe's passes would
        if recipe.stream:  # as its run would: the top level resident, blocks read as they run
            models = read_only_streams(recipe, device)
            teacher_source, teacher = load_checked_teacher(recipe, teacher_arg, config_arg, models=models)
            loader = models.loaders[id(teacher)]
        else:
            from compress.runner import DTYPES
            from compress.runner_memory import warn_if_too_big

            warn_if_too_big(teacher_arg or recipe.teacher, DTYPES[recipe.compute_dtype], device, student=False)
            teacher_source, teacher = load_checked_teacher(recipe, teacher_arg, config_arg)
            teacher = cast(teacher, device)
        calib, recipe_dir = recipe.calibration, Path(source).parent
    else:
        teacher_source, teacher = source, load_teacher(source, config_key="--teacher-config").eval()
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
    dit-compress output (its folder or its weight file): that says how to scan its teacher; nor a
    path there that is no file nor folder (/dev/zero, a pipe: recipe_folder.special_kind)."""
    from compress.io_source import check_source, check_suffix, output_weights
    from compress.recipe_folder import special_kind

    path = Path(source).expanduser()
    if kind := special_kind(path):  # /dev/zero: there, but no file (check_source said 'there is no /dev/zero')
        raise UserError(f"{source}: {kind}, neither a recipe (a YAML file) nor a teacher (a folder or a checkpoint "
                        "file, a Hub id or toy:NAME)")
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
    toy = toy_base(teacher) if teacher else None  # its teacher, or the first of an output's chain of them
    if toy:
        words += f", or the toy teacher itself (dit-compress importance {toy})"
    return words


def _recipe_teacher(recipe: Path) -> str | None:
    """The `teacher:` an output's recipe copy names ('' where it names none), or None where there is
    no copy or it does not read."""
    import yaml

    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return str(data.get("teacher") or "") if isinstance(data, dict) else None


def _same_teacher(a: str, b: str) -> bool:
    """Two teacher sources name the same one (local paths compared resolved)."""
    from compress.report_teacher import absolute_source

    return absolute_source(a) == absolute_source(b)


def importance(args) -> int:
    to_stdout = args.json == "-"  # the scan as JSON on standard output, in place of the table
    json_path = output_file(args.json, "--json") if args.json is not None and not to_stdout else None  # before the scan
    png = output_file(args.png, "--png", figure=True) if args.png is not None else None
    recipe = _importance_recipe(args.source, args.overrides)  # None: a toy teacher
    with interrupts_held():  # that start-up, a Ctrl-C held to its end (as cli.held_imports)
        from compress.arch import get_adapter
        from compress.passes.importance import save_json, scan
        from compress.passes.importance_report import plot_heatmap, render_table
        from compress.stream import streamed
    if recipe is None:
        _check_toy_source(args.source, args.teacher, args.teacher_config, args.overrides)
    config = _importance_config(recipe, args.buckets, args.teacher)  # before the teacher loads
    if png is None and not to_stdout:  # --json -: a heatmap only where --png asks (none left in the working folder)
        png = _default_png(recipe.model if recipe is not None else args.source[len("toy:"):])
    config_arg = teacher_config_of(recipe, args.teacher_config, args.teacher) if recipe is not None else args.teacher_config
    _, teacher, inputs, loader = _teacher_and_inputs(args.source, recipe, args.teacher, config_arg)
    adapter = get_adapter(teacher)
    with streamed(teacher, loader) if loader is not None else nullcontext():  # pipeline sampling
        batches = inputs.calibration()
    result = scan(teacher, adapter, batches, buckets=config.buckets, progress=config.progress,
                  skips=not config.proxy_only, loader=loader)
    if not config.proxy_only:
        dtype = recipe.compute_dtype if recipe is not None else "float32"  # a toy teacher loads in float32
        _check_scan(result, teacher, adapter, batches, dtype, loader)
    if to_stdout:
        print(to_json(result.to_dict()))
    else:
        results.print(render_table(result, width=results.width, json_file=json_path and str(json_path)))
    if png is not None:
        console.print(f"wrote {plot_heatmap(result, png)}")
    if json_path:
        console.print(f"wrote {save_json(result, json_path)}")
    return 0


def _check_scan(result, teacher, adapter, batches: list[dict], dtype: str, loader) -> None:
    """Skip errors that came out NaN/Inf are a NumericError saying why, as `run` says it: the teacher's
    own prediction holds NaN/Inf (the layer where it first appears, and what to try) or skipping a block
    makes it (that block), never a table of '-' under the proxy's heading. Only then is anything rerun."""
    bad = [b for b in result.blocks if not math.isfinite(b.scan)]
    if not bad:
        return
    from compress.inputs import moved
    from compress.passes.base import predictions
    from compress.runner_setup import check_reference, locate
    from compress.stream import streamed

    resident = next(p for p in teacher.parameters() if p.device.type != "meta")
    batches = [moved(b, resident.device, resident.dtype) for b in batches]
    with streamed(teacher, loader) if loader is not None else nullcontext():
        reference = predictions(teacher, adapter, batches)
        check_reference(reference, dtype, lambda b: locate(teacher, adapter, batches[b]), "calibration")
    if not any(bool(r.any()) for r in reference):  # 0/0: not NaN/Inf, and no error relative to it
        raise NumericError("importance: the teacher predicts 0 on every calibration input, so no skip error "
                           "can be measured relative to it (an untrained checkpoint?)")
    names = ", ".join(adapter.block_prefix(b.group, b.index)[:-1] for b in bad[:3]) + (" …" if len(bad) > 3 else "")
    raise NumericError(f"importance: skipping {names} makes the teacher's prediction hold NaN/Inf in compute_dtype "
                       f"{dtype} (with every block it is finite), so its skip error cannot be measured"
                       + ("; try bfloat16 or float32" if dtype == "float16" else ""))


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
        fewer = levels if levels == 1 else f"{levels} or fewer"
        raise UserError(f"--buckets {buckets}: more buckets than the {counted(levels, 'noise level')} the calibration "
                        f"inputs hold ({how}); pass --buckets {fewer}, or {more}")
    return dataclasses.replace(config, buckets=buckets)


def _noise_levels(recipe, teacher_arg: str | None) -> tuple[int, str]:
    """(how many distinct noise levels the scan's calibration inputs hold at most, how, in words):
    inputs.noise_levels of the recipe's calibration (a toy teacher: the defaults)."""
    from compress.inputs import noise_levels, source_kind
    from compress.recipe import CalibrationConfig

    calib = recipe.calibration if recipe is not None else CalibrationConfig()
    teacher = teacher_arg or (recipe.teacher if recipe is not None else "toy:")
    return noise_levels(calib, source_kind(calib, teacher))


def _default_png(family: str) -> Path:
    """importance-<family>.png in the working folder, where the heatmap goes without --png; checked
    before the teacher loads, an error naming that file and --png (the user gave no --png), its folder
    by its full path. Said as run says its default out/NAME, relative to the working folder (it said
    'wrote /home/.../importance-pixart.png', where a --png is said as given)."""
    from compress.output_names import as_typed

    name = f"importance-{family}.png"
    return as_typed(output_file(Path.cwd() / name, f"the heatmap {name} (the default; --png PATH writes it "
                                                   "elsewhere)", figure=True))
