"""What an svd pass reads back of the block statistics and output Fishers an earlier run (or an earlier
pass of this run) measured for its student, said as it starts (`say_read_back`) and how many it read
once its stage is saved (`say_read_back_at_end`), as plain functions of the Runner. Moved out of
runner_stages; the words are runner_kept's."""

from __future__ import annotations

from compress.report import console
from compress.runner_kept import (OF_IT_NOW, fisher_folder, mark_read_by, measured_by, measured_by_in_words,
                                  offered_files, read_back_at_end_in_words, read_back_in_words)


def say_read_back(runner, start: int, student) -> None:
    """Where pass `start` is an svd pass, how many of the block statistics and output Fishers it reads
    back, once, as it starts: those an earlier run (interrupted, or finished) measured for this teacher,
    calibration (fingerprint) and student (its `model_digest`, as the pass keys its cache), which a
    --resume, a --restart and a plain rerun alike read back, or an earlier svd pass of this run of the
    same student (one that changed nothing) measured: said as whose (`measured_by`)."""
    fingerprint = getattr(runner.ctx, "fingerprint", None)
    if start >= len(runner.passes) or runner.passes[start].name != "svd" or not fingerprint:
        return
    from compress.calib import model_digest

    digest = model_digest(student, runner.ctx.block_map, runner.models.blocks)  # blocks: None when resident
    cache = runner.run_dir / "calib" / fingerprint / digest
    # what a Ctrl-C from now on says --resume reads back (runner_kept.read_caches), and the recipe that
    # made what the pass reads (runner_caches keeps the cache while a recipe's passes before it match)
    mark_read_by(cache, start, runner.recipe.raw["passes"][:start])
    fishers = fisher_folder(runner.passes[start].config)  # not other probes' Fishers
    offered = offered_files(cache, fishers)
    kept = read_back_in_words(offered)
    runner.offered = (start, offered)  # what say_read_back_at_end counts among
    runner.seen = seen = getattr(runner, "seen", {})  # {cache: (pass index, who measured its files)} of this run
    by = measured_by(seen.get(cache), {(kind, name) for kind, names in zip("sf", offered) for name in names})
    seen[cache], runner.offered_by = (start, by), measured_by_in_words(by)  # an earlier pass of this run's
    if kept:
        console.print(f"  pass {start + 1} (svd) finds {kept} that {runner.offered_by} measured: it reads back those "
                      f"{OF_IT_NOW}, and says how many when it ends",
                      highlight=False, markup=False)


def say_read_back_at_end(runner, i: int) -> None:
    """As pass i's stage is saved (`save_stage`), after the svd pass i that `say_read_back` said finds
    what an earlier run measured: how many of those files it read back (its StatsCache's hits, the
    output Fishers it did not measure again), which only the pass knows (the names of its statistics
    hash the blocks' inputs and the ranks so far): a pass of other targets or ranks reads back fewer,
    or none."""
    start, (stats, fishers) = getattr(runner, "offered", (None, (set(), set())))
    runner.offered = (None, (set(), set()))  # said once
    if start != i or not (stats or fishers):
        return
    p = runner.passes[i]
    cache = getattr(p, "cache", None)
    read = len(stats & set(getattr(cache, "hits", ()))) + len(fishers & set(getattr(p, "fishers_read", ())))
    damaged = len(stats & set(getattr(cache, "damaged", ())))
    by = getattr(runner, "offered_by", "an earlier run")
    console.print(f"  pass {i + 1} (svd) {read_back_at_end_in_words(read, len(stats) + len(fishers), by, damaged)}",
                  highlight=False, markup=False)
