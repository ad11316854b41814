"""tools/bench_plan_memory.py: plan's estimated peak against a run's measured one (nothing is run
here but `plan` and tiny child processes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import bench_plan_memory as tool


def _plan(capsys, recipe: Path, sets: list[str] = ()) -> dict:
    from compress.cli import main

    capsys.readouterr()
    assert main(["plan", str(recipe), "--json", *(a for s in sets for a in ("--set", s))]) in (0, None)
    return json.loads(capsys.readouterr().out)


def test_the_planned_peak_is_plans_memory_bytes(capsys):
    """The row's planned peak is the number `plan` prints as the run's peak, and its phase."""
    plan = _plan(capsys, tool.RECIPES / "toy-flux.yaml")
    planned, phase = tool.planned_peak(plan)
    assert planned == plan["memory"]["bytes"] > 2**20 and isinstance(planned, int)
    assert phase == (plan["memory"]["while"] or "before distill")
    assert tool.planned_peak({"memory": {"bytes": 5, "while": "distill trains"}}) == (5, "distill trains")


@pytest.mark.parametrize("name, learned", [("toy-pixart.yaml", True), ("toy-flux.yaml", False)])
def test_shortening_touches_only_how_long_passes_run_and_keeps_the_peak(capsys, name, learned):
    """The default shortening names the recipe's distill pass (and a learned block removal) by its
    index, and plan's estimate is the same with it: it changes how long they run, not what they hold."""
    recipe = tool.RECIPES / name
    sets = tool.shortened(yaml.safe_load(recipe.read_text()))
    assert sets == ["passes.1.remove_blocks.learn_steps=20"] * learned + [
        "passes.4.distill.steps=30", "passes.4.distill.num_samples=64", "passes.4.distill.sample_steps=4"]
    short = _plan(capsys, recipe, sets)
    assert short["passes"][4]["steps"] == 30
    assert short["memory"] == _plan(capsys, recipe)["memory"]


def test_a_pass_already_short_is_not_lengthened():
    recipe = {"passes": [{"svd": {"ratio": 0.5}}, {"distill": {"steps": 10, "sample_steps": 2}}, {"distill": None},
                         {"remove_blocks": {"criterion": "learned", "learn_steps": 5}},
                         {"remove_blocks": {"count": {"blocks": 1}}}]}
    assert tool.shortened(recipe) == ["passes.1.distill.num_samples=64", "passes.2.distill.steps=30",
                                      "passes.2.distill.num_samples=64", "passes.2.distill.sample_steps=4"]
    assert tool.shortened({"passes": [{"importance": None}]}) == tool.shortened({}) == []


def test_the_table_shows_both_peaks_and_their_ratio():
    rows = [dict(recipe="toy-flux.yaml", planned=3 * 2**29, phase="before distill", measured=2**30, seconds=61.4)]
    assert tool.ratio(3, 2) == 1.5
    assert tool.table(rows).splitlines()[2] == "| toy-flux.yaml | 1.50 GiB | before distill | 1.00 GiB | 1.50 | 61 |"
    assert tool.table(rows).splitlines()[0].count("|") == tool.table(rows).splitlines()[1].count("|") == 7


def test_each_measurement_is_its_own_childs_peak(tmp_path, monkeypatch):
    """A run that holds 300 MiB, then one that holds little: the second is measured small (the max
    is per run, not over every child this process waited for), and so is a run started from this
    big process (pytest with torch): a child forked from it began with its resident set."""
    holds = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096])"

    def measure(mib):
        monkeypatch.setattr(tool, "dit_compress", lambda: [sys.executable, "-c", holds, str(mib)])
        (tmp_path / str(mib)).mkdir()
        return tool.measured_run(Path("r.yaml"), [], tmp_path / str(mib))[0]

    big, small = measure(300), measure(1)
    assert big > 300 * 2**20 and small < 64 * 2**20


def test_a_failed_run_stops_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "dit_compress", lambda: [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(SystemExit) as e:
        tool.measured_run(Path("r.yaml"), [], tmp_path)
    assert str(e.value).startswith("dit-compress run r.yaml failed (3):") and "boom" in str(e.value)


def test_the_tool_answers_help_and_refuses_unknown_arguments():
    path = Path(tool.__file__)
    shown = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: bench_plan_memory.py [-h]")
    refused = subprocess.run([sys.executable, str(path), "--repeats", "3"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "unrecognized arguments: --repeats" in refused.stderr


class _Planned(Exception):
    """Stops main once the first recipe's --sets are loaded (no plan, no run)."""


@pytest.mark.parametrize("given, steps", [("passes.4.distill.steps=100", 100), ("passes.4.distill={steps: 7}", 7)])
def test_a_users_set_of_a_key_the_tool_shortens_wins(given, steps, monkeypatch):
    """`--set passes.4.distill.steps=100` was refused ('--set passes.4.distill.steps=30 set ...: give each key
    once', a --set the user never typed): the tool's own passes.4.distill.steps=30 came first."""
    from compress.recipe import load_recipe

    loaded = []

    def plan_json(recipe, sets):
        loaded.append((load_recipe(recipe, sets), sets))
        raise _Planned

    monkeypatch.setattr(tool, "plan_json", plan_json)
    monkeypatch.setattr(sys, "argv", ["bench_plan_memory.py", "recipes/toy-flux.yaml", "--set", given])
    with pytest.raises(_Planned):
        tool.main()
    (recipe, sets), = loaded
    assert recipe.passes[4].config.steps == steps and sets[-1] == given
    assert not any(s.startswith("passes.4.distill.steps=") for s in sets[:-1])
    # the tool's other shortenings kept, but under a whole distill= given
    assert ("passes.4.distill.num_samples=64" in sets) == given.startswith("passes.4.distill.steps")


def test_given_sets_drop_the_tools_own_of_their_keys_and_below():
    builtin = ["a.b=1", "a.bc=2", "a.b.c=3", "d=4"]
    assert tool.given_win(builtin, ["a.b = 9"]) == ["a.bc=2", "d=4", "a.b = 9"]
    assert tool.given_win(builtin, []) == builtin
