"""`dit-compress bench OUT`: teacher vs student time per denoising step, parameters and memory,
reported as ratios measured in one run (torch path on CPU, fused kernels on CUDA)."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
from rich.table import Table

from compress.calib_footprint import human_sizes
from compress.devices import device_refused, unusable
from compress.errors import UserError, not_at_least_one
from compress.inputs import moved
from compress.io import cast
from compress.io_output import load_transformer, output_folder
from compress.io_teacher_of import load_teacher_of
from compress.measured_against import against, teacher_fields, teacher_loras
from compress.progress import LOG_EVERY_S, status, tenths
from compress.recipe_where import option_where
from compress.report import note, param_count, results, to_json
from compress.report_teacher import teacher_to_load, toy_base, warn_if_teacher_changed
from compress.words import counted


def step_inputs(model, family: str, teacher_source: str, batch: int) -> dict:
    """One denoising step's transformer inputs for `batch` images: 2·batch rows where the pipeline
    runs classifier-free guidance as a doubled batch ([uncond; cond]: PixArt-Σ's and the toys'),
    `batch` rows for Flux.1-dev (guidance-distilled: guidance is an input, one row per image)."""
    from compress.inputs import SyntheticSource, ToySource
    from compress.recipe import CalibrationConfig

    toy = toy_base(teacher_source) is not None  # a toy, or an output whose chain of teachers starts at one
    rows = 2 * batch if toy or family == "pixart" else batch
    calib = CalibrationConfig(heldout=rows, batch_size=rows)
    if toy:
        return ToySource(family, calib).heldout()[0]
    return SyntheticSource(family, calib, model.config).heldout()[0]


def input_bytes(model, family: str, teacher_source: str, batch: int, dtype: torch.dtype) -> int:
    """Bytes of step_inputs for `batch` images with its floating tensors in `dtype`, from those of
    1 and 2 images: each input is either rows × a fixed size or fixed (ids), so this is exact."""
    one, two = (sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
                    for t in step_inputs(model, family, teacher_source, n).values() if torch.is_tensor(t))
                for n in (1, 2))
    return one + (batch - 1) * (two - one)


def check_batch_fits(model, family: str, teacher_source: str, batch: int, device: torch.device,
                     dtype: torch.dtype) -> None:
    """A --batch whose step inputs alone are more than the memory holding them is a UserError before
    the teacher loads (it ran out of memory minutes later): built in float32 in this machine's memory,
    then on a GPU its copy in `dtype`. Weights and activations come on top: a batch that passes may
    still run out."""
    from compress.plan_machine import device_memory

    for where, in_dtype in {"cpu": torch.float32, str(device): dtype}.items():
        need, have = input_bytes(model, family, teacher_source, batch, in_dtype), device_memory(where)
        if have is not None and need > have[0]:
            need_words, have_words = human_sizes(need, have[0])
            raise UserError(f"--batch {batch}: one step's inputs alone take {need_words}, more than the "
                            f"{have_words} of memory of {have[1]}; give a smaller --batch")


def time_steps(models: list, kwargs: dict, repeats: int, device: torch.device, status=None) -> list[list[float]]:
    """Seconds of each of `repeats` timed forwards of each model (after 3 warm-ups), the models
    timed in turn within each repeat (order alternating), so a slowdown from other work on the
    machine falls on all of them alike instead of on whichever ran while it lasted: the i-th times
    of two models ran side by side (step_ratios compares them so). `status`: a progress.status that
    says which step runs (minutes of silence otherwise for a real model on a CPU): each warm-up, then
    the first timed step of each tenth or LOG_EVERY_S after the last said (a line each in a log)."""
    times = [[] for _ in models]
    said = -math.inf
    with torch.no_grad():
        for i in range(repeats + 3):
            if status is not None and (_a_tenth(i - 2, repeats) or time.monotonic() - said >= LOG_EVERY_S):
                said = time.monotonic()
                status.update(f"bench: warm-up step {i + 1} of 3" if i < 3 else
                              f"bench: timed step {i - 2} of {repeats} of each model")
            order = range(len(models)) if i % 2 == 0 else reversed(range(len(models)))
            for k in order:
                seconds = _one_forward(models[k], kwargs, device)
                if i >= 3:
                    times[k].append(seconds)
    return times


def _a_tenth(step: int, repeats: int) -> bool:
    """Whether timed step `step` (1-based; warm-ups 0 and below) is a warm-up, the first, or the first
    of a further tenth of `repeats` (20: steps 1, 2, 4, .., 20; 1000: 1, 100, .., 1000)."""
    return step <= 1 or tenths(step, repeats) > tenths(step - 1, repeats)


WIDE = 0.2  # an interquartile range of the per-step ratios above this fraction of their median: uncertain


def step_ratios(teacher: list[float], student: list[float]) -> dict:
    """The speedup (teacher time / student time) of each pair of steps timed side by side: its
    median, quartiles and range, the interquartile range as a fraction of the median (`spread`),
    and a note where that spread is wide (other work on the machine slowed some steps)."""
    ratios = sorted(t / s if s > 0 else math.inf for t, s in zip(teacher, student))  # (repeats,)
    median = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    measured = len(ratios) > 1 and math.isfinite(q3) and median > 0  # one step has no spread
    spread = (q3 - q1) / median if measured else None
    note = None
    if spread is not None and spread > WIDE:
        note = (f"the per-step speedups spread widely (middle half {q1:.2f}× to {q3:.2f}×, {spread:.0%} of the "
                f"median {median:.2f}×; all {ratios[0]:.2f}× to {ratios[-1]:.2f}×): other work slowed some steps, "
                "so the ratio is uncertain; rerun on an idle machine")
    return {"median": median, "quartiles": [q1, q3], "range": [ratios[0], ratios[-1]], "spread": spread,
            "note": note}


def _one_forward(model, kwargs: dict, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def weight_bytes(model) -> int:
    """Bytes of `model`'s parameters and buffers in memory (peak_memory's resident weights)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def stored_bytes(model) -> int:
    """Bytes of the tensors `model`'s files hold: its state_dict (parameters and persistent buffers),
    what the export writes and save_pretrained writes of a teacher. Not a buffer the model rebuilds
    when it loads (PixArt's sincos pos_embed table, non-persistent), which weight_bytes counts."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def stored_dtype(model) -> str:
    """The dtype of a model's floating weights as loaded ('float16'; 'bfloat16+float32' where mixed):
    what its weight bytes were counted in."""
    names = {str(t.dtype).removeprefix("torch.") for t in model.parameters() if t.is_floating_point()}
    return "+".join(sorted(names))


def peak_memory(model, kwargs, device) -> int | None:
    """Bytes one forward of `model` peaks at on a GPU: its weights and buffers plus what the forward
    allocates above what was there before it. Teacher and student are both resident while bench
    runs, so the raw allocator peak would count the other model's weights in each and pull the
    ratio towards 1."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)  # both models and the inputs
    with torch.no_grad():
        model(**kwargs)
    return weight_bytes(model) + torch.cuda.max_memory_allocated(device) - resident


