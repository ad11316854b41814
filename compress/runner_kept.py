"""What a stopped run's folder keeps, in words: its passes saved (`saved_in_words`) and what its
unfinished pass measured that a rerun reads back (`measured_so_far`: sampled inputs, block statistics,
output Fishers, teacher samples), as a Ctrl-C, an error's stop and a refused rerun say it (`work_kept`).
Imports no torch: the CLI reads the run folder after a Ctrl-C that may come before torch is in."""

from __future__ import annotations

import json
from pathlib import Path

from compress import json_read
from compress.runner_resume import SAMPLES_ABOUT, TEACHER_SAMPLES
from compress.words import counted

# which of the statistics and Fishers it finds an svd pass reads back (its start line, `read_back_at_end_in_words`)
OF_IT_NOW = "of its targets, blocks, inputs and ranks as they are now"
READ_BY = "read-by.json"  # in an svd pass's stats cache: the pass index that reads it (`mark_read_by`)
KEPT_FISHERS = ("all", "modulation")  # svd.fisher settings whose output Fishers an svd pass keeps in its stats cache


def fisher_folder(config) -> str | None:
    """The folder of an svd pass's stats cache that holds the output Fishers it measures (`config`: its
    SVDConfig), kept there while the pass is unfinished (deleted once it finishes): fisher-<N>probes, N
    its fisher_probes (an estimate of other probes is another), fisher-guided-<N>probes where they are the
    guided prediction's (svd.objective); None where it keeps none there (fisher: block or none)."""
    from compress.passes.svd_objective import PARTS, objective_of

    guided = "guided-" if "fisher" in PARTS[objective_of(config)] else ""
    return f"fisher-{guided}{config.fisher_probes}probes" if config.fisher in KEPT_FISHERS else None


def saved_in_words(info: dict) -> str:
    """'2 of 5 passes done, a distill checkpoint at step 275' for an `interrupted_run` ('the one pass
    done' of a recipe of one pass, 'the one pass not done' before it; '1 pass done' where the passes in
    all are not known)."""
    done, total = info["done"], info["total"]
    if total == 1:
        passes = f"the one pass {'done' if done else 'not done'}"
    else:
        passes = f"{done} of {total} passes done" if total is not None else f"{counted(done, 'pass', 'passes')} done"
    words = [passes]
    if info["step"] is not None:
        words.append(f"a distill checkpoint at step {info['step']}")
    return ", ".join(words)


def work_kept(run_dir: Path, info: dict | None, go_on: str, fingerprint: str | None = None,
              inputs: list[Path] | None = None, passes=()) -> str:
    """What a stopped run (Ctrl-C, out of memory, a full disk, a lost peer) leaves a rerun, one
    clause: '; RUN_DIR keeps its work (2 of 5 passes done, block statistics (up to 9 files) to read
    back): GO_ON' for an `interrupted_run`'s `info`; with none (no pass saved), '; RUN_DIR keeps block
    statistics (up to 9 files): a rerun ... reads back those it needs ...' where something
    was measured (`measured_so_far` of `fingerprint` and `inputs`, and the teacher samples of the `passes`
    not yet saved), else ''. Not 'measured so far', nor 'those it measured': the files may be an earlier
    run's (a finished run of other targets in the same run folder). With every pass done, what was
    measured is not named: --resume only writes the output, reading none of it."""
    if info is None:
        measured = measured_so_far(run_dir, fingerprint, inputs, list(passes) if passes else None)
        return (f"; {run_dir} keeps {measured}: a rerun of this recipe and teacher reads back "
                "those it needs instead of measuring them again (keep the run folder)") if measured else ""
    return f"; {run_dir} keeps its work ({kept_in_words(run_dir, info, fingerprint, inputs, passes)}): {go_on}"


def kept_in_words(run_dir: Path, info: dict, fingerprint: str | None, inputs: list[Path] | None = None,
                  passes=()) -> str:
    """'2 of 5 passes done, block statistics (up to 9 files) to read back' for an `interrupted_run`'s
    `info`: its saved passes and distill checkpoint (`saved_in_words`) and what its unfinished pass
    measured, which --resume reads back (`measured_so_far` of `fingerprint`, `inputs` and the `passes`
    not yet saved; none known: every pass's; not the statistics of the passes saved, which it keeps);
    with every pass done, only the passes."""
    done = info["total"] is not None and info["done"] >= info["total"]
    to_run = list(passes)[info["done"]:] if passes else None  # None: not known
    measured = "" if done else measured_so_far(run_dir, fingerprint, inputs, to_run, info["done"])
    return saved_in_words(info) + read_back_kept(measured)


