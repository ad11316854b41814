"""What a run folder caches that no run can read any more, removed as a run starts its passes (and
again once it has run them all): svd statistics and output Fishers of another teacher or calibration
(calib/<fingerprint>/) or of a student no saved pass nor this recipe makes (calib/<fingerprint>/<model>/),
the statistics in a cache this run's svd passes read that they neither read nor wrote (`unread_files`),
output Fishers of another fisher_probes an interrupted svd pass left in a cache this recipe reads
(`unread_fishers`), teacher samples of another teacher, calibration or distill settings
(distill/teacher_samples/<key>/), sampled inputs of another teacher or none the run reads
(inputs/<name>/, `other_inputs`) and, in the run's own, the calls of other prompts or settings
(`other_calls`). Only under the run's locks, once the run has decided what it keeps
(never when it refuses), and only where the folder's last run finished or this one is a --restart
(`finished_run`); those of another teacher or calibration (`of_another`: hours of statistics on a real
model) only with --restart, else one note names them. A cache whose readers are not recorded (an older
dit-compress's) is kept while that is not known: until a run has run every pass, each of its svd passes
recorded as the reader of another cache (`every_svd_pass_read`). Each path removed is appended, with the
time and its bytes, to RUN/removed-caches.log (`REMOVED_LOG`), which the note names where it lists only
some. Imports no torch."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from compress import json_read
from compress.runner_kept import fisher_folder, readers_of, samples_keys
from compress.runner_resume import FINISHED, SAMPLES_ABOUT, TEACHER_SAMPLES, recipe_changes
from compress.runner_resume_step import distill_folder

REMOVED_LOG = "removed-caches.log"  # in the run folder: a line per cache removed (`log_removed`)
CLOCK = ".clock-"  # in the run folder: `clock_ns`'s file, .clock-PID, removed at once


def finished_run(run_dir: Path) -> bool:
    """Whether the last run in `run_dir` finished (stages/FINISHED): only then, or with --restart, are
    the caches no run of a recipe reads removed. An interrupted run's (no FINISHED) are what it kept for
    a rerun, as its stop said (a run folder with nothing in it has nothing to remove either)."""
    return (Path(run_dir) / "stages" / FINISHED).is_file()


def of_another(run_dir: Path, fingerprint: str, inputs: list[Path] | None = None,
               calls: list[Path] | None = None) -> list[Path]:
    """The caches in `run_dir` of another teacher or calibration: calib/<other fingerprint>/, teacher
    samples whose about.json holds another fingerprint (one without a readable about.json: not known),
    sampled inputs other than the run's `inputs` (`other_inputs`) and, in those, the calls other than
    the run's `calls` (`other_calls`)."""
    found = [p for p in sorted((Path(run_dir) / "calib").glob("*"))
             if p.name != fingerprint and p.is_dir() and not p.is_symlink()]
    for folder in sorted((Path(run_dir) / TEACHER_SAMPLES).glob("*")):
        try:
            about = json_read.read(folder / SAMPLES_ABOUT)
        except (OSError, ValueError):
            continue
        if isinstance(about, dict) and about.get("fingerprint") != fingerprint:
            found.append(folder)
    return found + other_inputs(run_dir, inputs) + other_calls(inputs, calls)


def other_inputs(run_dir: Path, inputs: list[Path] | None) -> list[Path]:
    """The folders of sampled inputs in `run_dir` (inputs/<name>/: the records of each sampling call of a
    pipeline calibration, named by the teacher, its weights and pipeline: calib_pipeline.inputs_cache_name)
    but `inputs`, those the run reads ([]: none, its calibration samples nothing; None: not known, none
    named). A run of another teacher reads them, and `eval` of its output (report.json's inputs_cache),
    which samples those held-out calls again where they are gone."""
    if inputs is None:
        return []
    mine = {Path(p).resolve() for p in inputs}
    return [p for p in sorted((Path(run_dir) / "inputs").glob("*"))
            if p.is_dir() and not p.is_symlink() and p.resolve() not in mine]


