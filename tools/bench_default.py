"""The embedded default end to end: run `recipes/toy-pixart.yaml` and `recipes/toy-flux.yaml`, then
score each student with the toy evaluator (200 samples, 20 steps, guidance 3, seed 0) against its
teacher. Prints the README's embedded-default rows. `--set` overrides both recipes' keys as
`dit-compress run --set` does (e.g. the svd passes without compensation:
`--set passes.2.svd.compensate=false --set passes.3.svd.compensate=false`).

    python tools/bench_default.py [--set KEY.PATH=VALUE ...]
    python tools/bench_default.py --time [--objectives branches auto] [--families pixart flux] [--set ...]

`--time` scores nothing: it times each toy recipe once per `svd.objective` (every svd pass set to it, as
`--set passes.2.svd.objective=branches --set passes.3.svd.objective=branches` does), each run a fresh
child process of this script, single-threaded (`OMP_NUM_THREADS=1` and `torch.set_num_threads(1)`, as the
README's timings were measured), all runs side by side (at the same time, so they share the machine's
load; on a shared machine the CPU seconds are the figures to compare, the wall seconds follow
the load). Per pass it prints the wall seconds report.json's `stages[].seconds` records (the pass and its
held-out check), the CPU seconds of the process over the same stage (time.process_time around it,
its stage checkpoint's save too), each pass's share of the run's CPU seconds, and each later objective's
wall and CPU seconds over the first's; then the rest of the run (loading, calibration, export:
Runner.run's CPU seconds less its passes'), the run (time.process_time and the wall clock around
Runner.run) and the whole child process (resource.getrusage, torch's import included, as
`/usr/bin/time dit-compress run` counts it). The load average at the start and end is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compress.io import load_teacher
from compress.io_output import load_transformer
from compress.recipe import load_recipe, parse_recipe
from compress.runner import Runner
from compress.toy.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from bench_objective import OBJECTIVE_KEY, objective_sets  # noqa: E402  (every svd pass's objective)
from bench_plan_memory import given_win  # noqa: E402  (a tool's own --sets, the user's winning)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OBJECTIVES = ("auto", "branches", "guided", "guided_fisher", "guided_compensation")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--time", action="store_true", help="time the runs per svd.objective instead of scoring")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=["branches", "auto"],
                        help="with --time: the first is the one the others are divided by")
    parser.add_argument("--families", nargs="+", choices=["pixart", "flux"], default=["pixart", "flux"],
                        help="with --time: the toy recipes timed")
    parser.add_argument("--time-one", nargs=3, metavar=("FAMILY", "OBJECTIVE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time_one:
        return time_one(*args.time_one, args.overrides)
    if args.time:
        if given := next((s for s in args.overrides if OBJECTIVE_KEY.fullmatch(s.partition("=")[0].strip())), None):
            parser.error(f"--set {given}: --time sets each svd pass's objective itself, to each of --objectives "
                         "in turn: give them with --objectives")
        return time_runs(args.families, list(dict.fromkeys(args.objectives)), args.overrides)
    evaluate_runs(args.overrides)


def evaluate_runs(overrides: list[str]) -> None:
    """The README's embedded-default rows: each toy recipe run, its student scored against its teacher."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("pixart", "flux"):
            recipe = load_recipe(RECIPES / f"toy-{family}.yaml", overrides)
            start = time.perf_counter()
            out = Runner(recipe, Path(tmp) / family, Path(tmp) / f"run-{family}").run()
            seconds = time.perf_counter() - start
            teacher = load_teacher(recipe.teacher)
            student = load_transformer(out)
            n_t = sum(p.numel() for p in teacher.parameters())
            n_s = sum(p.numel() for p in student.parameters())
            rows.append((family, seconds, n_s, n_s / n_t, evaluate(student, family, teacher=teacher),
                         json.loads((out / "report.json").read_text())["stages"]))
    print(f"\n{'recipe':<18}{'run s':>7}{'params':>12}{'kept':>8}{'adher.':>8}{'FD':>8}"
          f"{'MMD2':>9}{'PSNR dB':>9}{'pred err':>10}")
    for family, seconds, n_s, kept, r, _ in rows:
        print(f"{'toy-' + family + '.yaml':<18}{seconds:>7.0f}{n_s:>12,}{kept:>8.1%}{r['adherence']:>8.3f}"
              f"{r['fd']:>8.1f}{r['mmd']:>9.4f}{r['psnr_vs_teacher']:>9.1f}{r['pred_rel_error']:>10.3f}")
    for family, *_, stages in rows:  # the run's own held-out teacher-relative error after each pass
        print(f"toy-{family}.yaml after each pass: "
              + " -> ".join(f"{s['pass']} {s['relative_error']:.4f}{_guided(s)} ({s['seconds']:.0f} s)"
                            for s in stages))