def read_back_kept(measured: str) -> str:
    """', block statistics (up to 9 files) to read back' after the passes saved (`saved_in_words`) for
    what `measured_so_far` found (`measured`), '' where nothing: whose run measured it is not said (the
    run folder may hold an earlier run's, which a rerun reads back alike)."""
    return f", {measured} to read back" if measured else ""


def measured_so_far(run_dir: Path, fingerprint: str | None, inputs: list[Path] | None, to_run=None,
                    start: int = 0) -> str:
    """'sampled inputs (3 sampling calls), block statistics (up to 9 files), output Fishers (up to 24 files),
    teacher samples (6 of 16 shards; 'the one shard' of one)': what a run folder holds (the interrupted
    run's, or an earlier run's: which is not known) that a rerun of the same recipe and teacher reads
    back instead of computing it again ('' where nothing;
    the statistics and Fishers 'up to': those found, of which an svd pass reads only those of its
    blocks, inputs, targets and ranks as they are then):
    each finished sampling call's records among `inputs`
    (calib_pipeline.PipelineSource.call_files: the files of this run's calls, <hash>.pt; the folder
    may also hold those of other prompts, which a rerun does not read), and under calib/<fingerprint>/<model>/ the
    svd pass's block statistics (calib_stats.StatsCache: <group>-*.pt, stage-*.pt, conditioning-*.pt)
    and output Fishers (fisher-*/*.pt), and the teacher samples a distill pass among `to_run` reads
    back (`teacher_samples_kept`); the statistics and Fishers only where an svd pass is among `to_run`
    (None: the passes are not known), as no other pass reads them, the Fishers only those of their
    fisher_probes (`fishers_read`: another's are another estimate, measured anew), and only those of a pass from
    index `start` on (`to_run` being the recipe's passes from there: a cache marked read by an
    earlier pass, `mark_read_by`, is one --resume passes over; one marked by none, where the pass that
    reads them is known, `known_readers`, is read by none). Unfinished files (*.tmp*) are not counted."""
    calls = sum(1 for p in inputs if p.is_file()) if inputs else 0
    svd_ahead = to_run is None or any(getattr(p, "name", None) == "svd" for p in to_run)
    caches = read_caches(run_dir, fingerprint, start) if svd_ahead else []  # (after the last svd pass: read by none)
    if known_readers(caches, to_run, start):  # an unmarked cache (an older run's) is then read by none
        caches = [cache for cache in caches if (cache / READ_BY).is_file()]
    stats = sum(1 for cache in caches for _ in cache.glob("*.pt"))
    fishers = sum(1 for cache in caches for folder in fishers_read(to_run) for _ in cache.glob(f"{folder}/*.pt"))
    # the statistics and Fishers a pass reads are those its blocks' inputs, targets and ranks name, known only
    # as it runs (its end line says how many: runner_read_back.say_read_back_at_end): of those found, 'up to'
    kept = [f"{what} ({up_to}{counted(n, unit)})" for what, n, unit, up_to in [
        ("sampled inputs", calls, "sampling call", ""), ("block statistics", stats, "file", "up to "),
        ("output Fishers", fishers, "file", "up to ")] if n]
    written, shards = teacher_samples_kept(run_dir, fingerprint, to_run or ())
    if written:  # 'the one shard' of one (as saved_in_words' 'the one pass done'), else '2 of 4 shards'
        samples = "the one shard" if (written, shards) == (1, 1) else f"{written} of {counted(shards, 'shard')}"
        kept.append(f"teacher samples ({samples})")
    return ", ".join(kept)


def fishers_read(to_run) -> list[str]:
    """The folders of an svd stats cache holding the output Fishers the svd passes among `to_run` read
    back (`fisher_folder`: of their fisher_probes; none for fisher: block or none), as glob patterns;
    every fisher-*/ where the passes are not known (None)."""
    if to_run is None:
        return ["fisher-*"]
    return sorted({folder for p in to_run if getattr(p, "name", None) == "svd" and (folder := fisher_folder(p.config))})


