"""tools/bench_objective.py: one run per objective of the embedded default, its table's rows and columns, and
the ratio rows are the printed figures' quotients."""

import re

from tools import bench_objective as tool

SHRUNK = ["calibration.num_prompts=2", "calibration.timesteps=2", "calibration.batch_size=4", "calibration.heldout=8",
          "passes.2.svd.sensitivity_batches=1", "passes.2.svd.compensate_batches=1", "passes.3.svd.compensate_batches=1",
          "passes.4.distill.steps=2", "passes.4.distill.batch_size=4", "passes.4.distill.num_samples=4",
          "passes.4.distill.sample_steps=2", "passes.4.distill.checkpoint_every=0", "passes.4.distill.plot=false"]


def _table(out: str) -> dict[str, list[str]]:
    """{row name: its cells} of the printed table (the lines after its header)."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("objective"))
    assert lines[head].split()[1:] == "svd cond svd guided distill cond distill guided svd s run s".split()
    return {re.split(r"\s{2,}", line.strip())[0]: line.split()[-len(tool.COLUMNS):] for line in lines[head + 1:]}


def _half_unit(cell: str) -> float:
    """Half a unit of the printed figure's last digit: how far rounding may have moved it."""
    return 0.5 * 10 ** -len(cell.partition(".")[2])


def _quotients_match(rows: dict, ratio: str, over: str, first: str) -> None:
    """Each ratio printed is the printed figures' quotient, up to their rounding and its own (3 decimals)."""
    for a, b, r in zip(rows[over], rows[first], rows[ratio]):
        if a == "-":
            assert r == "-"
            continue
        ea, eb = _half_unit(a), _half_unit(b)
        low, high = (float(a) - ea) / (float(b) + eb), (float(a) + ea) / (float(b) - eb)
        assert low - 5e-4 <= float(r) <= high + 5e-4, (a, b, r)


def test_one_run_per_objective_prints_both_errors_times_and_their_ratios(capsys):
    tool.main(["--family", "flux", "--seed", "1", *[a for s in SHRUNK for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert "toy-flux.yaml, seed 1:" in out
    rows = _table(out)
    assert list(rows) == ["branches", "guided_compensation", "guided_compensation / branches"]
    for name in ("branches", "guided_compensation"):
        assert all(float(c) > 0 for c in rows[name]), rows[name]  # guided errors and distill's figures too
    _quotients_match(rows, "guided_compensation / branches", "guided_compensation", "branches")


def test_without_distill_its_columns_are_dashes_and_the_svd_passes_get_the_objective():
    text = tool.without_distill((tool.RECIPES / "toy-pixart.yaml").read_text())
    assert "distill" not in text.split("passes:")[1].split("export:")[0]
    assert tool.objective_sets(text, "guided") == ["passes.2.svd.objective=guided", "passes.3.svd.objective=guided"]
    stages = [{"pass": "svd", "relative_error": 0.2, "guided_error": 0.3, "seconds": 2.0},
              {"pass": "svd", "relative_error": 0.1, "guided_error": 0.25, "seconds": 1.5}]
    rows = {"branches": tool.figures(stages, 10.0), "guided": tool.figures(stages[:1], 8.0)}
    printed = _table(tool.table(rows))
    assert printed["branches"] == ["0.1000", "0.2500", "-", "-", "3.5", "10.0"]
    assert printed["guided / branches"] == ["2.000", "1.200", "-", "-", "0.571", "0.800"]


def test_a_users_calibration_seed_wins_over_the_tools(monkeypatch, capsys):
    """`--set calibration.seed=3` was refused: the tool's own calibration.seed=0 (of --seed) came first."""
    seeds = []

    def run(text, sets, tmp, name):
        seeds.append(tool.parse_recipe(text, f"{name}.yaml", sets).calibration.seed)
        return dict.fromkeys(tool.COLUMNS, 1.0)

    monkeypatch.setattr(tool, "run", run)
    tool.main(["--family", "pixart", "--set", "calibration.seed=3"])
    assert seeds == [3, 3] and "toy-pixart.yaml, seed 3:" in capsys.readouterr().out


def test_a_set_of_an_svd_objective_is_refused_naming_objectives():
    """The tool sets passes.N.svd.objective per objective: a user's --set of it is said, as --objectives'."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, str(Path(tool.__file__)), "--set", "passes.2.svd.objective=guided"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "bench_objective.py: error: --set passes.2.svd.objective=guided: the " \
                                           "tool sets each svd pass's objective itself, to each of --objectives " \
                                           "in turn: give them with --objectives"
