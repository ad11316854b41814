"""The refusals a user meets most, before torch's and diffusers' start-up (compress/cli.py,
recipe.load_recipe): a recipe not there, a folder, a YAML or top-level key mistake, no passes or an
unknown pass, a pass's option unknown or of a wrong value (its config class imports no torch:
passes.CONFIGS), a run or output folder another run holds (runner_lock.refuse_held), an output folder
not there for inspect, eval, bench and lora (output_names.missing_here, missing_lora_output) and lora's LoRA
and convert's checkpoint file not there (io_source.no_lora_there, no_checkpoint_file) are said in a moment
(about 0.5 s and 20 MB, not 5-10 s and 395 MB), in the same words and exit status as after it. Each runs in a
fresh interpreter: torch must not be imported."""

from __future__ import annotations

import json
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
    "method.yaml": "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {method: whitend}\n",
    "ratio.yaml": "model: pixart\nteacher: toy:pixart\npasses:\n  - svd:\n      ratio: \"half\"\n",
    "later.yaml": "model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 1}\n  - distill: {stepz: 3}\n",
    "buckets.yaml": "model: pixart\nteacher: toy:pixart\npasses:\n  - importance: {buckets: 0}\n",
    "calib.yaml": "model: pixart\nteacher: toy:pixart\ncalibration: {num_prompts: 0}\npasses:\n  - svd\n",
}
DISTILL_KEYS = ("steps, batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, lambda_task, lambda_out, "
                "lambda_feat, mask_massive, train, data, latents_dir, num_samples, sample_steps, guidance_scale, "
                "gradient_checkpointing, mixed_precision, checkpoint_every, keep_checkpoints, max_steps_this_run, "
                "progress, plot, kd_teacher")

