"""`dit-compress`'s stops: a requested stop is no error, an interrupt offers --resume only for saved
work of this recipe (as the Runner's note says), and a Ctrl-C while a command imports (torch's start-up
among them) is held to the end of its imports (moved from tests/test_cli.py)."""

import pytest

from compress import cli, cli_checks, interrupts
from compress.errors import UserError
from compress.passes.distill_trainer import StepLimitReached, TrainingInterrupted


@pytest.mark.parametrize("raised, said, code", [
    (TrainingInterrupted("distill: stopped at step 3/6 on a stop signal"),
     "dit-compress: distill: stopped at step 3/6 on a stop signal", 130),
    (TrainingInterrupted("distill: stopped at step 3/6 on a stop signal", 15),  # SIGTERM: 128 + 15, as a shell says
     "dit-compress: distill: stopped at step 3/6 on a stop signal", 143),
    (StepLimitReached("distill: stopped at step 3/6 on max_steps_this_run=3"),  # planned: rerun, not Ctrl-C
     "dit-compress: distill: stopped at step 3/6 on max_steps_this_run=3", 75),
    (UserError("bad key"), "dit-compress plan: error: bad key", 2),
])
def test_a_requested_stop_is_not_printed_as_an_error(monkeypatch, capsys, raised, said, code):
    def command(args):
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "plan", command)
    assert cli.main(["plan", "r.yaml"]) == code
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("command, said", [
    ("run", "dit-compress: interrupted; nothing was saved yet: a rerun starts over"),
    ("bench", "dit-compress: interrupted"),
    ("importance", "dit-compress: interrupted"),
    ("eval", "dit-compress: interrupted"),
])
def test_an_interrupt_says_resume_only_where_the_command_has_it(monkeypatch, capsys, tmp_path, command, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)  # runs/x: no run folder
    if command in cli_checks.OUTPUT_ARGS:  # an output not there is refused first
        (tmp_path / "x").mkdir()
    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert cli.main([command, "x"]) == 130
    assert capsys.readouterr().err.strip() == said


KEPT = "dit-compress: interrupted; runs/r keeps its work (1 of 3 passes done): rerun with --resume to continue"


@pytest.mark.parametrize("flags, said, output", [
    ([], KEPT, False),
    (["--resume"], KEPT, False),
    (["--restart"], "dit-compress: interrupted; nothing was saved yet: a rerun starts over", False),
    (["--overwrite"], KEPT, False),  # no output there: --resume alone writes it
    # 'rerun with --resume' led to 'error: output folder out/r exists; pass --overwrite to replace it'
    (["--overwrite"], f"{KEPT}; out/r exists: the rerun needs --overwrite too", True),
    (["--restart", "--overwrite"], "dit-compress: interrupted; nothing was saved yet: a rerun starts over; out/r "
                                   "exists: the rerun needs --overwrite too", True),
])
def test_an_interrupt_before_the_run_offers_resume_only_for_saved_work(monkeypatch, capsys, tmp_path, flags, said,
                                                                       output):
    """Ctrl-C while `run` imports or reads its recipe leaves the run folder as it was: an interrupted
    run's saved work is offered to --resume, unless --restart was about to discard it; where the output
    folder is there (`output`: an earlier output the run's --overwrite had not replaced yet), the rerun
    needs --overwrite too, and the note says so."""
    import json

    if output:
        (tmp_path / "out" / "r").mkdir(parents=True)
        (tmp_path / "out" / "r" / "config.json").write_text(json.dumps({"compression": {}}))
    stage = tmp_path / "runs" / "r" / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": {"passes": [{"svd": {}}] * 3}}))
    monkeypatch.chdir(tmp_path)

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", "r.yaml", *flags]) == 130
    assert capsys.readouterr().err.strip() == said


RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {{num_prompts: 4, timesteps: 2, batch_size: 8}}
passes:
  - svd: {{targets: [attention], ratio: {ratio}, progress: false}}
  - svd: {{targets: [mlp], ratio: 0.5}}
