"""The refusals a user meets most, before torch's and diffusers' start-up (compress/cli.py,
recipe.check_recipe): a recipe not there, a folder, a YAML or top-level key mistake, no passes or an
unknown first pass are said in a moment (about 0.5 s and 20 MB, not 5-10 s and 395 MB), in the same
words and exit status as after it. Each runs in a fresh interpreter: torch must not be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress import cli

REFUSED = """\
import sys
from compress import cli
status = cli.main(sys.argv[1:])
print(status, "torch" in sys.modules, "diffusers" in sys.modules)
"""

FILES = {
    "bad.yaml": "model: pixart\nteacher: toy:pixart\npasses: [svd\n",
    "top.yaml": "model: pixart\nteacher: toy:pixart\nmodle: x\npasses:\n  - svd\n",
    "nopasses.yaml": "model: pixart\nteacher: toy:pixart\n",
    "pass.yaml": "model: pixart\nteacher: toy:pixart\npasses:\n  - svdd: {ratio: 0.5}\n",
    "ok.yaml": "model: pixart\nteacher: toy:pixart\npasses:\n  - svd\n",
}

CASES = [
    (["run", "nope.yaml"], "no such recipe nope.yaml; did you mean 'top.yaml'?"),
    (["plan", "nope.yaml"], "no such recipe nope.yaml; did you mean 'top.yaml'?"),
    (["importance", "nope.yaml"], "no such recipe nope.yaml; did you mean 'top.yaml'?"),
    (["run", "adir"], "adir: a folder, where a recipe YAML file was expected (see recipes/)"),
    (["run", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["plan", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["importance", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["run", "top.yaml"], "top.yaml:3: unknown key 'modle'; did you mean 'model'?"),
    (["run", "ok.yaml", "--set", "modle=x"], "ok.yaml (--set modle=x): unknown key 'modle'; did you mean 'model'?"),
    (["run", "nopasses.yaml"], "nopasses.yaml:1: the recipe has no 'passes' list"),
    (["plan", "pass.yaml"], "pass.yaml:4: unknown pass 'svdd'; did you mean 'svd'? "
                            "(passes: importance, remove_blocks, svd, distill)"),
]


@pytest.mark.parametrize("argv, said", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistyped_or_missing_recipe_is_refused_before_torch_is_imported(tmp_path, argv, said):
    """Each refusal waited for torch and diffusers to import (seconds) before its one line."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "adir").mkdir()
    root = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", REFUSED, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.stderr.strip() == f"dit-compress: error: {said}"
    assert done.stdout.split() == ["2", "False", "False"]  # exit status 2; torch, diffusers not imported


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_recipes_later_imports_are_made_with_a_ctrl_c_held_too(monkeypatch, tmp_path, command):
    """Once the recipe's first checks pass, `run`'s and `plan`'s other imports (torch's start-up) go
    through cli.held_imports: all made, then a Ctrl-C during them raised, before the recipe loads."""
    import signal
    from unittest import mock

    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    monkeypatch.chdir(tmp_path)
    imported, real, stand_in = [], cli.import_module, mock.Mock()

    def import_module(name):
        imported.append(name)
        if imported == ["compress.recipe"]:  # the first phase: the real check_recipe
            return real(name)
        if len(imported) == 2:  # one Ctrl-C as the later imports start
            os.kill(os.getpid(), signal.SIGINT)
        return stand_in

    monkeypatch.setattr(cli, "import_module", import_module)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
    try:
        args = cli.build_parser().parse_args([command, "ok.yaml"])
        with pytest.raises(KeyboardInterrupt):
            cli.COMMANDS[command](args)
    finally:
        signal.signal(signal.SIGINT, previous)
    later = {"run": ["compress.recipe", "compress.runner"],
             "plan": ["compress.plan", "compress.plan_words", "compress.recipe", "compress.report"]}
    assert imported == ["compress.recipe", *later[command]]
    assert not stand_in.mock_calls  # nothing they hold was used: the command stopped
