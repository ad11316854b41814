"""Memory and disk a run needs, against what is free where it runs: the warnings before a run (a
teacher too big to hold resident, calibration activations, a streamed run's top levels and one block,
a streamed run's copies on disk) and what they measure (free memory, a checkpoint's size from its
safetensors headers, free disk). plan reads the same free memory (plan_fisher, svd_fisher_budget).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from compress.calib_footprint import human_size, human_sizes
from compress.errors import UserError
from compress.io import transformer_folder
from compress.output_names import is_output_teacher
from compress.stream_files import opened, weight_map
from compress.stream_refusals import stream_advice

def warn_if_too_big(source: str, dtype: torch.dtype, device: torch.device = torch.device("cpu"),
                    student: bool = True, passes: tuple | None = None) -> None:
    """Before loading a local teacher whole: say so if it (and its student copy) would not fit in
    the memory available now on `device` (on the CPU loading would end in the kernel's OOM killer,
    without a message), with what would help (`too_big_advice`; passes: the run's (passes, specs), None
    for importance's scan, which streams whatever the recipe's passes)."""
    need, have = resident_bytes(source, dtype), free_memory(device)
    need = need if need is None or student else need // 2
    if need is None or have is None or need <= have:
        return
    from compress.report import warn

    where = f"free on {device}" if device.type == "cuda" else "available"
    who = "teacher and student need" if student else "the teacher needs"
    need_words, have_words = human_sizes(need, have)
    warn(f"{who} about {need_words} in {str(dtype).removeprefix('torch.')}, and "
         f"{have_words} are {where}; {resident_advice(source, passes, dtype)}")


def resident_advice(source: str, passes: tuple | None, dtype: torch.dtype) -> str:
    """What lets teacher `source` and its student fit where they are too big to hold resident in `dtype`
    (`too_big_advice`, of a local dit-compress output or not; passes: (passes, specs), None for importance's
    scan): the one rule of run's warning and plan's 'teacher and student weights' (plan_memory)."""
    return too_big_advice(passes, dtype, is_output_teacher(source))


OUTPUT_HELD_WHOLE = "a dit-compress output is held whole (stream: true does not read its factorized layers)"


def too_big_advice(passes: tuple | None, dtype: torch.dtype, output: bool = False) -> str:
    """What lets a teacher too big to hold resident fit: stream: true where the run's passes (`passes`:
    (passes, specs)) stream (stream_refusals.stream_advice, with the values some key must take; --set
    stream=true for importance's scan, `passes` None) and the teacher is no dit-compress `output` (which
    stream: true refuses, stream_files.streamed_output), a 2-byte compute_dtype from float32, else more memory."""
    if output:
        streams, words = False, OUTPUT_HELD_WHOLE
    else:
        streams, words = (True, "pass --set stream=true (the scan reads one block at a time)") if passes is None \
            else stream_advice(*passes)
    smaller = "compute_dtype: bfloat16" if dtype.itemsize > 2 else None
    if streams:
        return f"{words}{', or ' + smaller if smaller else ''}"
    return f"{words}: {'set ' + smaller + ', or ' if smaller else ''}run where more memory is free"


def warn_if_activations_too_big(footprint: dict, device: torch.device, spilled: bool) -> None:
    """Before a run: say so if calibration's activations (calib_footprint) would take more than
    half the memory free on `device` while they are not spilled to disk."""
    have = free_memory(device)
    if spilled or have is None or footprint["bytes"] <= have / 2:
        return
    from compress.calib_footprint import describe
    from compress.report import warn

    warn(f"{describe(footprint)}; {human_size(have)} are free on {device}: set "
         "calibration.spill_activations: true (or fewer prompts, or compute_dtype: bfloat16)")


NO_ACTIVATIONS = {"bytes": 0, "batch_bytes": 0}  # a footprint where no pass calibrates: the weights alone


def warn_if_streamed_too_big(weights: dict, footprint: dict, dtype: torch.dtype, device: torch.device,
                             spilled: bool) -> None:
    """Before a streamed run: say so if what it holds at once on `device` would not fit the memory
    free there: teacher's and student's top levels, the largest block (twice under within-block
    sequential calibration, with its one-row dependency probe), and the calibration activations (one
    batch of them when spilled). weights: `streamed_weights`; footprint: a calib_footprint.footprint."""
    copies = footprint.get("block_copies", 1)  # 2: within-block sequential keeps the dense block too
    params = 2 * weights["top_level_params"] + copies * weights["largest_block_params"]
    need = params * dtype.itemsize + footprint["batch_bytes" if spilled else "bytes"] + footprint.get("probe_bytes", 0)
    have = free_memory(device)
    if have is None or need <= have:
        return
    from compress.report import warn

    block = "one block" if copies == 1 else "one block dense and factorized"
    need_words, have_words = human_sizes(need, have)
    if footprint["bytes"]:
        warn(f"a streamed run holds about {need_words} on {device} (two top levels, {block} and the "
             f"calibration activations), and {have_words} are free there: set "
             "calibration.spill_activations: true, compute_dtype: bfloat16, or fewer prompts")
        return
    smaller = "set compute_dtype: bfloat16, or " if dtype.itemsize > 2 else ""
    warn(f"a streamed run holds about {need_words} on {device} (two top levels and {block}; no "
         f"pass calibrates), and {have_words} are free there: {smaller}run where more memory is free")


def free_memory(device: torch.device) -> int | None:
    """Memory free now: on a GPU what the driver has free plus what torch's caching allocator holds
    unused; else the machine's MemAvailable (None where unknown)."""
    if device.type != "cuda":
        return available_bytes()
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


