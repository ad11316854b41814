"""The distill checkpoints an interrupted run left (`distill_checkpoints`), and the step of the one --resume
continues from (`resumed_step`): that of the distill pass it runs next, in that pass's own folder (the n-th
distill pass trains in RUN/distill, or RUN/distill-n from the second: distill_trainer), not the latest of any
folder, which may be an earlier pass's (its stage saved, a kill before its checkpoints were removed: --resume
removes them, runner_restore._cleared) or one another recipe left. Imports no torch (runner_resume's callers
read run folders before torch is in)."""

from __future__ import annotations

from pathlib import Path


def distill_folder(n: int) -> str:
    """The folder (under the run folder) the n-th distill pass of a recipe trains in (n from 1): 'distill', then
    'distill-2', 'distill-3' ... (distill_trainer writes there; resume, restore and the cache cleaner read it)."""
    return "distill" if n == 1 else f"distill-{n}"


def distill_checkpoints(run_dir: Path, folder: str = "distill*") -> list[Path]:
    """The complete distill checkpoints in `run_dir` (FOLDER/checkpoints/step-N, with meta.json; `folder`: a
    glob of the distill folders, every one by default)."""
    return sorted(p for p in Path(run_dir).glob(f"{folder}/checkpoints/step-*") if (p / "meta.json").is_file())


def pass_folder(done: int, names: list[str] | None) -> str | None:
    """The distill folder of the pass --resume runs next (index `done` of the recipe's pass `names`): 'distill'
    for the first distill pass, 'distill-2' for the second ...; None where that pass is no distill pass. `names`
    None (not known): 'distill' where it is the first pass (only a distill pass trains there), else the glob of
    every distill folder (which pass left a checkpoint is not known)."""
    if names is None:
        return "distill" if done == 0 else "distill*"
    if done >= len(names) or names[done] != "distill":
        return None
    return distill_folder(names[:done + 1].count("distill"))


def resumed_step(run_dir: Path, done: int, names: list[str] | None) -> int | None:
    """The latest step of the complete distill checkpoints of the pass --resume runs next (`pass_folder`), None
    where it has none."""
    folder = pass_folder(done, names)
    if folder is None:
        return None
    steps = [p.name.removeprefix("step-") for p in distill_checkpoints(run_dir, folder)]
    return max((int(s) for s in steps if s.isdigit()), default=None)
