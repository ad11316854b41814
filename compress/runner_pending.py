"""A streamed stage checkpoint made finishable. Before the stage of a streamed pass is written (the
whole student, ~24 GB and minutes on Flux.1-dev), `write_record` puts beside the spilled blocks, in
run_dir/stream/pending-stage/, what that stage will hold: its state (the pass index, recipe,
teacher, inputs, report, block map), the student's config and resident top level, and where each
block's tensors are (run_dir/stream/ as the pass spilled them, the previous stage, the teacher's
checkpoint). Those files stay as they are until the stage is complete and adopted
(runner_stream.StreamedModels.adopt deletes stream/ and the earlier stages), so after an interrupt
while the stage is written, --resume writes it from them (runner_restore) instead of running the pass
again. A run that does not finish a record discards it (`discard`) before any pass spills again.
Imports no torch: the run folder is read after a Ctrl-C that may come before torch is in."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from compress import json_read

PENDING = Path("stream") / "pending-stage"  # in the run folder
RECORD = "state.json"  # written last: a folder without it is no record
TOP = "top-level.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"  # io.INDEX: read as an output folder's


def write_record(run_dir: Path, i: int, state: dict, student, loader) -> None:
    """The record of pass `i`'s stage (`state`: what its state.json will hold) for the streamed
    `student` whose blocks `loader` (a CheckpointBlocks) reads; complete or absent (renamed into place)."""
    from compress.io_export import compressed_config, write_texts
    from compress.stream import save_pieces

    folder = Path(run_dir) / PENDING
    tmp = folder.with_name(folder.name + ".tmp")
    for old in (tmp, folder):
        shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    blocks = loader.block_prefixes()
    top = {k: v for k, v in student.state_dict().items() if not k.startswith(blocks)}  # resident
    save_pieces(tmp / TOP, top)
    where = {k: str(Path(p).resolve()) for k, p in loader.files.items() if k.startswith(blocks)}
    index = {"weight_map": {**dict.fromkeys(top, TOP), **where}, "stored": loader.stored}
    (tmp / INDEX).write_text(json.dumps(index), encoding="utf-8")
    write_texts(tmp, compressed_config(student, None, None), None)
    (tmp / RECORD).write_text(json.dumps(dict(state, **{"pass": i}), default=str), encoding="utf-8")
    os.replace(tmp, folder)


def read_record(run_dir: Path) -> tuple[int, dict] | None:
    """(pass index, state) of the record in `run_dir` (its teacher as --resume compares a stage's:
    runner_resume.state_as_compared), or None where there is none, it cannot be read, or a file it
    names is gone."""
    from compress.runner_resume import STATISTICS, state_as_compared  # (it imports this module: imported here, not above)

    folder = Path(run_dir) / PENDING
    try:
        state = json_read.read(folder / RECORD)
        files = json_read.read(folder / INDEX)["weight_map"].values()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pass"), int):
        return None
    if not all((folder / f).is_file() for f in set(files)):  # absolute paths stay as they are
        return None
    if STATISTICS not in state:  # an older record's: the version its run recorded, where it did, as read_state
        from compress.runner_measured import recorded_statistics

        state = dict(state, **{STATISTICS: recorded_statistics(run_dir)})
    return state["pass"], state_as_compared(state)


def restore_student(run_dir: Path, models):
    """The student of the record in `run_dir`, held by `models` (runner_stream.StreamedModels) as its
    `restore` holds a stage's, with the record's names of the tensors stored under other names in
    their files (CheckpointBlocks.stored: blocks a removal renumbered)."""
    folder = Path(run_dir) / PENDING
    stored = json.loads((folder / INDEX).read_text(encoding="utf-8")).get("stored") or {}
    return models.restore(folder, stored=stored)


def discard(run_dir: Path) -> None:
    folder = Path(run_dir) / PENDING
    for old in (folder.with_name(folder.name + ".tmp"), folder):
        shutil.rmtree(old, ignore_errors=True)
