"""svd.objective on the embedded default: run `recipes/toy-<family>.yaml` once per objective (both svd passes'
`svd.objective` set to it; fresh runs, as `dit-compress run recipes/toy-pixart.yaml --set
passes.2.svd.objective=guided_compensation --set passes.3.svd.objective=guided_compensation` makes) at
calibration seed `--seed` (the distillation's seed too), and print per objective the run's held-out
conditional / guided error (report.json's `relative_error` / `guided_error`) after the last svd pass and
after distill, the svd passes' seconds (their stages' `seconds`, held-out measuring included) and the
whole run's, then each later objective's figures over the first's.

    python tools/bench_objective.py --family pixart [--seed 0] [--objectives branches guided_compensation]
                                    [--no-distill] [--set KEY.PATH=VALUE ...]

Measured (toy recipes as shipped, 2-core machine shared with other jobs at load 5-7; the errors repeat to the
last digit, the seconds do not), guided_compensation over branches, conditional / guided:
  seed  family  after the svd passes   after distill     svd passes' seconds (guided_compensation ran second)
  0     PixArt  1.133 / 0.719          0.930 / 0.940     0.49
  1     PixArt  1.449 / 0.841          0.969 / 0.966     0.65 (ran first)
  2     PixArt  1.274 / 0.829          0.956 / 0.951     0.57
  0     Flux    1.470 / 0.799          0.987 / 0.995     0.54
  1     Flux    1.384 / 0.686          0.970 / 0.953     1.87 (ran first)
  2     Flux    1.471 / 0.755          0.981 / 0.975     0.82
(seed 0: PixArt branches 0.1717 / 0.2249 -> 0.06519 / 0.1089, guided_compensation 0.1946 / 0.1618 -> 0.06065 /
0.1024; Flux branches 0.1473 / 0.2611 -> 0.08019 / 0.1545, guided_compensation 0.2165 / 0.2087 -> 0.07914 /
0.1537, README's figures; seed 1 with `--objectives guided_compensation branches`: PixArt 0.1066 / 0.1435 ->
0.03702 / 0.06474 and 0.1544 / 0.1207 -> 0.03589 / 0.06252, Flux 0.1654 / 0.3117 -> 0.08897 / 0.1681 and
0.2289 / 0.2137 -> 0.08630 / 0.1602.) Over seeds 0-2 README's ranges hold (after the svd passes guided 0.69-0.84x,
conditional 1.13-1.47x; after distill PixArt 0.93-0.97x, Flux 0.95-0.995x); the seconds' ratio followed the
machine's load (0.49-1.87x), not the objective. Those runs predate global allocation's sensitivity weighing
the guided prediction under a guided objective (b691456); after it, seed 0 with `--objectives guided_compensation`:
PixArt 0.1971 / 0.1606 -> 0.06111 / 0.1034 (881,168 params), Flux 0.2168 / 0.2084 -> 0.07867 / 0.1533
(1,015,120), i.e. over branches after distill 0.937 / 0.949 and 0.981 / 0.992 (branches' runs unchanged).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from compress.recipe import parse_recipe
from compress.runner import Runner

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OBJECTIVES = ("branches", "guided", "guided_fisher", "guided_compensation")
COLUMNS = ("svd cond", "svd guided", "distill cond", "distill guided", "svd s", "run s")


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
    sets = [f"calibration.seed={args.seed}", *args.overrides]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in dict.fromkeys(args.objectives):
            rows[objective] = run(text, sets + objective_sets(text, objective), Path(tmp), objective)
    print(f"\ntoy-{args.family}.yaml, seed {args.seed}: held-out conditional / guided error after the last svd pass "
          "and after distill, seconds")
    print(table(rows))


if __name__ == "__main__":
    main()
