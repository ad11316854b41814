"""`dit-compress bench OUT`: teacher vs student time per denoising step, parameters and memory,
reported as ratios measured in one run (torch path on CPU, fused kernels on CUDA)."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import torch
from rich.table import Table

from compress.errors import UserError
from compress.inputs import moved
from compress.io import cast, load_teacher_of
from compress.io_output import load_transformer
from compress.report import param_count, results, to_json
from compress.report_teacher import teacher_to_load, warn_if_teacher_changed


def step_inputs(model, family: str, teacher_source: str, batch: int) -> dict:
    """One denoising step's transformer inputs for `batch` images: 2·batch rows where the pipeline
    runs classifier-free guidance as a doubled batch ([uncond; cond]: PixArt-Σ's and the toys'),
    `batch` rows for Flux.1-dev (guidance-distilled: guidance is an input, one row per image)."""
    from compress.inputs import SyntheticSource, ToySource
    from compress.recipe import CalibrationConfig

    toy = teacher_source.startswith("toy:")
    rows = 2 * batch if toy or family == "pixart" else batch
    calib = CalibrationConfig(heldout=rows, batch_size=rows)
    if toy:
        return ToySource(family, calib).heldout()[0]
    return SyntheticSource(family, calib, model.config).heldout()[0]


def time_steps(models: list, kwargs: dict, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of one forward of each model (after 3 warm-ups), the models timed in turn
    within each repeat (order alternating), so a slowdown from other work on the machine falls on
    all of them alike instead of on whichever ran while it lasted."""
    times = [[] for _ in models]
    with torch.no_grad():
        for i in range(repeats + 3):
            order = range(len(models)) if i % 2 == 0 else reversed(range(len(models)))
            for k in order:
                seconds = _one_forward(models[k], kwargs, device)
                if i >= 3:
                    times[k].append(seconds)
    return [statistics.median(t) for t in times]


def _one_forward(model, kwargs: dict, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


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
    """--device: cpu, cuda or cuda:N (default: cuda if there is one)."""
    if name is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r}: bench runs on cpu, cuda or cuda:N (a GPU's index)")
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return dev


def bench(out: Path, teacher: str | None = None, repeats: int = 20, batch: int = 2,
          device: str | None = None, loras: list[str] | None = None, teacher_config: str | None = None) -> dict:
    """Teacher vs student step time, parameters and memory (`loras`: --lora, where the LoRAs the
    output took are now, io.load_teacher_of; `teacher`, `teacher_config`: --teacher, --teacher-config,
    in place of the recorded ones, report_teacher.recorded_teacher)."""
    out = Path(out).expanduser()
    if not out.is_dir():
        raise UserError(f"{out}: no such output folder (dit-compress bench OUT, OUT written by run)")
    if repeats < 1 or batch < 1:
        raise UserError(f"bench needs --repeats and --batch of at least 1 (got {repeats}, {batch})")
    dev = _device(device)  # before loading: a wrong --device is refused at once, not after the models load
    student = load_transformer(out)  # a UserError unless `out` is an output folder
    source, config = teacher_to_load(out, teacher, teacher_config)
    if not source:
        raise UserError(f"{out}/report.json names no teacher; pass --teacher")
    warn_if_teacher_changed(out, source, "bench")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    student = cast(student, dev, dtype)
    ref = cast(load_teacher_of(student, source, config, loras), dev, dtype)
    from compress.arch import get_adapter

    kwargs = moved(step_inputs(ref, get_adapter(ref).family, source, batch), dev, dtype)
    t_teacher, t_student = time_steps([ref, student], kwargs, repeats, dev)
    mem_t, mem_s = peak_memory(ref, kwargs, dev), peak_memory(student, kwargs, dev)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,  # images per step, as --batch asked
        "rows": int(kwargs["hidden_states"].shape[0]),  # of one forward: 2 per image where CFG doubles them
        "teacher_step_s": t_teacher, "student_step_s": t_student,
        "speedup": t_teacher / t_student,
        "params_ratio": param_count(student) / param_count(ref),
        "weight_bytes_ratio": weight_bytes(student) / weight_bytes(ref),
        "peak_memory_ratio": (mem_s / mem_t) if mem_t else None,
    }


def _faster(speedup: float) -> str:
    """teacher time / student time in words: '1.50× faster' or '1.25× slower', never '0.80× faster',
    and 'about the same speed (1.00×)' where the ratio rounds to 1.00 (not '1.00× slower')."""
    ratio = speedup if speedup >= 1 else 1 / speedup
    if f"{ratio:.2f}" == "1.00":
        return "about the same speed (1.00×)"
    return f"{ratio:.2f}× faster" if speedup >= 1 else f"{ratio:.2f}× slower"


def bench_command(args) -> int:
    result = bench(Path(args.out).expanduser(), args.teacher, args.repeats, args.batch, args.device, args.lora,
                   args.teacher_config)
    if args.json:
        print(to_json(result))
        return 0
    table = Table(title=f"bench {args.out} on {result['device']} ({result['dtype']}, "
                        f"batch {result['batch']}: {result['rows']} rows per step)")
    table.add_column("metric")
    table.add_column("student / teacher", justify="right")
    table.add_row("time per denoising step", f"{1 / result['speedup']:.3f}  ({_faster(result['speedup'])})")
    table.add_row("parameters", f"{result['params_ratio']:.3f}")
    table.add_row("weight memory", f"{result['weight_bytes_ratio']:.3f}")
    if result["peak_memory_ratio"] is not None:
        table.add_row("peak memory", f"{result['peak_memory_ratio']:.3f}")
    results.print(table)
    return 0