def _device(name: str | None) -> torch.device:
    """--device: cpu, cuda or cuda:N (default: cuda if there is one), as a recipe's device
    (devices.device_refused, devices.unusable) but auto: the default is bench's auto."""
    auto = _AUTO.get(str(name).strip().lower(), "")  # Auto, AUTO too
    if name is not None and (refused := device_refused(name, "--device", ("cpu", "cuda"), auto)):
        raise UserError(refused)
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if why := unusable(dev):
        raise UserError(f"--device {name}, but {why}" + ("; use --device cpu" if not torch.cuda.is_available() else ""))
    return dev


_AUTO = {"auto": "; leave --device out for cuda where torch sees a GPU, else cpu"}  # a recipe's auto


def bench(out: str | Path, teacher: str | None = None, repeats: int = 20, batch: int = 2,
          device: str | None = None, loras: list[str] | None = None, teacher_config: str | None = None) -> dict:
    """Teacher vs student step time, parameters and memory (`loras`: --lora, where the LoRAs the
    output took are now, io_teacher_of.load_teacher_of; `teacher`, `teacher_config`: --teacher, --teacher-config,
    in place of the recorded ones, report_teacher.recorded_teacher)."""
    from compress.arch import get_adapter
    from compress.commands import given_output

    given = out  # its lines name `given`: a Hub id, not the snapshot
    out = output_folder(given_output(out, "bench"))  # a pipeline folder: its transformer/, as inspect, eval
    for name, value in (("--repeats", repeats), ("--batch", batch)):
        if value < 1:
            raise UserError(not_at_least_one(name, value))
    dev = _device(device)  # before loading: a wrong --device is refused at once, not after the models load
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    # the loading's status on a terminal only: its UserErrors (a damaged output, a moved LoRA) are one line
    with status(f"bench: loading {given}", log=False) as loading:
        student = load_transformer(out)  # a UserError unless `out` is an output folder
        source, config = teacher_to_load(out, teacher, teacher_config)
        if not source:
            raise UserError(f"{out}/report.json names no teacher; pass --teacher")
        warn_if_teacher_changed(out, source, "bench")
        family = get_adapter(student).family
        check_batch_fits(student, family, source, batch, dev, dtype)  # before the teacher loads
        loading.update(f"bench: loading the teacher {source}")
        stored = stored_bytes(student), stored_dtype(student)  # as exported (export.dtype), before the cast
        ref = load_teacher_of(student, source, config, loras, dtype=None, where=option_where(teacher))  # as stored
        named = teacher_fields(source, teacher, teacher_loras(student, loras))  # with the LoRAs it took
        ref_stored = stored_bytes(ref), stored_dtype(ref)
        student, ref = cast(student, dev, dtype), cast(ref, dev, dtype)
        kwargs = moved(step_inputs(ref, family, source, batch), dev, dtype)
    with status(f"bench: timing {given} against the teacher {source}") as said:  # a line each off a terminal (a log)
        t_teacher, t_student = time_steps([ref, student], kwargs, repeats, dev, said)  # (repeats,) each
        if dev.type == "cuda":  # peak_memory measures on a GPU only
            said.update("bench: peak memory of one step")
        mem_t, mem_s = peak_memory(ref, kwargs, dev), peak_memory(student, kwargs, dev)
    return {
        **named,  # which teacher (and LoRAs), and whether --teacher or the output's record named it
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,  # images per step, as --batch asked
        "rows": int(kwargs["hidden_states"].shape[0]),  # of one forward: 2 per image where CFG doubles them
        "teacher_step_s": statistics.median(t_teacher), "student_step_s": statistics.median(t_student),
        **_speedup(step_ratios(t_teacher, t_student)),
        "params_ratio": param_count(student) / param_count(ref),
        "weight_bytes_ratio": stored[0] / ref_stored[0],  # the tensors the files hold (export.dtype vs the teacher's)
        "student_stored_dtype": stored[1], "teacher_stored_dtype": ref_stored[1],
        "peak_memory_ratio": (mem_s / mem_t) if mem_t else None,
    }


