"""`dit-compress plan`'s estimated peak memory against the measured one: for each recipe, the plan's
`memory.bytes` (`plan --json`) and the peak resident memory (ru_maxrss) of `dit-compress run` of
the same recipe into a fresh temp folder, as the only child of a fresh small wrapper process
(its RUSAGE_CHILDREN: each row is one run's peak alone). Prints a table of both and
planned / measured (above 1: the plan over-counts).

By default the distill passes are shortened (`--set passes.N.distill.steps=30`, `num_samples=64`,
`sample_steps=4`), and so are learned block removals (`remove_blocks.learn_steps=20`): that changes
how long they train and sample, not what a step holds (same batches, model and optimizer), so the
peak is the same; `--full` runs the recipes as they are. A `--set` of a key the tool shortens
(`--set passes.4.distill.steps=100`) is run as given.
A run prints what it shortened. Default recipes: the shipped toy ones, `recipes/toy-pixart.yaml` and
`recipes/toy-flux*.yaml`.

    python tools/bench_plan_memory.py                                  # the toy recipes, shortened
    python tools/bench_plan_memory.py recipes/toy-pixart-stream.yaml --set calibration.timesteps=4
    python tools/bench_plan_memory.py --full
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# What --full leaves as the recipe has it: keys that set how long a pass runs, not what a step holds.
SHORTER = {"distill": {"steps": 30, "num_samples": 64, "sample_steps": 4},
           "remove_blocks": {"learn_steps": 20}}  # criterion: learned only


def default_recipes() -> list[Path]:
    return [RECIPES / "toy-pixart.yaml", *sorted(RECIPES.glob("toy-flux*.yaml"))]


def shortened(recipe: dict) -> list[str]:
    """`--set` overrides that shorten a recipe's (a parsed YAML mapping) distill passes and learned
    block removals: each key of SHORTER that the pass leaves out or sets above its shorter value."""
    sets = []
    for index, entry in enumerate(recipe.get("passes") or []):
        name, cfg = next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else (None, None)
        cfg = cfg or {}
        if name not in SHORTER or not isinstance(cfg, dict) or (
                name == "remove_blocks" and cfg.get("criterion") != "learned"):
            continue
        sets += [f"passes.{index}.{name}.{key}={value}" for key, value in SHORTER[name].items()
                 if not isinstance(cfg.get(key), int) or cfg[key] > value]
    return sets


def given_win(builtin: list[str], given: list[str]) -> list[str]:
    """A tool's own --sets `builtin`, but those of a key one of the user's --sets `given` sets (or sets a
    key above), then `given`: the user's --set wins (a key set twice is refused: recipe_set's
    refuse_repeated, naming a --set the user never typed)."""
    keys = [s.partition("=")[0].strip() for s in given]
    return [s for s in builtin if not any(_at_or_below(s.partition("=")[0].strip(), k) for k in keys)] + given


def _at_or_below(key: str, above: str) -> bool:
    return key == above or key.startswith(above + ".")


def planned_peak(plan: dict) -> tuple[int, str]:
    """(bytes, the phase it is in) of `plan --json`'s estimated peak: `memory.bytes`, while distill
    trains or before it (calibration and the svd passes)."""
    memory = plan["memory"]
    return memory["bytes"], memory.get("while") or "before distill"


def ratio(planned: int, measured: int) -> float:
    """planned / measured: above 1 the plan over-counts, below 1 it under-counts."""
    return planned / measured


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(rows: list[dict]) -> str:
    """A markdown table of rows {recipe, planned, phase, measured, seconds}."""
    lines = ["| recipe | planned peak (`plan --json` memory.bytes) | planned at | measured peak (ru_maxrss) "
             "| planned / measured | run s |", "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['recipe']} | {gib(r['planned'])} | {r['phase']} | {gib(r['measured'])} "
              f"| {ratio(r['planned'], r['measured']):.2f} | {r['seconds']:.0f} |" for r in rows]
    return "\n".join(lines)


def dit_compress() -> list[str]:
    """The console script beside this Python (the venv's), else the one on PATH."""
    found = shutil.which("dit-compress", path=str(Path(sys.executable).parent)) or shutil.which("dit-compress")
    if not found:
        raise SystemExit("dit-compress is not installed beside this Python nor on PATH (pip install -e .)")
    return [found]


def plan_json(recipe: Path, sets: list[str]) -> dict:
    done = subprocess.run([*dit_compress(), "plan", str(recipe), "--json", *_set_args(sets)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"dit-compress plan {recipe} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


# Run in a fresh small Python (no torch): a child's ru_maxrss starts at its parent's resident set
# when it is forked (and exec keeps that high-water mark), so a large parent would be counted in.
WRAPPER = ("import json, resource, subprocess, sys\n"
           "with open(sys.argv[1], 'w') as log:\n"
           "    code = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)\n"
           "print(json.dumps([code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")


def measured_run(recipe: Path, sets: list[str], work: Path) -> tuple[int, float]:
    """(peak resident bytes, seconds) of `dit-compress run` of the recipe into `work`, the only
    child of a fresh wrapper process: its RUSAGE_CHILDREN is that run's alone (with the run's own
    children), not this process's nor an earlier run's."""
    log = work / "run.log"
    command = [*dit_compress(), "run", str(recipe), "--out", str(work / "out"), "--run-dir", str(work / "run"),
               *_set_args(sets)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(log), *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the wrapper of dit-compress run {recipe} failed:\n{done.stderr[-3000:]}")
    code, maxrss = json.loads(done.stdout)
    if code:
        raise SystemExit(f"dit-compress run {recipe} failed ({code}):\n{log.read_text()[-3000:]}")
    return maxrss * 1024, seconds  # ru_maxrss: KiB on Linux


def _set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="*", type=Path, help="recipe YAMLs (default: the shipped toy recipes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a key of every recipe, for plan and run alike")
    p.add_argument("--full", action="store_true", help="do not shorten the distill passes")
    args = p.parse_args()
    rows = []
    for recipe in args.recipes or default_recipes():
        sets = given_win([] if args.full else shortened(yaml.safe_load(recipe.read_text())), args.overrides)
        planned, phase = planned_peak(plan_json(recipe, sets))
        print(f"{recipe.name}: planned {gib(planned)} ({phase}); running"
              + (f" with --set {' --set '.join(sets)}" if sets else ""), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            measured, seconds = measured_run(recipe, sets, Path(tmp))
        rows.append(dict(recipe=recipe.name, planned=planned, phase=phase, measured=measured, seconds=seconds))
        print(f"{recipe.name}: measured {gib(measured)} in {seconds:.0f} s", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