"""


@pytest.mark.parametrize("saved_ratio, progress, said", [
    (0.5, "true", "dit-compress: interrupted; runs/r keeps its work (1 of 2 passes done): rerun with --resume to "
                  "continue"),
    (0.25, "false", "dit-compress: interrupted; runs/r holds an interrupted run of another recipe (it differs in "
                    "passes.0.svd.ratio; 1 of 2 passes done): a rerun needs --restart to discard it, or another "
                    "--run-dir"),
])
def test_an_interrupt_before_the_run_offers_resume_only_for_this_recipes_work(monkeypatch, capsys, tmp_path,
                                                                             saved_ratio, progress, said):
    """Ctrl-C before the run checked its folder offered --resume for another recipe's saved work, which
    --resume refuses; the recipes are compared as --resume does (progress changes no result)."""
    import json

    from compress.calib_stats import STATS_VERSION
    from compress.recipe import parse_recipe

    saved = parse_recipe(RECIPE.format(ratio=saved_ratio).replace("false", progress), "r.yaml").raw
    stage = tmp_path / "runs" / "r" / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": saved, "statistics": STATS_VERSION}))  # (svd: as measured)
    (tmp_path / "r.yaml").write_text(RECIPE.format(ratio=0.5))
    monkeypatch.chdir(tmp_path)
    _interrupted_as_the_runner_is_made(monkeypatch)  # Ctrl-C once `run`'s imports are done
    assert cli.main(["run", "r.yaml"]) == 130
    assert capsys.readouterr().err.strip() == said


def _interrupted_as_the_runner_is_made(monkeypatch) -> None:
    """`run` as it is, a Ctrl-C coming as it makes its Runner (its recipe loaded, its imports done)."""
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module("compress.runner"), "Runner", interrupted)


def test_a_ctrl_c_before_the_runner_ran_reads_the_recipe_once(monkeypatch, capsys, tmp_path):
    """A Ctrl-C after `run` loaded its recipe, before its Runner ran, parsed the recipe again to say what
    the run folder keeps (cli._this_recipe loaded it anew, after 2c1a451 made the command parse it once);
    now the note compares the folder with the Recipe the command loaded (its --set included)."""
    import json
    from pathlib import Path

    from compress import recipe as recipe_module
    from compress.calib_stats import STATS_VERSION

    saved = recipe_module.parse_recipe(RECIPE.format(ratio=0.25), "r.yaml").raw
    stage = tmp_path / "runs" / "r" / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": saved, "statistics": STATS_VERSION}))
    (tmp_path / "r.yaml").write_text(RECIPE.format(ratio=0.5))
    monkeypatch.chdir(tmp_path)
    parsed, real = [], recipe_module.parse_recipe

    def parse_recipe(text, path, *rest, **kw):
        made = real(text, path, *rest, **kw)
        if Path(path).name == "r.yaml":
            parsed.append(made)
        return made
    monkeypatch.setattr(recipe_module, "parse_recipe", parse_recipe)
    _interrupted_as_the_runner_is_made(monkeypatch)
    assert cli.main(["run", "r.yaml", "--set", "passes.0.svd.ratio=0.25"]) == 130
    assert capsys.readouterr().err.strip() == ("dit-compress: interrupted; runs/r keeps its work (1 of 2 passes done): "
                                               "rerun with --resume to continue")
    assert len(parsed) == 1, f"r.yaml parsed {len(parsed)} times"


@pytest.mark.parametrize("kills, apart", [(1, 0.0), (2, 0.0), (2, 1.0)])
def test_an_interrupt_while_importing_is_held_to_the_end_and_a_second_raised_at_once(monkeypatch, kills, apart):
    """SIGINT inside torch's C++ start-up aborted the interpreter or was lost: the first is held to
    the end of the block, then raised; a second (an import that hangs) is raised at once, unless it
    comes right after the first (`timeout -s INT` signals the command, then its process group: one
    stop, twice; raised inside torch's start-up it aborted the interpreter, exit -6)."""
    import os
    import signal

    clock = iter([100.0, 100.0 + apart])
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: next(clock))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("held: the block goes on")
                if kills == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                done.append("the rest of the block")
        raised_at_once = kills == 2 and apart >= interrupts.SECOND_INTERRUPT_S
        assert done == ["held: the block goes on", "the rest of the block"][:1 if raised_at_once else 2]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_makes_its_imports_with_a_ctrl_c_held(monkeypatch, command):
    """Each command's imports (torch's start-up among them) go through the one place that holds a
    Ctrl-C (cli.imports_held): all made, then the interrupt raised, before the command runs."""
    import argparse
    import os
    import signal

    imported = []

    class Module:
        def __getattr__(self, name):
            return lambda *args, **kwargs: pytest.fail(f"`{command}` ran after a Ctrl-C during its imports")

    def import_module(name):
        if not imported:  # one Ctrl-C: a second would be raised at once
            os.kill(os.getpid(), signal.SIGINT)
        imported.append(name)
        return Module()

    monkeypatch.setattr(cli, "import_module", import_module)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
    try:
        with pytest.raises(KeyboardInterrupt):
            cli.COMMANDS[command](argparse.Namespace())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert imported and all(name.startswith("compress.") for name in imported)
    if command in ("plan", "run"):  # compress.recipe alone (no torch): the recipe's first checks come first
        assert imported == ["compress.recipe"]