def _speedup(ratios: dict) -> dict:
    """bench's keys for step_ratios: speedup (the median of the per-step ratios, which can differ from
    teacher_step_s / student_step_s, the ratio of the medians) and its spread."""
    return {"speedup": ratios["median"], "speedup_quartiles": ratios["quartiles"],
            "speedup_range": ratios["range"], "speedup_spread": ratios["spread"], "timing_note": ratios["note"]}


def _faster(speedup: float) -> str:
    """teacher time / student time in words: '1.50× faster' or '1.25× slower', never '0.80× faster',
    and 'about the same speed (1.00×)' where the ratio rounds to 1.00 (not '1.00× slower')."""
    ratio = speedup if speedup >= 1 else 1 / speedup
    if f"{ratio:.2f}" == "1.00":
        return "about the same speed (1.00×)"
    return f"{ratio:.2f}× faster" if speedup >= 1 else f"{ratio:.2f}× slower"


def _middle_half(result: dict) -> str:
    """The per-step speedups' quartiles as student / teacher times: '0.480–0.520' (one number where
    they round alike)."""
    low, high = (f"{1 / q:.3f}" if q else "inf" for q in reversed(result["speedup_quartiles"]))  # (a 0 s teacher step)
    return low if low == high else f"{low}–{high}"


def bench_command(args) -> int:
    result = bench(args.out, args.teacher, args.repeats, args.batch, args.device, args.lora,
                   args.teacher_config)
    if result["timing_note"]:  # on stderr, as every note: --json keeps it too
        note(result["timing_note"])
    if args.json:
        print(to_json(result))
        return 0
    results.print(f"{args.out}: timed {against(result, args.out)}", markup=False, highlight=False)
    table = Table(title=f"bench {args.out} on {result['device']} ({result['dtype']}, "
                        f"batch {result['batch']}: {counted(result['rows'], 'row')} per step)")
    table.add_column("metric")
    table.add_column("student / teacher", justify="right")
    table.add_row("time per denoising step", f"{1 / result['speedup']:.3f}  ({_faster(result['speedup'])})")
    if result["speedup_spread"] is not None:  # of two steps or more
        table.add_row("  middle half of the steps", _middle_half(result))
    table.add_row("parameters", f"{result['params_ratio']:.3f}")
    table.add_row("weight memory, as stored", f"{result['weight_bytes_ratio']:.3f}  "
                                              f"({result['student_stored_dtype']} / {result['teacher_stored_dtype']})")
    if result["peak_memory_ratio"] is not None:
        table.add_row("peak memory", f"{result['peak_memory_ratio']:.3f}")
    results.print(table)
    return 0