def other_calls(inputs: list[Path] | None, calls: list[Path] | None) -> list[Path]:
    """The sampling calls' files (<hash>.pt) in the run's folders of sampled inputs `inputs` but its
    `calls` (calib_pipeline.PipelineSource.call_files: its calibration and held-out calls, each file
    named by the prompts, seed, steps ... of the call; None: not known, none named): the calls of other
    prompts or calibration settings (seed, sample_steps, heldout ...), another calibration's inputs as
    calib/<its fingerprint>/ holds its statistics. `eval` of an output of that calibration
    (report.json's inputs_cache names this folder) samples its held-out calls again where they are
    gone. Unfinished files (<hash>.tmp-PID: a sampling call being written) are not named: those of a
    process gone go as the run takes its lock (runner_leftovers.clear_unfinished_calls)."""
    if not inputs or calls is None:
        return []
    mine = {Path(p).resolve() for p in calls}
    return [p for folder in inputs for p in sorted(Path(folder).glob("*.pt"))
            if p.resolve() not in mine and p.is_file() and not p.is_symlink()]


def clock_ns(run_dir: Path) -> int:
    """Now on the clock of the file system that holds `run_dir` (a network file system's may be behind
    this host's): the mtime of a small file written there and removed at once. `unread_files` compares
    the statistics files' mtimes, set by that clock, with it."""
    path = Path(run_dir) / f"{CLOCK}{os.getpid()}"
    try:
        path.write_bytes(b"")
        return path.stat().st_mtime_ns
    finally:
        path.unlink(missing_ok=True)


def unread_caches(run_dir: Path, fingerprint: str, specs: list, passes, start: int,
                  inputs: list[Path] | None = None, calls: list[Path] | None = None) -> list[Path]:
    """The cache folders in `run_dir` that neither the run of the recipe whose pass specs are `specs`
    (built: `passes`; its first pass to run: `start`; the sampled inputs it reads: `inputs`, their
    calls `calls`) nor a --resume of it can read: `unread_stats`, `unread_samples`, `other_inputs` and
    `other_calls`."""
    return (unread_stats(run_dir, fingerprint, specs, passes, start) + unread_samples(run_dir, fingerprint, passes)
            + other_inputs(run_dir, inputs) + other_calls(inputs, calls))


def unread_stats(run_dir: Path, fingerprint: str, specs: list, passes, start: int) -> list[Path]:
    """calib/<other fingerprint>/ (another teacher, calibration or dit-compress: this run's
    `fingerprint` keys every cache it reads), calib/<fingerprint>/<model>/ whose recorded readers
    (runner_kept.readers_of) are all svd passes whose model this recipe makes no more (`read_by_recipe`),
    and in the others the output Fishers none of this recipe's svd passes that read them reads
    (`unread_fishers`)."""
    calib = Path(run_dir) / "calib"
    found = [p for p in of_another(run_dir, fingerprint) if p.parent == calib]
    readers = {cache: readers_of(cache) for cache in sorted((calib / fingerprint).glob("*"))
               if cache.is_dir() and not cache.is_symlink()}
    known = start >= len(passes) and every_svd_pass_read(list(readers.values()), specs, passes)
    for cache, read_by in readers.items():
        mine = [r for r in read_by if read_by_recipe(r, specs, passes, start)]
        if (read_by or known) and not mine:
            found.append(cache)
        elif mine:
            found += unread_fishers(cache, [passes[r["pass"]] for r in mine])
    return found


def every_svd_pass_read(readers: list[list[dict]], specs: list, passes) -> bool:
    """Whether, every pass decided (all have run), each svd pass of the recipe is recorded among
    `readers` (the readers of each cache under this fingerprint) as the reader of a cache
    (`read_by_recipe`): then a cache with no readers recorded (an older dit-compress's) is read by no
    pass of this recipe, which reads those caches each time from the same models (as `unread_files`
    holds); where one is not (its pass run by an older dit-compress and kept by --resume, or
    mark_read_by could not write), such a cache may be its, and is kept."""
    done = len(passes)
    return all(any(r["pass"] == i and read_by_recipe(r, specs, passes, done) for read_by in readers for r in read_by)
               for i, p in enumerate(passes) if p.name == "svd")


def unread_fishers(cache: Path, readers: list) -> list[Path]:
    """The output-Fisher folders (fisher-<N>probes/, runner_kept.fisher_folder) in the stats cache
    `cache` that none of `readers` (the svd passes of this recipe that read it) reads: of another
    svd.fisher_probes, or any where they measure none there (fisher: block, none). An svd pass deletes its
    own once it finishes, so these are what an interrupted pass of other settings measured. None where a
    reader's settings are not known."""
    configs = [getattr(p, "config", None) for p in readers]
    if any(c is None for c in configs):
        return []
    wanted = {fisher_folder(c) for c in configs}
    return [p for p in sorted(Path(cache).glob("fisher-*probes"))
            if p.name not in wanted and p.is_dir() and not p.is_symlink()]


