"""The caches a run removes from its run folder, measured on the embedded default.

The figures for runner_caches in docs/RUNS.md ("Caches a run removes"): an interrupted svd pass's `fisher-<N>probes/`, `inputs/`
after a prompt change and --restart, the run folder after a ratio and a seed change.

Three scenarios on `recipes/toy-pixart.yaml`, each in its own run folder under a temporary folder,
runs in this process through `Runner` (as `dit-compress run ... --run-dir RUN --overwrite`):

  fishers  an svd pass of the recipe's `fisher_probes` (4) stopped by a KeyboardInterrupt raised as
           it starts factorizing (`SVDPass._compress`, patched for that call only, as
           tests/test_runner_caches_runs.py stops one), its output Fishers measured and kept in
           calib/<fp>/<model>/fisher-4probes/; a --resume with `fisher_probes: 2` (keeps them: the
           folder's last run did not finish; a plain rerun is refused over the saved passes), then that
           recipe again (a plain run), which removes them.
           Measured: fisher-4probes/ and the run folder, before and after that last run.
  calls    pipeline calibration in the toy's pipeline (`source: pipeline`, 8 prompts, the last one
           held out, `timesteps: 2`, `sample_steps: 2`, `num_prompts` dropped): the prompts
           "a handwritten 0" ... "7", then the spelled-out "a handwritten zero" ... "seven" (a plain
           run: keeps the first prompts' calls and says so), then those again with --restart, which
           removes them. Measured: inputs/ and the run folder, before and after the --restart run.
  restart  the recipe as shipped, then `passes.2.svd.ratio=0.4` (`--ratio`; a plain run), then that with
           `calibration.seed=1` and --restart. Measured: the run folder before and after the last
           run, and what the last two runs freed.

`fishers` and `calls` cut the distill pass to `steps: 20` (`warmup_steps: 2`): its steps key
none of the caches measured (its teacher samples are keyed by num_samples, sample_steps, batch_size
and guidance_scale, its checkpoints go once it finishes). `restart` runs the recipe unchanged.

Prints a line per folder measured (the scenario's subject, then its whole run folder): its bytes
before and after the scenario's last run, as the sum of the sizes of the files under it (links not
followed; `files`) and as `du -sb` sums them (each folder's own entry too, 4096 bytes on ext4);
`logged there`: the bytes of the paths in that folder the run appended to RUN/removed-caches.log;
`note: all` / `log: all`: all the run removed, as its "removed caches ... freed" note says (to its
rounding) and as the log sums it. Then each scenario's note, and for `restart` what each of its
last two runs freed and what the run folder would hold without removal (kept + freed).
`--keep DIR` runs in DIR/<scenario>/ (empty or new) and leaves the run folders there.

    python tools/bench_caches.py [--only fishers calls restart] [--ratio 0.4] [--keep DIR]   (about 12 minutes on 2 shared CPUs)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.recipe import load_recipe  # noqa: E402
from compress.runner import Runner  # noqa: E402
from compress.runner_caches import REMOVED_LOG  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "toy-pixart.yaml"
SVD = 2  # the attention / cross-attention / MLP svd pass of the recipe
SHORT = ["passes.4.distill.steps=20", "passes.4.distill.warmup_steps=2"]  # no cache measured depends on distill's steps
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
PIPELINE = ["calibration.source=pipeline", "calibration.num_prompts=null", "calibration.timesteps=2",
            "calibration.sample_steps=2", "calibration.heldout=4"]  # 4 inputs: the last prompt's 2 x 2 branches


def prompts(words: list[str]) -> list[str]:
    """--set calibration.prompts=[...] of 'a handwritten W' for each of `words`."""
    return ["calibration.prompts=[" + ", ".join(f"a handwritten {w}" for w in words) + "]"]


def folder_bytes(path: Path, entries: bool = False) -> int:
    """The bytes of the files under `path` (links not followed; 0 where it is gone); `entries`: also
    each folder's own size, `path`'s too, as `du -sb` sums them."""
    path = Path(path)
    if not path.exists():
        return 0
    total = path.lstat().st_size if entries and path.is_dir() else 0
    for p in [path] if path.is_file() else path.rglob("*"):
        try:
            if p.is_symlink():
                continue
            if p.is_file() or (entries and p.is_dir()):
                total += p.lstat().st_size
        except OSError:
            pass
    return total


UNITS = {"bytes": 1, "byte": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def freed_in_note(notes: list[str]) -> int | None:
    """The bytes a 'removed caches ... : 15.8 MiB freed' note says (to its rounding); None: no such note."""
    said = [re.search(r"removed caches .*: ([0-9.]+) (bytes?|KiB|MiB|GiB) freed", n, re.S) for n in notes]
    said = [m for m in said if m]
    return round(sum(float(m[1]) * UNITS[m[2]] for m in said)) if said else None


class Notes:
    """The notes compress.report.note prints (runner_caches imports it as it calls it), recorded."""

    def __init__(self):
        import compress.report as report

        self.said: list[str] = []
        self.real = report.note
        report.note = lambda text: (self.said.append(text), self.real(text))[1]

    def take(self) -> list[str]:
        said, self.said = self.said, []
        return said


def logged_bytes(run_dir: Path, skip: int, under: Path | None = None) -> tuple[int, int]:
    """(bytes on the lines of RUN/removed-caches.log after its first `skip`, those of paths in the
    folder `under` of the run folder alone where given; the log's line count)."""
    log = Path(run_dir) / REMOVED_LOG
    lines = [line.split("\t") for line in (log.read_text().splitlines() if log.is_file() else [])]
    inside = [n for _, path, n in lines[skip:] if under in (None, Path(".")) or under in Path(path).parents
              or Path(path) == under]
    return sum(int(n) for n in inside), len(lines)


def run(tmp: Path, sets: list[str], **kw) -> None:
    Runner(load_recipe(RECIPE, sets), tmp / "out", tmp / "run", overwrite=True, **kw).run()


def measured(tmp: Path, subject: Path, last: list[str], notes: Notes, **kw) -> dict:
    """The scenario's last run (`last`: its --set) in `tmp`, and the bytes of `subject` and the run
    folder before and after it, what its notes said it freed and what it logged."""
    folder = tmp / "run"
    before = {p: (folder_bytes(p), folder_bytes(p, True)) for p in (subject, folder)}
    _, lines = logged_bytes(folder, 0)
    notes.take()
    run(tmp, last, **kw)
    said = notes.take()
    after = {p: (folder_bytes(p), folder_bytes(p, True)) for p in (subject, folder)}
    within = subject.relative_to(folder)
    return {"subject": short(within), "before": before[subject], "after": after[subject],
            "run_before": before[folder], "run_after": after[folder], "note": freed_in_note(said),
            "log": logged_bytes(folder, lines)[0], "log_in": logged_bytes(folder, lines, within)[0],
            "said": [n for n in said if "caches" in n]}


def short(path: Path) -> str:
    """`path` (in a run folder) with its calib/ fingerprint and model digest as <fp>/<model>."""
    parts = path.parts
    return "/".join(("calib", "<fp>", "<model>", *parts[3:])) if parts[:1] == ("calib",) and len(parts) > 3 else str(path)


def fishers(tmp: Path, notes: Notes) -> dict:
    from compress.passes.svd import SVDPass

    real = SVDPass._compress

    def stopped(*a, **k):
        SVDPass._compress = real
        raise KeyboardInterrupt  # the output Fishers measured and kept, no target factorized
    SVDPass._compress = stopped
    try:
        run(tmp, SHORT)
    except KeyboardInterrupt:
        pass
    finally:
        SVDPass._compress = real
    [kept] = (tmp / "run" / "calib").glob("*/*/fisher-4probes")
    other = SHORT + [f"passes.{SVD}.svd.fisher_probes=2"]
    run(tmp, other, resume=True)  # passes 1-2 kept, pass 3 run again; the folder's last run stopped: kept
    return measured(tmp, kept, other, notes)


def calls(tmp: Path, notes: Notes) -> dict:
    run(tmp, SHORT + PIPELINE + prompts([str(i) for i in range(8)]))
    spelled = SHORT + PIPELINE + prompts(DIGITS)
    run(tmp, spelled)  # another calibration: the first prompts' calls kept, named in a note
    return measured(tmp, tmp / "run" / "inputs", spelled, notes, restart=True)


def restart(tmp: Path, notes: Notes, ratio: float = 0.4) -> dict:
    run(tmp, [])
    rerated = [f"passes.{SVD}.svd.ratio={ratio}"]
    notes.take()
    run(tmp, rerated)
    earlier = logged_bytes(tmp / "run", 0)[0]
    row = measured(tmp, tmp / "run", rerated + ["calibration.seed=1"], notes, restart=True)
    return dict(row, earlier=earlier, ratio=ratio)


SCENARIOS = {"fishers": fishers, "calls": calls, "restart": restart}


def table(rows: dict[str, dict]) -> str:
    """A line per folder measured: the scenario's subject, then its run folder (where that is another)."""
    lines = [f"{'scenario':<9}{'measured':<34}{'before: files':>14}{'du -sb':>12}{'after: files':>14}{'du -sb':>12}"
             f"{'logged there':>14}{'note: all':>12}{'log: all':>12}"]
    for name, r in rows.items():
        folders = [(r["subject"], r["before"], r["after"], r["log_in"])]
        if r["subject"] != ".":
            folders.append((".", r["run_before"], r["run_after"], r["log"]))
        for label, b, a, logged in folders:
            label = "run folder" if label == "." else label
            note = "-" if r["note"] is None else f"{r['note']:,}"
            lines.append(f"{name:<9}{label:<34}{b[0]:>14,}{b[1]:>12,}{a[0]:>14,}{a[1]:>12,}{logged:>14,}"
                         f"{note:>12}{r['log']:>12,}")
    return "\n".join(lines)


def in_units(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n / 1e6:.1f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--ratio", type=float, default=0.4, help="restart: the svd ratio the recipe's 0.6 changes to")
    parser.add_argument("--keep", type=Path, help="run in this folder (made; kept) instead of a temporary one")
    args = parser.parse_args()
    used = [args.keep / n for n in args.only if args.keep and (args.keep / n).exists() and any((args.keep / n).iterdir())]
    if used:
        parser.error(f"--keep: {used[0]} is not empty (the scenarios start from empty run folders)")
    notes, rows = Notes(), {}
    scenarios = dict(SCENARIOS, restart=partial(restart, ratio=args.ratio))
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        for name in args.only:
            (base / name).mkdir(parents=True, exist_ok=True)
            rows[name] = scenarios[name](base / name, notes)
    print(f"\nrecipe {RECIPE.name}; fishers and calls with --set {' '.join(SHORT)}. Bytes before and after the "
          "scenario's last run: files alone, and du -sb (folder entries too); logged there: the bytes of the paths "
          "in the measured folder that run appended to removed-caches.log; note, log: all that run removed, as "
          "its note says (rounded) and as the log sums")
    print(table(rows))
    for name, r in rows.items():
        print(f"{name}: {' | '.join(r['said']) or 'no note'}")
    if "restart" in rows:
        r = rows["restart"]
        print(f"restart: the ratio change (0.6 -> {r['ratio']}) freed {in_units(r['earlier'])}, the seed change with --restart "
              f"{in_units(r['log'])}; the run folder keeps {in_units(r['after'][0])}, without removal "
              f"{in_units(r['after'][0] + r['earlier'] + r['log'])} (files)")


if __name__ == "__main__":
    main()
