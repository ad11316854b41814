"""How the runner holds the teacher and the student: resident (the whole model in memory) or
streamed (recipe `stream: true`: block weights read just in time from the teacher checkpoint,
one block resident; for models bigger than memory).

Both give the runner the same five things: the teacher, a fresh student, a student restored from a
stage folder, a context for whole-model forwards (held-out predictions, pipeline sampling) and a
writer of stage and output folders. Streamed, the student's blocks live in `run_dir/stream/` as
the passes leave them, and folders are written as index shards that never span two blocks
(`save_streamed`). What a run says when memory or disk runs short is runner_failures'; its warnings
before it starts that they would are runner_memory's.
"""

from __future__ import annotations

import copy
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
from compress.fuse import fuse_gelu
from compress.io import cast
from compress.io_export import EXPORT_ADVICE, save_compressed
from compress.io_output import empty_compressed, load_transformer
from compress.runner_memory import checkpoint_numel, statistics_on_disk, warn_if_short_of_disk, warn_if_too_big
from compress.stream import CheckpointBlocks, empty_transformer, save_streamed, streamed
from compress.stream_files import changed, checkpoint_of, weight_map
from compress.stream_refusals import NotStreamable, not_streamed

CHUNK = 1 << 24  # bytes read at a time for the checksum
# run folder: a streamed student's spilled blocks, svd's spilled activations, global allocation's spilled
# factors (svd_global) and the output Fishers an svd pass does not keep (fisher: block, ...)
SCRATCH = ("stream", "activations", "sensitivity", "fisher")