KILL_WHILE_IMPORTING = """\
import importlib.abc, os, pathlib, signal, sys

class SigintAt(importlib.abc.MetaPathFinder):  # SIGINT as torch's C++ start-up imports numpy
    def find_spec(self, name, path, target=None):
        if name == "numpy._core.multiarray" and not os.path.exists(sys.argv[1]):
            pathlib.Path(sys.argv[1]).write_text("sent")
            os.kill(os.getpid(), signal.SIGINT)

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, SigintAt())
from compress import cli
pathlib.Path("r.yaml").write_text("model: pixart\\nteacher: toy:pixart\\npasses: [svd]\\n")
sys.exit(cli.main(["run", "r.yaml"]))
"""


def test_ctrl_c_while_torch_imports_ends_the_run(tmp_path):
    """A Ctrl-C that torch's start-up swallowed (it warns that NumPy failed to initialize and goes
    on) let `run` carry on; one that landed elsewhere in it could abort (SIGABRT). Held until the
    imports are done, it ends the run with the one line of any interrupt."""
    import subprocess
    import sys

    sent = tmp_path / "sent"
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_IMPORTING, str(sent)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if not sent.exists():
        pytest.skip("torch here imports numpy before or without numpy._core.multiarray")
    assert (done.returncode, done.stderr.strip()) == (
        130, "dit-compress: interrupted; nothing was saved yet: a rerun starts over")


PROMPTS_RECIPE = ("model: pixart\nteacher: toy:pixart\n"
                  "calibration: {{source: pipeline, prompts: {prompts}, sample_steps: 2, timesteps: 2, heldout: 1}}\n"
                  "passes:\n  - remove_blocks: {{blocks: {{blocks: [0]}}}}\n  - svd: {{targets: [mlp], ratio: 0.5}}\n")


@pytest.mark.parametrize("saved_prompts", ["[a 1, a 2]", "[a 3, a 4]"])
def test_an_interrupt_before_the_runner_says_what_the_runners_note_says(monkeypatch, capsys, tmp_path, saved_prompts):
    """A Ctrl-C before `run`'s Runner existed (loading the recipe, making the Runner) passed no recipe
    to the note: a stage calibrated on other prompts was offered 'rerun with --resume to continue',
    which --resume refuses. It says what the Runner's own note says."""
    import json
    from pathlib import Path

    from compress.calib_prompts import prompts_digest
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    saved = parse_recipe(PROMPTS_RECIPE.format(prompts=saved_prompts), "r.yaml")
    stage = tmp_path / "runs" / "r" / "stages" / "0-remove_blocks"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": saved.raw, "inputs": {
        "prompts": prompts_digest(list(saved.calibration.prompts)), "pipeline": None}}))
    (tmp_path / "r.yaml").write_text(PROMPTS_RECIPE.format(prompts="[a 3, a 4]"))
    monkeypatch.chdir(tmp_path)
    _interrupted_as_the_runner_is_made(monkeypatch)  # Ctrl-C once `run`'s imports are done, before its Runner
    assert cli.main(["run", "r.yaml"]) == 130
    said = " ".join(capsys.readouterr().err.split())
    runners = Runner(parse_recipe((tmp_path / "r.yaml").read_text(), "r.yaml"), Path("out/r"), Path("runs/r"))
    assert said == " ".join(f"dit-compress: interrupted{runners.interrupt_note()}".split())
    changed = "the calibration prompts changed (calibration.prompts) since it ran"
    assert (changed in said) is (saved_prompts != "[a 3, a 4]")
    assert ("rerun with --resume to continue" in said) is (saved_prompts == "[a 3, a 4]")