def resident_bytes(source: str, dtype: torch.dtype) -> int | None:
    """Bytes of a teacher and its student copy in `dtype`, from its safetensors headers (local
    folders only; None when unknown). A dit-compress output's tensors are its factorized layers' down
    and up as stored (which checkpoint_of refuses, for streaming): load_teacher casts them, like a
    dense teacher's, to `dtype`, and the student is a copy of the teacher."""
    path = Path(source).expanduser()
    if source.startswith("toy:") or not path.is_dir():
        return None
    try:
        files = weight_map(transformer_folder(path))
    except UserError:
        return None
    return 2 * checkpoint_numel(files) * dtype.itemsize


def checkpoint_numel(files: dict[str, Path]) -> int:
    """Elements of every tensor of a checkpoint, from its safetensors headers (a file that cannot be
    read: a UserError naming it)."""
    numel = 0
    for f in set(files.values()):
        with opened(f) as h:
            for k in h.keys():
                numel += math.prod(h.get_slice(k).get_shape())
    return numel


def warn_if_short_of_disk(run_dir: Path, model_bytes: int, statistics_bytes: int = 0) -> bool:
    """A streamed run writes up to about three copies of the model under run_dir (spilled blocks,
    the latest stage, the one before it), its svd passes' calibration statistics (`statistics_bytes`:
    statistics_on_disk, kept in run_dir/calib for --resume) and one more copy to the output: say so
    before it starts if the disk has less free (and return whether it did)."""
    need, have = 3 * model_bytes + statistics_bytes, free_bytes(run_dir)
    if have is None or need <= have:
        return False
    from compress.report import warn

    stats = f", {human_size(statistics_bytes)} of float64 calibration statistics" if statistics_bytes else ""
    need_words, have_words = human_sizes(need, have)
    warn(f"a streamed run writes up to about {need_words} under {run_dir} (spilled blocks and stage "
         f"checkpoints{stats}), and {have_words} are free there; pass --run-dir on a bigger disk")
    return True


def statistics_on_disk(targets: list, paired: bool, sequential: bool) -> int:
    """Bytes an svd pass's statistics cache writes (calib_stats.StatsCache: every block's, kept for
    --resume) for `targets` (as plan_statistics.svd_statistics takes them): the statistics held over the
    walk and each block's own, as `plan` estimates them, each block's twice with within-block
    sequential calibration (its levels' are cached too)."""
    from compress.plan_statistics import svd_statistics

    blocks: dict[tuple, list] = {}
    for info in targets:
        blocks.setdefault((info.group, info.block), []).append(info)
    own = sum(svd_statistics(b, paired, sequential)["block"] for b in blocks.values())
    return svd_statistics(targets, paired, sequential)["held"] + own * (2 if sequential else 1)


def spill_short(activation_bytes: int | None, run_dir: Path) -> str:
    """Why calibration's activations (`activation_bytes`, calib_footprint's, None: not estimated) would
    not fit the disk free under `run_dir` spilled (calibration.spill_activations writes them there):
    'spilled, their X would not fit the Y free under RUN_DIR'; '' where they would or either is unknown."""
    free = free_bytes(run_dir) if activation_bytes else None
    if free is None or activation_bytes <= free:
        return ""
    need_words, free_words = human_sizes(activation_bytes, free)
    return f"spilled, their {need_words} would not fit the {free_words} free under {run_dir}"


def free_bytes(folder: Path) -> int | None:
    """Free space of the disk holding `folder` (or its nearest existing parent)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