class ResidentModels:
    """The whole teacher and student in memory."""

    blocks = None  # passes use their resident default
    passes = None  # the run's (passes, specs) once built (runner_prepare): what a too-big teacher's advice reads

    def __init__(self, run_dir: Path, dtype: torch.dtype = torch.float32,
                 device: torch.device = torch.device("cpu")):
        self.run_dir, self.dtype, self.device = Path(run_dir), dtype, device

    def teacher(self, source: str, load) -> nn.Module:
        warn_if_too_big(source, self.dtype, self.device, passes=self.passes)
        return cast(load(), self.device)

    def fresh_student(self, teacher: nn.Module) -> nn.Module:
        return copy.deepcopy(teacher)

    def restore(self, folder: Path) -> nn.Module:
        return cast(load_transformer(folder), self.device)

    def forwards(self, model: nn.Module):
        return nullcontext(model)

    def save(self, student: nn.Module, folder: Path, **kw) -> Path:
        return save_compressed(student, folder, caller="export", advice=EXPORT_ADVICE, **kw)  # a run's export.dtype

    def adopt(self, student: nn.Module, stage: Path, older: bool = True) -> None:
        pass

    def drop_older(self, stage: Path) -> None:
        pass  # (a resident run's stages are kept: only a streamed run keeps one copy of its student)

    def warn_if_short_of_disk(self, passes: list, specs: list, model: nn.Module, adapter) -> None:
        pass  # only a streamed run estimates its disk (its copies of a model bigger than memory)

    def fingerprint(self, teacher: nn.Module, h) -> None:
        """Adds the teacher's weights to hash h: every tensor's name, dtype, shape and every byte
        (a fine-tune of a few rows or heads shows; sha256 runs at memory speed, seconds per GiB)."""
        for name, p in sorted(teacher.state_dict().items()):
            h.update(f"{name}{p.dtype}{tuple(p.shape)}".encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


class StreamedModels:
    """Teacher and student on the meta device but for their top level; each block is read from
    its checkpoint file when it runs (`CheckpointBlocks`). The student's compressed blocks are
    spilled to run_dir/stream/; with run_dir None nothing is written (importance, eval)."""

    def __init__(self, run_dir: Path | None, dtype: torch.dtype = torch.float32,
                 device: torch.device = torch.device("cpu")):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dtype, self.device = dtype, device  # where blocks compute
        self.loaders: dict[int, CheckpointBlocks] = {}  # id(model) -> its loader
        self.files: dict[str, Path] = {}  # the teacher checkpoint: tensor name -> file
        self.student: nn.Module | None = None
        self.model_bytes, self.short_of_disk = 0, False  # the teacher's bytes in `dtype`; said so

    @property
    def blocks(self) -> CheckpointBlocks | None:
        """The student's block loader (RunContext.blocks), once there is a student."""
        return self.loaders.get(id(self.student))

    def teacher(self, source: str, load) -> nn.Module:
        config, self.files = checkpoint_of(source)
        self.model_bytes = checkpoint_numel(self.files) * self.dtype.itemsize
        if self.run_dir is not None:  # the model copies alone, before anything loads
            self.short_of_disk = warn_if_short_of_disk(self.run_dir, self.model_bytes)
        model = empty_transformer(config, self.dtype).requires_grad_(False).eval()
        self._attach(model, CheckpointBlocks(model, self.files, device=self.device, what="teacher"))
        return model

    def warn_if_short_of_disk(self, passes: list, specs: list, model: nn.Module, adapter) -> None:
        """Once the passes are built and the teacher loaded (Runner.prepare): the disk warning again
        with the svd passes' statistics counted (statistics_on_disk of their targets on `model`, as
        plan resolves them), unless `teacher` said it already for the model copies alone."""
        if self.run_dir is None or self.short_of_disk:
            return
        from compress.plan_walk import svd_targets

        stats = sum(statistics_on_disk(*svd_targets(p, spec, model, adapter))
                    for p, spec in zip(passes, specs) if spec.name == "svd")
        self.short_of_disk = warn_if_short_of_disk(self.run_dir, self.model_bytes, stats)

    def _attach(self, model: nn.Module, loader: CheckpointBlocks) -> nn.Module:
        loader.load_top()
        self.loaders[id(model)] = loader
        return model

    def _spill(self) -> Path | None:
        return self.run_dir / "stream" if self.run_dir is not None else None

    def fresh_student(self, teacher: nn.Module) -> nn.Module:
        self.student = copy.deepcopy(teacher)  # blocks on meta: only the top level is copied
        return self._attach(self.student, CheckpointBlocks(self.student, self.files, self._spill(),
                                                            self.device, what="teacher"))

    def restore(self, folder: Path, stored: dict | None = None) -> nn.Module:
        """The student of a stage (or a pending stage's record) in `folder`; `stored`: the names its
        blocks' tensors have in their files where a removal renumbered them (CheckpointBlocks.stored).
        Its FFN GELU fused as the stage's pass left it (load_transformer fuses a resident one), so a
        later svd pass fuses, and reports, only what it factorized itself."""
        self.student = cast(empty_compressed(folder), self.dtype)  # blocks are read in its dtype
        fuse_gelu(self.student)  # names and state dict unchanged: the blocks stream as saved
        return self._attach(self.student, CheckpointBlocks(self.student, weight_map(folder), self._spill(),
                                                            self.device, stored=stored or {}, what="student"))

    @contextmanager
    def forwards(self, model: nn.Module):
        with streamed(model, self.loaders[id(model)]):
            yield model

    def save(self, student: nn.Module, folder: Path, **kw) -> Path:
        return save_streamed(student, self.loaders[id(student)], folder, **kw)

    def adopt(self, student: nn.Module, stage: Path, older: bool = True) -> None:
        """The student's blocks are read from the stage folder just written (same dtype) from now
        on; the spilled copies and (`older`, else `drop_older` once the runner has checked the stage:
        runner_heldout) earlier stages (resume starts from the latest) are deleted, so the run keeps one
        copy of the student on disk, two while the next stage is written and checked."""
        loader = self.loaders[id(student)]
        loader.point_to(weight_map(stage))
        shutil.rmtree(self._spill(), ignore_errors=True)
        self._spill().mkdir(parents=True)
        if older:
            self.drop_older(stage)

    def drop_older(self, stage: Path) -> None:
        """The stages/ folders but `stage` deleted, oldest first (`stages_to_delete`), each unlisted
        before its files go (`delete_stage`): a Ctrl-C in the middle leaves the latest stages, each
        complete, and --resume (which deletes the rest again, runner_restore._finish_adopting) never
        continues from a half-deleted one."""
        for old in stages_to_delete(stage):
            delete_stage(old)

    def fingerprint(self, teacher: nn.Module, h) -> None:
        """Adds the checkpoint to hash h: every byte of each of its files, read once in order (a
        fine-tune of a few rows of one tensor shows; sampled reads missed those)."""
        for path in sorted(set(self.files.values())):
            try:
                h.update(f"{path.stat().st_size}:".encode())  # content, not the file name
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        h.update(chunk)
            except OSError as e:  # removed since checkpoint_of opened it
                raise changed(path, e) from None


def stages_to_delete(stage: Path) -> list[Path]:
    """The folders beside `stage` in stages/ that adopting it deletes, in the order they go: the
    stages by pass index, oldest first (<i>-<pass>, as runner_resume.stage_dirs reads them), then any
    other folder (a killed save's temp folder) by name."""
    def order(folder: Path) -> tuple:
        index = folder.name.split("-", 1)[0]
        return (0, int(index), folder.name) if index.isdigit() and "-" in folder.name else (1, 0, folder.name)
    return sorted((p for p in stage.parent.iterdir() if p.is_dir() and p != stage), key=order)


def delete_stage(folder: Path) -> None:
    """A stage folder deleted, its state.json first: from then on no reader lists it as a complete
    stage (runner_resume.stage_dirs), however far the rest got when a Ctrl-C stops it."""
    try:
        (folder / "state.json").unlink(missing_ok=True)
    except OSError:  # (not a file): rmtree's to remove
        pass
    shutil.rmtree(folder, ignore_errors=True)


def streamed_weights(model, adapter) -> dict:
    """Teacher parameters resident at once when streamed: the top level plus the largest block."""
    from compress.report import param_count

    blocks = [param_count(b) for _, _, b in adapter.iter_blocks(model)]
    top = param_count(model) - sum(blocks)
    return {"top_level_params": top, "largest_block_params": max(blocks),
            "resident_params": top + max(blocks)}


def tidy_scratch(run_dir: Path) -> None:
    """At a run's end, finished or stopped, under its locks: this process's spilled activations
    (calib_spill.Spilled's files, which a stop's traceback keeps alive past it; a rerun measures
    them again) deleted, then the run folder's SCRATCH folders left empty (a run that spilled
    nothing, or whose spills were adopted or discarded) removed: a resume makes them again when it
    spills. Spilled blocks stay (a streamed stage being written when the run stopped: --resume
    writes it from them), and so does their folder."""
    for path in (Path(run_dir) / "activations").glob(f"{os.getpid()}-*-*.pt"):
        path.unlink(missing_ok=True)
    for name in SCRATCH:
        try:
            (Path(run_dir) / name).rmdir()  # only when empty
        except OSError:
            pass


def models_for(stream: bool, run_dir: Path, dtype: torch.dtype = torch.float32,
               device: torch.device = torch.device("cpu")):
    return (StreamedModels if stream else ResidentModels)(run_dir, dtype, device)


def check_streaming(passes, specs, path: str) -> None:
    """Every pass must run with one block resident: one UserError naming what every pass asks for that
    needs the whole model, one a line, each at its recipe line (its key's, else the pass's)."""
    lines = []
    for index, spec, e in not_streamed(passes, specs):
        lines += e.lines(spec, index) if isinstance(e, NotStreamable) else [f"{spec.where(e, 'stream')}: {e}"]
    if len(lines) > 1:
        raise UserError(f"{len(lines)} things in {path} need the whole model in memory, which stream: true "
                        "does not hold:\n  " + "\n  ".join(lines))
    if lines:
        raise UserError(lines[0])
