"""plan --run-dir: the run folder whose free disk plan's warning of a peak `run` would refuse measures,
as run's --run-dir is (plan.make_plan's run_dir; the refusal's words: plan_memory.beyond_disk)."""

import argparse
import json
import re
from pathlib import Path

import pytest

from compress import cli
from tests.test_plan import C48


def test_plan_measures_the_free_disk_of_the_run_dir_given(monkeypatch, capsys, tmp_path):
    """plan measured the free disk under runs/NAME for its "`dit-compress run` would refuse this" warning,
    and took no --run-dir ('unrecognized arguments'), while a run given --run-dir on another disk counts
    that disk's: where it has room enough, the run is not refused. Now plan takes --run-dir: the refusal
    names that folder's disk, or is gone where it has room; without one, the warning says it is of run's
    default --run-dir and how to measure another."""
    import compress.plan_machine as plan_machine
    import compress.runner_memory as runner_memory

    big, small = tmp_path / "big", tmp_path / "small"
    free = {big: 2**50, small: 3 * 2**30}  # 1 PiB; 3 GiB (the default's: its nearest existing parent's)
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 2**30)
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 0)
    monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: free.get(Path(folder), 2 * 2**30))
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "c48.yaml"
    recipe.write_text(C48.format(prompts=100000000))  # a peak of about 61035 GiB

    def planned(*flags: str) -> tuple[str | None, str]:
        assert cli.main(["plan", str(recipe), "--json", *flags]) == 0
        out, err = capsys.readouterr()
        return json.loads(out)["memory"]["refusal"], " ".join(err.split())

    refusal, said = planned()
    assert "the disk free under runs/c48 (2.0 GiB)" in refusal
    assert said == (f"warning: {refusal}; `dit-compress run` would refuse this before it loads the teacher with "
                    "its default --run-dir (plan --run-dir DIR measures another folder's disk)")
    refusal, said = planned("--run-dir", str(small))
    assert f"the disk free under {small} (3.0 GiB)" in refusal
    assert said == f"warning: {refusal}; `dit-compress run` would refuse this before it loads the teacher"
    refusal, said = planned("--run-dir", str(big))  # 1 PiB free: run would not refuse it; only the memory warned
    assert refusal is None and "would refuse" not in said and "more than the 1.0 GiB this machine has" in said
    assert cli.main(["plan", str(recipe), "--run-dir", ""]) == 2  # an empty one: refused, as run's
    assert capsys.readouterr().err.strip().endswith("--run-dir '' names no folder; give one, or leave --run-dir out")


def test_plans_run_dir_is_runs_and_every_option_is_in_commands_md():
    """plan's --run-dir says what run's says (its default); docs/COMMANDS.md's line of each command lists
    every option its --help has."""
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    helps = {name: {a.dest: a.help for a in commands[name]._actions} for name in ("run", "plan")}
    assert helps["plan"]["run_dir"].startswith(helps["run"]["run_dir"])
    doc = (Path(__file__).parents[1] / "docs" / "COMMANDS.md").read_text()
    usages = dict(re.findall(r"^\| `dit-compress (\w+) ([^`]*)`", doc, re.M))
    for name, parser in commands.items():
        flags = [a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"]
        assert [f for f in flags if f not in usages[name]] == [], name


@pytest.mark.parametrize("run_dir", ["a_file", "a_file/r"])
def test_plan_warns_of_a_run_dir_that_is_a_file_in_runs_words(monkeypatch, capsys, tmp_path, run_dir):
    """T2 stop 52 #5: `plan R --run-dir README.md` (a file) exited 0 and said nothing, while run refuses it
    ('run folder README.md: README.md is a file, not a folder') and plan's help says it measures the free
    disk as run does. Now plan warns in run's words, as it does of a run folder run would refuse as not
    writable; the plan is still made."""
    from compress.errors import UserError
    from compress.runner_folders import check_writable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    recipe = tmp_path / "c48.yaml"
    recipe.write_text(C48.format(prompts=4))
    assert cli.main(["plan", str(recipe), "--json", "--run-dir", run_dir]) == 0
    out, err = capsys.readouterr()
    with pytest.raises(UserError) as refused:  # run's refusal (runner_folders.check_writable)
        check_writable(Path(run_dir), f"run folder {run_dir}")
    assert str(refused.value) == f"run folder {run_dir}: a_file is a file, not a folder"
    assert err.splitlines()[0] == (f"warning: {refused.value}; `dit-compress run` would refuse this before it "
                                   "loads the teacher")
    assert json.loads(out)["memory"]
