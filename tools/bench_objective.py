"""svd.objective on the embedded default: run `recipes/toy-<family>.yaml` once per objective (both svd passes'
`svd.objective` set to it; fresh runs, as `dit-compress run recipes/toy-pixart.yaml --set
passes.2.svd.objective=guided_compensation --set passes.3.svd.objective=guided_compensation` makes) at
calibration seed `--seed` (the distillation's seed too), and print per objective the run's held-out
conditional / guided error (report.json's `relative_error` / `guided_error`) after the last svd pass and
after distill, the svd passes' seconds (their stages' `seconds`, held-out measuring included) and the
whole run's, then each later objective's figures over the first's.

    python tools/bench_objective.py --family pixart [--seed 0] [--objectives branches guided_compensation]
                                    [--no-distill] [--set KEY.PATH=VALUE ...]

A `--set calibration.seed=N` is run as given (over `--seed`); a `--set` of an svd pass's objective is refused
(the tool sets it: give `--objectives`).
Each run sets every svd pass's objective explicitly, never the default `auto` (which runs as guided_compensation
on these recipes, a distill pass following, and as branches with `--no-distill`: svd_objective.resolve, chosen
from the figures below).

Measured (toy recipes as shipped, 2-core machine shared with other jobs at load 5-21; the errors repeat to the
last digit, the seconds do not), guided_compensation over branches, conditional / guided, after global
allocation's sensitivity weighed the guided prediction under a guided objective (b691456; branches' runs are
unchanged by it, bit-identical), every seed on the held-out inputs all seeds share (6ff4c56; seed 0's as before):
  seed  family  after the svd passes   after distill     svd passes' seconds
  0     PixArt  1.148 / 0.714          0.937 / 0.949     -
  1     PixArt  1.503 / 0.857          1.011 / 1.000     -
  2     PixArt  1.293 / 0.863          0.949 / 0.946     -
  0     Flux    1.472 / 0.798          0.981 / 0.992     -
  1     Flux    1.378 / 0.682          0.974 / 0.967     -
  2     Flux    1.459 / 0.714          0.960 / 0.957     -
Figures, branches -> guided_compensation, conditional / guided after the svd passes -> after distill:
  seed 0 PixArt 0.1717 / 0.2249 -> 0.06519 / 0.1089;  0.1971 / 0.1606 -> 0.06111 / 0.1034 (881,168 params)
  seed 1 PixArt 0.1331 / 0.1860 -> 0.06252 / 0.1053;  0.2001 / 0.1593 -> 0.06320 / 0.1052 (880,144; branches 881,168)
  seed 2 PixArt 0.1546 / 0.2086 -> 0.06557 / 0.1087;  0.1999 / 0.1800 -> 0.06223 / 0.1028 (881,168)
  seed 0 Flux   0.1473 / 0.2611 -> 0.08019 / 0.1545;  0.2168 / 0.2084 -> 0.07867 / 0.1533 (1,015,120 params)
  seed 1 Flux   0.1585 / 0.3045 -> 0.08189 / 0.1585;  0.2184 / 0.2077 -> 0.07977 / 0.1533 (1,015,120)
  seed 2 Flux   0.1483 / 0.2778 -> 0.07912 / 0.1569;  0.2164 / 0.1983 -> 0.07597 / 0.1501 (1,015,120)
(seeds 1-2 run on 0b0f66e-9e811a6, whose commits between changed no toy run's figures; Flux's two objectives in
separate runs of the tool, `--objectives branches` and `--objectives guided_compensation`, their ratios from the
figures above; seed 0's branches from before b691456. Before 6ff4c56 seeds 1-2 were measured on held-out inputs
of their own, drawn with calibration.seed + 1, where PixArt seed 1 read 0.981 / 0.968 after distill.)
Over seeds 0-2: after the svd passes guided 0.68-0.86x, conditional 1.15-1.50x; after distill PixArt 0.94-1.01x
conditional / 0.95-1.00x guided, Flux 0.96-0.98x / 0.96-0.99x: lower on both errors at every seed and family but
PixArt's seed 1, where distillation ended both even.
The seconds' ratio followed the machine's load (0.49-1.87x before b691456; 0.34-1.63x at seeds 1-2 above, load
6-21), not the objective. Before b691456 the same table read, after the svd passes / after distill (seeds 1-2 on
their own held-out inputs): PixArt 1.133 / 0.719, 0.930 / 0.940 (seed 0);
1.449 / 0.841, 0.969 / 0.966 (1); 1.274 / 0.829, 0.956 / 0.951 (2); Flux 1.470 / 0.799, 0.987 / 0.995 (0);
1.384 / 0.686, 0.970 / 0.953 (1); 1.471 / 0.755, 0.981 / 0.975 (2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from compress.recipe import parse_recipe
from compress.runner import Runner

sys.path.insert(0, str(Path(__file__).parent))
from bench_plan_memory import given_win  # noqa: E402  (a tool's own --sets, the user's winning)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OBJECTIVES = ("branches", "guided", "guided_fisher", "guided_compensation")
COLUMNS = ("svd cond", "svd guided", "distill cond", "distill guided", "svd s", "run s")


OBJECTIVE_KEY = re.compile(r"passes\.\d+\.svd\.objective")  # the tool's own, per objective (objective_sets)


def without_distill(text: str) -> str:
    """The recipe text without its distill pass (the last before `export:`)."""
    return re.sub(r"\n  - distill:\n.*?(?=\nexport:)", "\n", text, flags=re.S)


def objective_sets(text: str, objective: str) -> list[str]:
    """`passes.N.svd.objective=OBJECTIVE` for each svd pass of the recipe `text`."""
    passes = parse_recipe(text, "recipe.yaml").passes
    return [f"passes.{i}.svd.objective={objective}" for i, p in enumerate(passes) if p.name == "svd"]


def figures(stages: list[dict], seconds: float) -> dict:
    """COLUMNS of one run from its report.json `stages` and its wall seconds (None: no distill pass)."""
    svd = [s for s in stages if s["pass"] == "svd"]
    distill = [s for s in stages if s["pass"] == "distill"]
    after = distill[-1] if distill else {}
    return dict(zip(COLUMNS, (svd[-1]["relative_error"], svd[-1].get("guided_error"), after.get("relative_error"),
                              after.get("guided_error"), sum(s["seconds"] for s in svd), seconds)))


def run(text: str, sets: list[str], tmp: Path, name: str) -> dict:
    """figures of one fresh run of the recipe `text` with `sets` (output and run folder under `tmp`)."""
    recipe = parse_recipe(text, f"{name}.yaml", sets)
    start = time.perf_counter()
    out = Runner(recipe, tmp / name, tmp / f"run-{name}").run()
    seconds = time.perf_counter() - start
    return figures(json.loads((Path(out) / "report.json").read_text())["stages"], seconds)


def _cell(value: float | None, column: str) -> str:
    if value is None:
        return f"{'-':>15}"
    return f"{value:>15.1f}" if column.endswith(" s") else f"{value:>#15.4g}"


def table(rows: dict[str, dict]) -> str:
    """Rows of figures by objective, then each later objective's over the first's (3 decimals)."""
    names = list(rows)
    width = max(len(f"{n} / {names[0]}") for n in names)
    lines = [f"{'objective':<{width}}" + "".join(f"{c:>15}" for c in COLUMNS)]
    lines += [f"{n:<{width}}" + "".join(_cell(rows[n][c], c) for c in COLUMNS) for n in names]
    for n in names[1:]:
        cells = [_ratio(rows[n][c], rows[names[0]][c]) for c in COLUMNS]
        lines.append(f"{n + ' / ' + names[0]:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{'-':>15}" if a is None or not b else f"{a / b:>15.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["pixart", "flux"], default="pixart")
    parser.add_argument("--seed", type=int, default=0, help="calibration.seed (the distillation's seed too)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=["branches", "guided_compensation"],
                        help="the first is the one the others are divided by")
    parser.add_argument("--no-distill", action="store_true", help="run the recipe without its distill pass")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    text = (RECIPES / f"toy-{args.family}.yaml").read_text()
    text = without_distill(text) if args.no_distill else text
    if objective := next((s for s in args.overrides if OBJECTIVE_KEY.fullmatch(s.partition("=")[0].strip())), None):
        parser.error(f"--set {objective}: the tool sets each svd pass's objective itself, to each of --objectives "
                     "in turn: give them with --objectives")
    sets = given_win([f"calibration.seed={args.seed}"], args.overrides)  # --set calibration.seed wins
    seed = parse_recipe(text, "recipe.yaml", sets).calibration.seed
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in dict.fromkeys(args.objectives):
            rows[objective] = run(text, sets + objective_sets(text, objective), Path(tmp), objective)
    print(f"\ntoy-{args.family}.yaml, seed {seed}: held-out conditional / guided error after the last svd pass "
          "and after distill, seconds")
    print(table(rows))


if __name__ == "__main__":
    main()