def _guided(stage: dict) -> str:
    """' guided 0.2243' where the stage recorded its guided error (runner_heldout), else ''."""
    g = stage.get("guided_error")
    return "" if g is None else f" guided {g:.4f}"


class TimedRunner(Runner):
    """A Runner that keeps each pass's CPU seconds (time.process_time around its stage: the pass, its
    stage checkpoint's save and its held-out check) in `cpu`."""

    def _stage(self, i: int, *args):
        c0 = time.process_time()
        student = super()._stage(i, *args)
        self.cpu = [*getattr(self, "cpu", []), time.process_time() - c0]
        return student


def time_one(family: str, objective: str, path: str, overrides: list[str]) -> None:
    """A child of `time_runs`: one fresh single-threaded run of toy-FAMILY.yaml with every svd pass at
    `objective`, its figures written to `path` as JSON."""
    import torch

    torch.set_num_threads(1)
    text = (RECIPES / f"toy-{family}.yaml").read_text()
    recipe = parse_recipe(text, f"toy-{family}.yaml", given_win(objective_sets(text, objective), overrides))
    tmp = Path(path).parent
    runner = TimedRunner(recipe, tmp / f"out-{family}-{objective}", tmp / f"run-{family}-{objective}")
    t0, c0 = time.perf_counter(), time.process_time()
    out = runner.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stages = json.loads((Path(out) / "report.json").read_text())["stages"]
    Path(path).write_text(json.dumps(dict(passes=[s["pass"] for s in stages], wall=[s["seconds"] for s in stages],
                                          cpu=runner.cpu, run_wall=wall, run_cpu=cpu,
                                          process_cpu=usage.ru_utime + usage.ru_stime)))


def time_runs(families: list[str], objectives: list[str], overrides: list[str]) -> None:
    """Every run (a family under an objective) at the same time, each in a child process; then their tables."""
    print(f"load average at start: {_load()}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        children = {}
        for family, objective in ((f, o) for f in families for o in objectives):
            path, log = Path(tmp) / f"{family}-{objective}.json", Path(tmp) / f"{family}-{objective}.log"
            cmd = [sys.executable, __file__, "--time-one", family, objective, str(path)]
            cmd += [a for s in overrides for a in ("--set", s)]
            with log.open("w") as f:
                children[family, objective] = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        codes = {run: child.wait() for run, child in children.items()}
        print(f"load average at end: {_load()}")
        for (family, objective), code in codes.items():
            if code:
                sys.exit(f"bench_default --time: toy-{family}.yaml under {objective} failed (exit {code}):\n"
                         + (Path(tmp) / f"{family}-{objective}.log").read_text()[-4000:])
        results = {f: {o: json.loads((Path(tmp) / f"{f}-{o}.json").read_text()) for o in objectives} for f in families}
    for family, runs in results.items():
        print(f"\ntoy-{family}.yaml, single-threaded, {len(families) * len(objectives)} runs side by side")
        print(time_table(runs))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_rows(run: dict) -> list[tuple[str, float | None, float]]:
    """(label, wall s or None, CPU s) per pass, then the rest of the run, the run, the whole process."""
    rows = [(f"{i + 1} {p}", w, c) for i, (p, w, c) in enumerate(zip(run["passes"], run["wall"], run["cpu"]))]
    rest = (run["run_wall"] - sum(run["wall"]), run["run_cpu"] - sum(run["cpu"]))
    return rows + [("rest of run", *rest), ("run", run["run_wall"], run["run_cpu"]),
                   ("process", None, run["process_cpu"])]


def time_table(runs: dict[str, dict]) -> str:
    """Per objective wall s, CPU s and CPU share of the run; then each later objective's over the first's."""
    names, rows = list(runs), {o: time_rows(r) for o, r in runs.items()}
    head = f"{'':<16}" + "".join(f"{o[:12] + ' wall':>18}{'CPU':>8}{'share':>7}" for o in names)
    head += "".join(f"{(o + '/' + names[0])[:22] + ' wall':>28}{'CPU':>7}" for o in names[1:])
    lines = [head]
    for j, (label, *_) in enumerate(rows[names[0]]):
        line = f"{label:<16}"
        for o in names:
            _, wall, cpu = rows[o][j]
            share = f"{cpu / runs[o]['run_cpu']:>7.0%}" if j < len(rows[o]) - 1 else f"{'':>7}"
            line += f"{_num(wall, '.1f'):>18}{cpu:>8.1f}{share}"
        for o in names[1:]:
            (_, wall, cpu), (_, wall0, cpu0) = rows[o][j], rows[names[0]][j]
            ratio = None if wall is None or not wall0 else wall / wall0
            line += f"{_num(ratio, '.2f'):>28}{_num(cpu / cpu0 if cpu0 else None, '.2f'):>7}"
        lines.append(line)
    return "\n".join(lines)


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


if __name__ == "__main__":
    main()
