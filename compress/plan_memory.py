"""Whether a run's estimated peak memory fits where it runs: `plan` shows the estimate and warns,
naming the recipe keys that drive it, when it is more than the machine (or the CUDA device) has.

The estimate adds up what `plan` already estimates (calib_footprint): the weights resident
throughout (teacher and student, or a streamed run's top levels and one block), the calibration
activations held while blocks are calibrated, the pipeline's other components (text encoders, VAE)
while a pipeline source samples, where their weights are here to count, and the largest of what a
step holds for a while (sequential calibration's one-row probe, a Fisher's whole-model backward of
one calibration batch with what its taps hold: each target's zero tap and a probe's gradient,
a streamed skip scan's residual streams). A distill pass holds something
else while it trains (the teacher, the chain's base with kd_teacher: base, the student in float32
with its gradients and AdamW's moments):
the peak is the larger of the two. Both add this process itself where it runs on the CPU (python,
torch and diffusers imported, the held-out inputs and the teacher's reference predictions made:
PROCESS_BYTES), and the calibrating phase an svd pass's float64 statistics
(plan_statistics.svd_statistics), the float64 temporaries of factorizing its widest target
(plan_factorize.factorize_bytes) or a block's own output Fisher (fisher: block), and the square roots of its output
Fishers that it keeps, all of one pass (the passes calibrate one after another: plan_statistics.calibrating).
It compares against the device's total memory, not what is free now: the run checks that again
before it starts (runner_memory.warn_if_*). Not counted: CUDA's own context on a GPU, and on a GPU
what the process holds on the host.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress import json_read
from compress import plan_machine  # read through the module: a test's patch of plan_machine holds here too
from compress.calib_footprint import human_size, human_sizes
from compress.passes.svd_fisher_budget import settle_auto
from compress.plan_fisher import fisher_backward, fisher_sweep, on_device
from compress.plan_fisher import part as _part
from compress.plan_statistics import calibrating

# Resident memory of `dit-compress run` as its first pass starts, less the teacher and student weights
# (counted apart): python with torch, diffusers and compress imported (385 MiB), the recipe checked, the
# calibration inputs drawn (toy-pixart prepared: 518 MiB with its 13 MiB of weights), then the held-out
# inputs drawn (+29 MiB: what drawing them leaves, they hold 0.2 MiB) and the teacher's reference
# predictions on them (+18 MiB; malloc_trim gives back 8 MiB of it all). VmRSS as the first pass starts,
# less the weights: toy-pixart 558 MiB, toy-flux 549, toy-pixart-stream 558 (torch 2.13 CPU, diffusers
# 0.42); before, the 500 MiB read before the teacher loads, which left every CPU run's peak low. What
# else a CPU run holds beyond the estimate is mostly freed memory glibc keeps (docs/STREAMING.md).
PROCESS_BYTES = 550 * 2**20
WEIGHTS = "teacher and student weights"  # a resident run's, whose fix is run's advice (resident_advice)


def peak_memory(recipe, plan: dict, calibrates: bool, drawn: bool, passes: list, pipeline_index: dict | None) -> dict:
    """{"bytes": the run's estimated peak, "parts": [{"what", "bytes", "keys", "fix"}] of it,
    "while": None, or "distill trains" when that is the peak, "other": the smaller of the two
    phases' {"bytes", "parts", "while"} (None without distill), "beside": what is not counted, or
    "", "steps_smaller": the parts of what steps hold for a while at other times, less than the one
    counted (an svd pass's statistics and factorizing at a block, a Fisher's backward, ...)} of a
    `make_plan` plan (calibration, backward, stream, passes); calibrates: some pass needs calibration
    (its activations counted); drawn: the run draws calibration inputs at all (plan.draws: a distill on
    teacher samples too), which a pipeline source samples with its text encoders and VAE beside the teacher;
    passes: the recipe's built passes (whether a teacher too big to hold resident streams with them);
    pipeline_index: the model_index.json of the local pipeline folder a pipeline source samples in, as
    make_plan read it (inputs.Sampling; None where there is none).
    Settles fisher_memory_gb auto's sweeps in plan["passes"] (svd_fisher_budget.settle_auto), and takes
    the svd passes' statistics' taps (svd_statistics') out of them as it reads them."""
    held = [_weights(recipe, plan, passes)]
    passing = []  # what a step holds for a while, a list of parts each: the largest counts
    taps = {i: s["statistics"].pop("taps") for i, s in enumerate(plan["passes"]) if "taps" in s.get("statistics", {})}
    held += [_activations(recipe, plan)] if calibrates else []
    resident = sum(p["bytes"] for p in held)  # as an svd pass's walk and Fisher sweeps start (fisher_memory_gb: auto)
    pipeline = _pipeline(recipe, plan, pipeline_index) if drawn else None  # sampled: text encoders, VAE beside the teacher
    for index, step in enumerate(plan["passes"]):
        if "fisher" in step:  # sized at what is free once the weights and activations are there
            step["fisher"] = settle_auto(on_device(step["fisher"], recipe.device), resident)
            sweep, step["fisher"] = fisher_sweep(recipe, plan, index, step["fisher"], taps.get(index, []), resident)
            passing.append([fisher_backward(plan, index, step["fisher"]), sweep])
        if "streamed_scan" in step:
            passing.append([_part("a streamed skip scan's residual streams of one batch",
                                  step["streamed_scan"]["batch_bytes"], ["calibration.batch_size", "teacher"])])
    if calibrates:  # once fisher_memory_gb auto is settled
        passing += calibrating(recipe, plan, taps, resident)
    if pipeline and pipeline["bytes"]:
        passing.append([pipeline["part"]])  # moved there for sampling, with the inputs it captures
    passing = sorted([p for p in passing if p], key=lambda ps: -sum(p["bytes"] for p in ps))
    process = _process(recipe)
    parts = held + process + (passing[0] if passing else [])
    phases = [{"bytes": sum(p["bytes"] for p in parts), "parts": parts, "while": None}]
    if distill := _distill(recipe, plan):
        distill = distill + process
        phases.append({"bytes": sum(p["bytes"] for p in distill), "parts": distill, "while": "distill trains"})
    peak = max(phases, key=lambda p: p["bytes"])
    other = next((p for p in phases if p is not peak), None)
    beside = pipeline.get("note", "") if pipeline and not pipeline["bytes"] else ""  # a folder of 0-parameter parts: none
    return {**peak, "other": other, "beside": beside, "steps_smaller": [p for ps in passing[1:] for p in ps]}


def _process(recipe) -> list[dict]:
    """This process itself where the run computes on the CPU (PROCESS_BYTES); none on a GPU, whose
    memory it is compared with."""
    if plan_machine.device_name(recipe.device).startswith("cuda"):
        return []
    return [_part("this process (python, torch, diffusers)", PROCESS_BYTES, [])]


def _weights(recipe, plan: dict, passes: list) -> dict:
    """The teacher and student whole (their fix: what run's warning advises, runner_memory.resident_advice, for
    the recipe's built `passes`), or a streamed run's top levels and the block at hand."""
    itemsize = plan["calibration"]["itemsize"]  # the compute dtype's
    if plan.get("stream"):  # the teacher's top level and the student's, and the block at hand
        s, copies = plan["stream"], plan["calibration"]["block_copies"]
        params = 2 * s["top_level_params"] + copies * s["largest_block_params"]
        block = "a block" if copies == 1 else "up to two blocks' worth: a block's dense linears beside their factors"
        return _part(f"streamed weights (two top levels and {block})", params * itemsize, ["teacher", "compute_dtype"])
    from compress.runner_memory import resident_advice  # run's warning of a teacher too big: the same words

    return _part(WEIGHTS, 2 * plan["params_before"] * itemsize, ["teacher", "compute_dtype"],
                 resident_advice(plan["teacher"], (passes, recipe.passes), getattr(torch, recipe.compute_dtype)))


def _activations(recipe, plan: dict) -> dict:
    """Calibration's activations at a block: all of them, or one batch when spilled to disk."""
    f, c = plan["calibration"], recipe.calibration
    rows = _row_keys(recipe, f["source"])
    if c.spill_activations:
        keys = ["calibration.batch_size"] + (rows if c.batch_size >= f["rows"] else [])
        return _part("calibration activations (one batch, spilled)", f["batch_bytes"], keys)
    return _part("calibration activations", f["bytes"], rows, "calibration.spill_activations: true")


def _row_keys(recipe, kind: str) -> list[str]:
    """The recipe keys that set how many calibration rows there are and how long they are, of
    calibration inputs of `kind` (make_plan's calibration.source: inputs.source_kind)."""
    c = recipe.calibration
    if kind == "toy":
        return ["calibration.num_prompts", "calibration.timesteps", "calibration.cfg_branches"]
    if kind == "synthetic":
        return ["calibration.num_prompts", "calibration.timesteps"]
    prompts = "calibration.prompt_file" if c.prompt_file else "calibration.prompts"
    return [prompts, "calibration.timesteps", "calibration.cfg_branches", "calibration.height", "calibration.width"]


# ---- distill --------------------------------------------------------------------------------------
def _distill(recipe, plan: dict) -> list[dict] | None:
    """What a distill pass holds per process while it trains (passes/distill_trainer.py):
    the teacher in the compute dtype, and the student cast to float32 master weights (4 bytes a
    parameter) with, for each trained one, its float32 gradient and AdamW's two moments (12 more).
    bf16/fp16 autocast's weight copies (2 bytes) go before the gradients come, so the 16 bound them.
    The student is the one each distill pass trains, as the passes before it leave it (make_plan by
    plan_budget.distill_student: at most, where a budgeted svd pass before it decides its ranks later), the
    largest of them. Not counted: its batches' activations (gradient_checkpointing keeps fewer),
    AdamW's foreach temporaries on a GPU (up to 4 bytes a trained parameter during the step). Per
    process of a one-process or data-parallel run; FSDP shards the student's share across processes.
    A pass with kd_teacher: base holds the chain's base beside them, its weights in the compute dtype as
    the output that read it records their count (report_teacher.chain_base_record; where it records
    none, the teacher's part says it is not counted).
    None without distill."""
    found = [(i, step["student"]) for i, step in enumerate(plan["passes"]) if "student" in step]
    if not found:
        return None
    itemsize = plan["calibration"]["itemsize"]
    base = _chain_base(plan) if any(_kd_base(recipe, i) for i, _ in found) else None

    def held(f) -> int:  # the student's training, and the chain's base beside it (kd_teacher: base)
        return 4 * f[1]["params"] + 12 * f[1]["trained"] + (base["params"] * itemsize if base and _kd_base(recipe, f[0]) else 0)

    i, student = max(found, key=held)
    bound = bool(plan["decided_later"]) or recipe.passes[i].config.train != "all"
    keys = [f"passes.{i}.distill.train"]  # factors / non_factors train fewer
    uncounted = " (not counting the chain's base, kd_teacher: base)" if _kd_base(recipe, i) and not base else ""
    parts = [_part(f"teacher weights{uncounted}", plan["params_before"] * itemsize, ["teacher", "compute_dtype"])]
    if base and _kd_base(recipe, i):
        parts.append(_part(f"the chain's base {base['source']} (kd_teacher: base)", base["params"] * itemsize,
                           [f"passes.{i}.distill.kd_teacher", "compute_dtype"]))
    return parts + [_part(f"the student's float32 weights, gradients and AdamW's moments{' (at most)' if bound else ''}",
                          4 * student["params"] + 12 * student["trained"], keys,
                          "FSDP over several processes (accelerate launch)")]


def _kd_base(recipe, i: int) -> bool:
    """Whether the recipe's pass `i` (a distill) distills toward the chain's base."""
    return getattr(recipe.passes[i].config, "kd_teacher", "teacher") == "base"


def _chain_base(plan: dict) -> dict | None:
    """{source, params} of the chain's base the recipe's teacher leads to (report_teacher.chain_base_record)."""
    from compress.report_teacher import chain_base_record

    return chain_base_record(str(plan["teacher"]))


# ---- the pipeline's other components ----------------------------------------------------------------
def _pipeline(recipe, plan: dict, index: dict | None) -> dict | None:
    """A pipeline source's components but the transformer (text encoders, VAE): calib_pipeline moves
    them to the teacher's device in the compute dtype while calibration samples. Counted from their
    safetensors headers in a local pipeline folder: {"bytes", "part"}; else {"bytes": 0, "note"}
    (a Hub id: their configs are not here); a toy's pipeline (make_plan's calibration.toy_pipeline: toy:NAME,
    or a folder its save_pretrained wrote) its own text encoder and VAE, counted. None for other sources.
    index: the local pipeline folder's model_index.json, as read (peak_memory's)."""
    calib = plan["calibration"]
    if calib["source"] != "pipeline":  # make_plan's source_kind of the recipe's calibration and teacher
        return None
    from compress.toy.weights import toy_component_params

    where = recipe.calibration.pipeline or plan["teacher"]
    params = toy_component_params() if calib["toy_pipeline"] else component_params(where, index)
    if params is None:
        return {"bytes": 0, "note": f"the pipeline's text encoders and VAE ({where}) come on top while "
                                    "calibration samples, not counted"}
    size = params * plan["calibration"]["itemsize"]
    return {"bytes": size, "part": _part("the pipeline's text encoders and VAE while calibration samples", size,
                                         ["calibration.pipeline" if recipe.calibration.pipeline else "teacher"])}


def component_params(source: str, index: dict | None) -> int | None:
    """Parameters of a local pipeline folder's components but the transformer (those its
    model_index.json, read: `index`, lists), from their safetensors headers (a variant's,
    model.fp16.safetensors, only where there is no plain one); None where not a local pipeline
    folder (no `index`) or a component has no safetensors. (A toy's pipeline is counted by
    toy_component_params: a folder its save_pretrained wrote holds neither its text encoder nor its VAE.)"""
    from compress.runner_memory import checkpoint_numel

    if index is None:
        return None
    folder = Path(source).expanduser()
    total = 0
    for name, value in index.items():
        if name == "transformer" or not isinstance(value, list) or None in value or not (folder / name).is_dir():
            continue
        files = component_files(folder / name)
        if files is None or (not files and any((folder / name).glob("*.bin"))):
            return None
        total += checkpoint_numel({str(f): f for f in files}) if files else 0
    return total


def component_files(folder: Path) -> list[Path] | None:
    """The safetensors files a component's from_pretrained reads: the shards its index names (not a
    single file beside them), else its plain files, else one variant's (model.fp16.safetensors);
    None where its index cannot be read."""
    indexes = sorted(folder.glob("*.safetensors.index*.json"))
    index = next((i for i in indexes if i.name.count(".") == 3), indexes[0] if indexes else None)  # plain first
    if index is not None:
        try:
            return [folder / n for n in sorted(set(json_read.read(index)["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if f.name.count(".") == 1]
    variants = sorted({f.name.split(".")[1] for f in files if f.name.count(".") == 2})
    return plain or [f for f in files if variants and f.name.count(".") == 2 and f.name.split(".")[1] == variants[0]]


# ---- words --------------------------------------------------------------------------------------
def memory_words(memory: dict) -> str:
    """The peak estimate on a line: its total and what it is made of, the other phase's (distill's,
    or the calibrating one's), and what is not counted."""
    words = f"memory: about {human_size(memory['bytes'])} at the run's peak{_phase(memory)}"
    if other := memory.get("other"):
        when = f"while {other['while']}" if other["while"] else "before distill"
        words += f"; {when}: about {human_size(other['bytes'])}{_phase(other, False)}"
    return words + (f"; {memory['beside']}" if memory.get("beside") else "")


def _phase(phase: dict, named: bool = True) -> str:
    parts = ", ".join(f"{p['what']} {human_size(p['bytes'])}" for p in phase["parts"])
    if phase.get("while"):
        parts += "; per process, its batches' activations not counted"
        return f"{', while ' + phase['while'] if named else ''} ({parts})"
    return f" ({parts})"


def _drives(part: dict) -> str:
    """' (the keys that drive a part; or the setting that holds less)', or '' for neither; the teacher and
    student weights' fix (run's advice, runner_memory.resident_advice: a sentence of its own) without the 'or'."""
    fix = part["fix"] if part["what"] == WEIGHTS or not part["fix"] else f"or {part['fix']}"
    words = "; ".join(w for w in (", ".join(part["keys"]), fix) if w)
    return f" ({words})" if words else ""


def beyond_memory(memory: dict, have: tuple[int, str] | None) -> str | None:
    """A one-line warning when the estimated peak is more than `have` (plan_machine.device_memory): the parts
    that make most of it, each with the keys that drive it; None when it fits or is unknown."""
    if have is None or memory["bytes"] <= have[0]:
        return None
    drivers = "; ".join(f"{p['what']} {human_size(p['bytes'])}{_drives(p)}" for p in _big(memory))
    peak, room = human_sizes(memory["bytes"], have[0])
    return f"the run would hold about {peak} at its peak, more than the {room} {have[1]} has: {drivers}"


def _big(memory: dict) -> list[dict]:
    """The parts that make most of the peak: each a tenth of it or more (else the largest), largest first."""
    big = sorted(memory["parts"], key=lambda p: -p["bytes"])
    return [p for p in big if p["bytes"] >= memory["bytes"] / 10] or big[:1]


def memory_where(recipe, memory: dict, teacher_given: bool = False) -> str:
    """'PATH:LINE' (or 'PATH (--set KEY)') of the recipe key that drives the estimated peak most: the
    first key of its largest parts the recipe (or a --set) gives; PATH where it gives none of them
    (defaults). teacher_given: --teacher named the teacher, so the recipe's `teacher:` line drives nothing."""
    from compress.recipe_where import recipe_where

    for part in _big(memory):
        for key in part["keys"]:
            if key in getattr(recipe, "keys", {}) and not (key == "teacher" and teacher_given):
                return recipe_where(recipe, key)
    return recipe.path


def beyond_disk(recipe, memory: dict, run_dir: Path) -> str | None:
    """The words of `run`'s refusal, before it loads the teacher, of an estimated peak (`memory`: peak_memory's) more
    than the memory there is (this machine's, and a CUDA device's beside it where the run computes on one)
    and the disk free under `run_dir` together. calibration.spill_activations moves at most the
    calibration activations to that disk and the rest of the peak stays in memory, so such a peak fits
    whatever the recipe spills in no way: the run would only fail once its passes had computed, out of
    memory or of disk. A bound of what cannot fit, not a guess (as a factor of the memory would be):
    a peak a spill could bring within memory is only warned (beyond_memory). None where it fits, or where
    the memory or the free disk is unknown. plan says them too (make_plan's memory.refusal)."""
    from compress.runner_memory import free_bytes

    swap = plan_machine.machine_swap()
    room = [plan_machine.machine_memory(), swap]  # (cgroup-limited; its swap where none binds)
    if plan_machine.device_name(recipe.device).startswith("cuda"):  # and the GPU's where the run computes
        room.append((plan_machine.device_memory(recipe.device) or (None,))[0])
    disk = free_bytes(run_dir)
    if None in room or disk is None or memory["bytes"] <= sum(room) + disk:
        return None
    # each part with the keys that drive it and what holds less (stream: true for the weights), but no spill
    drivers = "; ".join(f"{p['what']} {human_size(p['bytes'])}{_drives(dict(p, fix=_unspilled(p['fix'])))}"
                        for p in _big(memory))
    swapped = f", {human_size(swap)} of it swap" if swap else ""
    peak, both = human_sizes(memory["bytes"], sum(room) + disk)  # so they differ as they do
    return (f"as written, the run would hold about {peak} at its peak, more than the memory there is "
            f"({human_size(sum(room))}{swapped}) and the disk free under {run_dir} ({human_size(disk)}), {both} "
            f"together, which no calibration.spill_activations: true changes: {drivers}")


def _unspilled(fix: str) -> str:
    """A part's `fix`, unless it is to spill (beyond_disk's peak holds more than a spill moves)."""
    return "" if "spill_activations" in fix else fix