def read_by_recipe(reader: dict, specs: list, passes, start: int) -> bool:
    """Whether the recipe of pass specs `specs` (built: `passes`) may read a stats cache an svd pass
    read as `reader` ({"pass": i, "specs": the specs of the passes before it}): its pass i is an svd pass
    and its passes before i are the same as far as they are decided (those before `start`, which
    this run keeps; a pass from `start` on runs again, and may make the same model with other
    settings; `start` = len(passes) once all have run: what each made is decided)."""
    i = reader["pass"]
    if not (0 <= i < len(passes)) or passes[i].name != "svd":
        return False
    done = min(i, start)
    now = json.loads(json.dumps(specs[:done], default=str))  # as mark_read_by wrote them (int keys as text)
    return not recipe_changes({"passes": reader["specs"][:done]}, {"passes": now}, passes, done)


def unread_samples(run_dir: Path, fingerprint: str, passes) -> list[Path]:
    """Teacher-sample caches (distill/teacher_samples/<key>/) whose about.json holds another fingerprint,
    or settings (num_samples, sample_steps, batch_size, guidance_scale) no distill pass of `passes`
    with data: teacher_samples samples with, as runner_kept.teacher_samples_kept reads them; one
    without a readable about.json is kept (an older dit-compress's, or one whose about.json is being
    written)."""
    wanted = [samples_keys(p.config) for p in passes
              if p.name == "distill" and getattr(p.config, "data", None) == "teacher_samples"]
    found = []
    for folder in sorted((Path(run_dir) / TEACHER_SAMPLES).glob("*")):
        try:
            about = json_read.read(folder / SAMPLES_ABOUT)
        except (OSError, ValueError):
            continue
        if isinstance(about, dict) and (about.get("fingerprint") != fingerprint or samples_keys(about) not in wanted):
            found.append(folder)
    return found


def unread_files(cache: Path, read: set[str], since_ns: int) -> list[Path]:
    """The statistics files (<name>.pt) of an svd pass's stats cache folder `cache` that the passes of a
    run that read it (from start to end) neither read (`read`: the names StatsCache.load found) nor
    wrote (their mtime is before `since_ns`, when the run started its passes): of a student's blocks
    that other settings of an earlier pass made (another ratio compensates the blocks after it), read
    by no pass of this recipe, which reads the same ones each time from the same model."""
    found = []
    for path in sorted(Path(cache).glob("*.pt")):
        try:
            old = path.stat().st_mtime_ns < since_ns
        except OSError:
            continue
        if old and path.stem not in read and not path.is_symlink():
            found.append(path)
    return found


def remove_unread_caches(run_dir: Path, fingerprint: str | None, specs: list, passes, start: int,
                         also: list[Path] = (), restart: bool = False, first: bool = True,
                         inputs: list[Path] | None = None, calls: list[Path] | None = None) -> None:
    """`unread_caches` deleted, and the files `also` (`unread_files`), with one note naming them and the
    bytes freed (rank 0, under the run's locks: Runner calls it once it restored what it keeps (`first`),
    and after its last pass). Those `of_another` teacher or calibration only with `restart`: else kept,
    and named in one note (at the `first` call). `inputs`: the folders of sampled inputs the run reads
    (Runner.inputs_cache; [] none; None: not known, every one kept); `calls`: the files of its sampling
    calls there (Runner.sampled_calls; None: not known, every call kept)."""
    from compress.report import note
    from compress.runner_caches_keyed import of_another_in_words  # (it imports this module: imported here, not above)

    if not fingerprint:
        return
    found = unread_caches(run_dir, fingerprint, specs, passes, start, inputs, calls)
    if not restart:
        another = of_another(run_dir, fingerprint, inputs, calls)
        found = [p for p in found if p not in another]
        if first and another:
            note(f"{run_dir} holds {of_another_in_words(another, run_dir)}; --restart removes them")
    found += [p for p in also if not any(f in p.parents for f in found)]
    if not found:
        return
    sizes, named = [size_of(p) for p in found], listed(found, run_dir)  # (what is a folder: told before it goes)
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    logged = log_removed(run_dir, found, sizes)
    cut = len(named) < len(found) or len(named) > 3  # files counted by folder, or entries left off
    where = f"; the full list in {logged}" if logged is not None and cut else ""
    note(f"removed caches in {run_dir} that no run of this recipe reads ({in_words(named)}): "
         f"{bytes_in_words(sum(sizes))} freed{where}")