def read_caches(run_dir: Path, fingerprint: str | None, start: int = 0) -> list[Path]:
    """The svd passes' stats cache folders (calib/<fingerprint>/<model digest>/) of a rerun of the
    same teacher and calibration (`fingerprint`, runner_resume.fingerprint) whose passes from index
    `start` on may read them back: all but those marked read by an earlier pass (`mark_read_by`: a
    pass --resume keeps, so never runs again; its cache is keyed by the student before it, which no
    later pass starts from). Unmarked ones (an older dit-compress's) are counted: not known. Those
    of other fingerprints (an earlier teacher or calibration) are not read back; no fingerprint: none."""
    if not fingerprint:
        return []
    return [cache for cache in sorted((Path(run_dir) / "calib" / fingerprint).glob("*"))
            if cache.is_dir() and not (0 <= _read_by(cache) < start)]


def known_readers(caches: list[Path], to_run, start: int) -> bool:
    """Whether the svd pass among `to_run` (the passes from index `start` on) that reads one of `caches`
    is known, so that a cache none marks read (`mark_read_by`: an older dit-compress's, or one it could
    not mark) is read by none of them: the only svd pass among them is the first, pass `start`, recorded
    as the reader of one of `caches` (it had started: a rerun continues it from the same student, and
    reads the cache it marked). Not known (False) where a later svd pass is to run, its model not made yet,
    as runner_caches.every_svd_pass_read holds, or the passes are not known."""
    svd = [i for i, p in enumerate(to_run or ()) if getattr(p, "name", None) == "svd"]
    if svd != [0]:
        return False
    return any(r["pass"] == start for cache in caches for r in readers_of(cache)) or \
        any(_read_by(cache) == start for cache in caches)


def mark_read_by(cache: Path, i: int, specs: list | None = None) -> None:
    """Marks an svd pass's stats cache folder `cache` as read by pass index `i` (0-based) of the run
    (`read_caches`): written as the pass starts; where it cannot be written, the words only count it.
    `specs`: the recipe's pass specs before pass i (what made the model the pass reads), added to the
    cache's readers (`readers`), which runner_caches compares with a later recipe's."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        readers = readers_of(cache)
        reader = {"pass": i, "specs": json.loads(json.dumps(specs, default=str))} if specs is not None else None
        if reader is not None and reader not in readers:
            readers.append(reader)
        (cache / READ_BY).write_text(json.dumps({"pass": i, "readers": readers}, default=str) + "\n", encoding="utf-8")
    except OSError:
        pass


def readers_of(cache: Path) -> list[dict]:
    """The readers `mark_read_by` recorded in `cache` ([{"pass": i, "specs": [...]}]), [] where none
    (an older dit-compress's cache, or unreadable)."""
    try:
        got = json_read.read(cache / READ_BY).get("readers")
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in got if isinstance(r, dict) and isinstance(r.get("pass"), int)
            and isinstance(r.get("specs"), list)] if isinstance(got, list) else []


def _read_by(cache: Path) -> int:
    """The pass index `mark_read_by` recorded in `cache`, -1 where none (or unreadable)."""
    try:
        got = json_read.read(cache / READ_BY).get("pass")
    except (OSError, ValueError, AttributeError):
        return -1
    return got if isinstance(got, int) and not isinstance(got, bool) else -1


def read_back_in_words(offered: tuple[set[str], set[str]]) -> str:
    """'block statistics (35 files), output Fishers (8 files)': what an svd pass's stats cache folder
    holds for it to read back (`offered_files`), '' where nothing."""
    stats, fishers = offered
    return ", ".join(f"{what} ({counted(len(names), 'file')})"
                     for what, names in (("block statistics", stats), ("output Fishers", fishers)) if names)


def offered_files(cache: Path, fishers: str | None = "fisher-*") -> tuple[set[str], set[str]]:
    """(the names of the block statistics, of the output Fishers) in an svd pass's stats cache folder
    `cache` (calib/<fingerprint>/<model digest>/) for it to read back: the StatsCache names (the file
    stems) and the targets' names of the Fishers; `fishers`: the folder of the Fishers it reads
    (fisher_folder: of its fisher_probes; None: none). Unfinished files (*.tmp*) are not counted."""
    stats = {p.stem for p in Path(cache).glob("*.pt")}
    return stats, ({p.stem for p in Path(cache).glob(f"{fishers}/*.pt")} if fishers else set())