LOADED = "(an output folder is written by dit-compress run, or compress.save_compressed)"
CASES = [
    (["run", "nope.yaml"], "no such recipe nope.yaml; did you mean 'nopasses.yaml'?"),
    (["plan", "nope.yaml"], "no such recipe nope.yaml; did you mean 'nopasses.yaml'?"),
    (["importance", "nope.yaml"], "no such recipe nope.yaml; did you mean 'nopasses.yaml'?"),
    (["run", "adir"], "adir: a folder, where a recipe YAML file was expected (see recipes/)"),
    (["run", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["plan", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["importance", "bad.yaml"], "bad.yaml:3: malformed YAML: unclosed '[' (no ']' closes it on this line)"),
    (["run", "top.yaml"], "top.yaml:3: unknown key 'modle'; did you mean 'model'?"),
    (["run", "ok.yaml", "--set", "modle=x"], "ok.yaml (--set modle=x): unknown key 'modle'; did you mean 'model'?"),
    (["run", "nopasses.yaml"], "nopasses.yaml:1: the recipe has no 'passes' list"),
    (["plan", "pass.yaml"], "pass.yaml:4: unknown pass 'svdd'; did you mean 'svd'? "
                            "(passes: importance, remove_blocks, svd, distill)"),
    # a pass's options (torch's start-up came first: the pass classes' modules held them)
    (["run", "method.yaml"], "method.yaml:4: svd.method must be one of svd, asvd, whitened, not 'whitend'; "
                             "did you mean 'whitened'?"),
    (["plan", "ratio.yaml"], "ratio.yaml:5: svd.ratio must be a number, not 'half'"),
    (["run", "ok.yaml", "--set", "passes.0.svd.ratio=2"],
     "ok.yaml (--set passes.0.svd.ratio=2): svd.ratio must be in (0, 1], got 2.0"),
    (["run", "later.yaml"], f"later.yaml:5: unknown key 'stepz' in passes[1].distill; did you mean 'steps'? "
                            f"(known: {DISTILL_KEYS})"),
    (["importance", "buckets.yaml"], "buckets.yaml:4: importance.buckets must be an integer ≥ 1, got 0"),
    (["run", "calib.yaml"], "calib.yaml:3: calibration.num_prompts must be at least 1, not 0"),
    # an output folder not there
    (["inspect", "out/nope"], "no such folder out/nope, and no out/ here either "
                              "(dit-compress inspect OUT, OUT written by run)"),
    (["eval", "gone"], "no such folder gone (eval takes a dit-compress output folder or a teacher)"),
    (["bench", "./gone"], "no such folder ./gone (dit-compress bench OUT, OUT written by run)"),
    # lora's output and convert's file not there (load_transformer's words, convert's)
    (["lora", "gone", "l.safetensors", "new"], f"no such folder gone {LOADED}"),
    (["lora", "./out/nope", "l.safetensors", "new"], f"no such folder out/nope, and no out/ here either {LOADED}"),
    (["lora", "out/nope", "l.safetensors", "new"], f"no such folder out/nope, and no out/ here either {LOADED}"),
    (["convert", "nope.safetensors", "o"], "nope.safetensors: no such file; convert reads a single-file checkpoint"),
    (["convert", "./gone/x.pth", "o"], "./gone/x.pth: no such file; convert reads a single-file checkpoint"),
]


@pytest.mark.parametrize("argv, said", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistyped_or_missing_recipe_is_refused_before_torch_is_imported(tmp_path, argv, said):
    """Each refusal waited for torch and diffusers to import (seconds) before its one line."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "adir").mkdir()
    done = _refused(tmp_path, argv)
    assert done.stderr.strip() == f"dit-compress {argv[0]}: error: {said}"
    assert done.stdout.split() == ["2", "False", "False"]  # exit status 2; torch, diffusers not imported


def test_a_lora_not_there_is_refused_before_torch_is_imported(tmp_path):
    """`dit-compress lora OUT LORA NEW` with LORA not there loaded torch, diffusers and OUT's model before its
    one line; the same line now, where OUT is an output and NEW is not there (NEW there: said first, as before)."""
    from compress.io_export import save_compressed
    from tests.conftest import factorize, tiny_pixart

    save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], 2), tmp_path / "out")
    done = _refused(tmp_path, ["lora", "out", "nolora.safetensors", "new"])
    assert done.stderr.strip() == ("dit-compress lora: error: nolora.safetensors: no LoRA there (a .safetensors file, "
                                   "or a folder holding one)")
    assert done.stdout.split() == ["2", "False", "False"]
    (tmp_path / "new").mkdir()
    done = _refused(tmp_path, ["lora", "out", "nolora.safetensors", "new"])
    assert done.stderr.strip() == "dit-compress lora: error: new exists; lora writes a new output folder"


HELD = {  # what a run into a folder another run holds is told (runner_lock), given that holder in words
    "run folder": "runs/ok is in use by another dit-compress run ({}): wait for it, or give this run another --run-dir",
    "output": "output folder out/ok is to be written by another dit-compress run ({}): wait for it, or give this run "
              "another --out",
}


@pytest.mark.parametrize("held", HELD)
def test_a_run_into_folders_another_run_holds_is_refused_before_torch_is_imported(tmp_path, held):
    """`run` imported torch and diffusers (seconds) before its Runner's lock refused the folder."""
    from compress.runner_lock import LOCK, hold_output, hold_run_folder, holder_in_words

    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    run_dir, out = tmp_path / "runs" / "ok", tmp_path / "out" / "ok"
    holding, lock = ((hold_run_folder(run_dir), run_dir / LOCK) if held == "run folder" else
                     (hold_output(out), out.parent / f".ok{LOCK}"))
    with holding:  # as another run holds it (a flock belongs to an open file: the command's own is refused)
        who = holder_in_words(json.loads(lock.read_text()))
        done = _refused(tmp_path, ["run", "ok.yaml"])
    assert done.stderr.strip() == f"dit-compress run: error: {HELD[held].format(who)}"
    assert done.stdout.split() == ["2", "False", "False"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]  # the holder's folders gone with it, none made


def _refused(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`dit-compress ARGV` (cli.main) in a fresh interpreter in `cwd`: its stderr, and on stdout its
    exit status and whether torch and diffusers were imported."""
    root = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", REFUSED, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_recipes_later_imports_are_made_with_a_ctrl_c_held_too(monkeypatch, tmp_path, command):
    """Once the recipe loads (every check of it, no torch), `run`'s and `plan`'s other imports (torch's
    start-up) go through cli.held_imports: all made, then a Ctrl-C during them raised, before anything
    they hold is used (the recipe is not loaded again: test_a_command_reads_its_recipe_once)."""
    import signal
    from unittest import mock

    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    monkeypatch.chdir(tmp_path)
    imported, real, stand_in = [], cli.import_module, mock.Mock()

    def import_module(name):
        imported.append(name)
        if imported == ["compress.recipe"]:  # the first phase: the real load_recipe
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
    later = {"run": ["compress.runner"], "plan": ["compress.plan", "compress.plan_words", "compress.report"]}
    assert imported == ["compress.recipe", *later[command]]
    assert not stand_in.mock_calls  # nothing they hold was used: the command stopped


class _Loaded(Exception):
    """Raised by the stand-in of what a command does first with its recipe: the command stops there."""


@pytest.mark.parametrize("command, stand_in", [
    ("run", "compress.runner.Runner"),
    ("plan", "compress.plan.make_plan"),
    ("importance", "compress.commands_importance._importance_config"),
])
def test_a_command_reads_its_recipe_once(monkeypatch, tmp_path, command, stand_in):
    """`run`, `plan` and `importance` load their recipe once, before torch's start-up, and go on with
    that Recipe (they parsed it again after the imports)."""
    import importlib

    from compress import recipe as recipe_module

    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    monkeypatch.chdir(tmp_path)
    parsed, used, real = [], [], recipe_module.parse_recipe

    def parse_recipe(text, path, *rest, **kw):
        made = real(text, path, *rest, **kw)
        if Path(path).name == "ok.yaml":  # not a saved recipe.yaml a command may read
            parsed.append(made)
        return made

    def first_use(recipe, *args, **kw):
        used.append(recipe)
        raise _Loaded

    monkeypatch.setattr(recipe_module, "parse_recipe", parse_recipe)
    module, _, name = stand_in.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, first_use)
    with pytest.raises(_Loaded):
        cli.COMMANDS[command](cli.build_parser().parse_args([command, "ok.yaml"]))
    assert len(parsed) == 1, f"ok.yaml parsed {len(parsed)} times"
    assert used == parsed  # the Recipe of that one parse