def log_removed(run_dir: Path, removed: list[Path], sizes: list[int]) -> Path | None:
    """`removed` (paths under `run_dir`, of `sizes` bytes) appended to RUN/removed-caches.log, a line
    each: 'TIME<tab>PATH<tab>BYTES' (UTC, the path relative to `run_dir`); the log returned, or None
    where it could not be written (the caches are gone all the same)."""
    log = Path(run_dir) / REMOVED_LOG
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = "".join(f"{now}\t{within(p, run_dir)}\t{n}\n" for p, n in zip(removed, sizes))
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(lines)
    except OSError:
        return None
    return log


def names_of(paths: list[Path], run_dir: Path) -> str:
    """'calib/a, 6 files in inputs/x, calib/c and 2 more': `paths` relative to `run_dir` (`listed`),
    three entries at most."""
    return in_words(listed(paths, run_dir))


def listed(paths: list[Path], run_dir: Path) -> list[str]:
    """`paths` relative to `run_dir`, in order, each folder's files one entry where there are more
    than one: 'N files in inputs/x' (sampled calls, statistics files), in the place of its first;
    folders (calib/<fingerprint>/, a Fisher folder ...) each their own. Told while they exist."""
    files: dict[Path, int] = {}
    for p in paths:
        if not p.is_dir():
            files[p.parent] = files.get(p.parent, 0) + 1
    entries = []
    for p in paths:
        if p.is_dir() or files[p.parent] == 1:
            entries.append(str(within(p, run_dir)))
        elif files[p.parent] > 0:
            entries.append(f"{files[p.parent]} files in {within(p.parent, run_dir)}")
            files[p.parent] = 0  # said: its other files are in it
    return entries


def within(path: Path, run_dir: Path) -> Path:
    """`path` relative to `run_dir`, the two compared resolved where they are not written alike (a
    relative --run-dir, a sampled inputs folder named absolute: Runner.inputs_cache); `path` as it is
    where it lies outside."""
    try:
        return Path(path).relative_to(run_dir)
    except ValueError:
        try:
            return Path(path).resolve().relative_to(Path(run_dir).resolve())
        except ValueError:
            return Path(path)


def in_words(entries: list[str]) -> str:
    """'a, b, c and 2 more': three `entries` at most."""
    return ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def size_of(folder: Path) -> int:
    """The bytes of the files under `folder` (or of the file `folder`; links not followed)."""
    if folder.is_file() and not folder.is_symlink():
        return folder.stat().st_size
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def bytes_in_words(n: int) -> str:
    """'24.1 MiB', '512 bytes'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} byte{'' if n == 1 else 's'}"


def stranded_checkpoints(run_dir: Path, passes) -> list[Path]:
    """The distill checkpoints (distill*/checkpoints, and those --resume set aside, checkpoints.discarded) in
    `run_dir` of a distill pass the recipe's `passes` do not have (the n-th distill pass trains in distill/, or
    distill-n/ from the second: distill_trainer), which no pass of this run resumes nor removes once its stage is
    saved: left by a --resume without that pass, they stay until a run without --resume starts over."""
    from compress.passes.distill_resume import DISCARDED

    n = sum(1 for p in passes if p.name == "distill")
    own = {distill_folder(k + 1) for k in range(n)}
    found = [c for name in ("checkpoints", DISCARDED, "checkpoints.swapping*")  # (the last: an older swap's, stopped)
             for c in Path(run_dir).glob(f"distill*/{name}")]
    return sorted(c for c in found if c.parent.name not in own and c.is_dir() and any(c.iterdir()))


def note_stranded_checkpoints(run_dir: Path, passes) -> None:
    """`stranded_checkpoints` named in a note with their bytes, as a --resume keeps them (a --resume of a recipe
    with that pass may take them back): 'RUN holds 1.2 MiB of distill checkpoints of a distill pass this recipe
    does not have (distill/checkpoints); a run without --resume removes them'."""
    from compress.report import note

    found = stranded_checkpoints(run_dir, passes)
    if found:
        note(f"{run_dir} holds {bytes_in_words(sum(size_of(p) for p in found))} of distill checkpoints of a distill "
             f"pass this recipe does not have ({names_of(found, run_dir)}); a run without --resume removes them")