def read_back_at_end_in_words(read: int, offered: int, by: str = "an earlier run", damaged: int = 0) -> str:
    """'read back 1 of the 5 files an earlier run measured (the others are not of its targets, blocks, inputs
    and ranks as they are now)': what an svd pass read of the `offered` files `read_back_in_words` counted;
    `by`: who measured them (`measured_by_in_words`); `damaged`: how many of them were damaged, and computed
    again (calib_store.load_cached): 'read back 3 of the 5 ...: 1 is damaged (computed again), 1 is not of ...'."""
    files = f"file{'' if offered == 1 else 's'} {by} measured"
    if read == offered:
        return f"read back {'the' if offered == 1 else f'all {offered}'} {files}"
    if damaged:
        why = [f"{n} {'is' if n == 1 else 'are'} {what}" for n, what in
               ((damaged, "damaged (computed again)"), (offered - read - damaged, f"not {OF_IT_NOW}")) if n]
        return f"read back {read or 'none'} of the {offered} {files}: {', '.join(why)}"
    why = f"not {OF_IT_NOW}"
    if not read:
        return f"read back none of the {offered} {files}: {'it is' if offered == 1 else 'they are'} {why}"
    return f"read back {read} of the {offered} {files} (the {'other is' if offered - read == 1 else 'others are'} {why})"


def measured_by(seen: tuple[int, dict] | None, names: set) -> dict:
    """{name: the pass number of this run that measured it, or None: an earlier run} for the `names`
    ((kind, name): "s" block statistics, "f" output Fishers) found in an svd pass's stats cache folder as
    it starts, `seen` being what the last pass of this run to read that folder found there (its index,
    and this dict of its: `say_read_back` keeps it), None where no pass of this run read it: a later pass
    of the same student (an svd pass that changed nothing) finds that pass's block statistics beside an
    earlier run's, and only those new since were that pass's. Output Fishers are always an earlier run's:
    each pass reads only its own fisher-<N>probes/ (`fisher_folder`), and deletes it once it finishes."""
    if seen is None:
        return dict.fromkeys(names)
    last, before = seen
    return {name: None if name[0] == "f" else before.get(name, last + 1) for name in names}


def measured_by_in_words(by: dict) -> str:
    """'an earlier run', 'pass 4 of this run', 'passes 3 and 4 of this run', 'an earlier run and pass 4
    of this run': who measured the files `measured_by` counted."""
    numbers = sorted({n for n in by.values() if n is not None})
    if not numbers:
        return "an earlier run"
    these = (f"pass {numbers[0]}" if len(numbers) == 1 else
             f"passes {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}") + " of this run"
    return f"an earlier run and {these}" if None in by.values() else these


def teacher_samples_kept(run_dir: Path, fingerprint: str | None, to_run) -> tuple[int, int]:
    """(shards written, shards in all) of the teacher-sample caches in `run_dir` that a distill pass
    among `to_run` (the passes a rerun still runs) reads back: those whose about.json
    (distill_data._write_about) holds this `fingerprint` (teacher, calibration and seed) and that pass's
    num_samples, sample_steps, batch_size and guidance_scale, as the cache's key does. Caches of other
    settings, or of an older dit-compress (no about.json), are not read back; no fingerprint: none."""
    wanted = [samples_keys(p.config) for p in to_run
              if getattr(p, "name", None) == "distill" and getattr(p.config, "data", None) == "teacher_samples"]
    written = shards = 0
    for about in (Path(run_dir) / TEACHER_SAMPLES).glob(f"*/{SAMPLES_ABOUT}") if fingerprint and wanted else ():
        try:
            got = json_read.read(about)
        except (OSError, ValueError):
            continue
        if isinstance(got, dict) and got.get("fingerprint") == fingerprint and samples_keys(got) in wanted:
            written += sum(1 for _ in about.parent.glob("shard-*.safetensors"))
            shards += got.get("shards") or 0
    return written, shards


def samples_keys(config) -> tuple:
    """(num_samples, sample_steps, batch_size, guidance_scale) of a DistillConfig or an about.json."""
    keys = ("num_samples", "sample_steps", "batch_size", "guidance_scale")
    return tuple(config.get(k) if isinstance(config, dict) else getattr(config, k, None) for k in keys)
