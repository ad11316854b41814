"""runner_prepare: a run before its passes. What Runner.prepare sets (passes, teacher, the cache keys,
the RunContext) and that it computes nothing (no calibration memory estimate for a recipe whose passes
need no calibration, nor a warning of activations where they read none)."""

from __future__ import annotations

import re

import pytest

import compress.runner_prepare as runner_prepare
import compress.runner_memory as runner_memory
from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE


@pytest.fixture
def teacher(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def _prepared(tmp_path, teacher, passes: str) -> Runner:
    recipe = parse_recipe(SIMPLE.format(teacher=teacher, passes=passes), str(tmp_path / "r.yaml"))
    runner = Runner(recipe, tmp_path / "out", tmp_path / "run")
    runner.prepare()
    return runner


def test_prepare_sets_the_cache_keys_and_the_context(tmp_path, teacher):
    runner = _prepared(tmp_path, teacher, "  - svd: {ratio: 0.5}\n")
    assert [p.name for p in runner.passes] == ["svd"]
    assert runner.ctx.fingerprint and runner.ctx.teacher is runner.teacher and runner.ctx.adapter is runner.adapter
    assert runner.ctx.source_kind == "synthetic"  # (svd.objective's words for a source whose batches pair none)
    assert runner.inputs_cache is None and runner.inputs_id is None  # synthetic inputs: nothing sampled
    assert (tmp_path / "run").is_dir() and not (tmp_path / "out").exists()
    batches = runner.ctx.eval_inputs()
    assert len(batches) >= 1 and runner.ctx.eval_inputs() is batches  # computed once


def test_a_config_edited_in_place_keys_other_caches(tmp_path, teacher):
    """The fingerprint keying the calibration caches held the teacher's weights but not the config
    it loaded with: a config.json edited in place (norm_eps) read back statistics measured with the
    old one, and --restart kept them (they were of 'this' fingerprint)."""
    import json

    before = _prepared(tmp_path, teacher, "  - svd: {ratio: 0.5}\n").ctx.fingerprint
    assert _prepared(tmp_path, teacher, "  - svd: {ratio: 0.5}\n").ctx.fingerprint == before  # the same teacher
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "norm_eps": config["norm_eps"] * 10}))
    assert _prepared(tmp_path, teacher, "  - svd: {ratio: 0.5}\n").ctx.fingerprint != before


def test_no_memory_estimate_without_calibration(tmp_path, teacher, monkeypatch):
    """A recipe whose passes need no calibration (remove_blocks by index) estimates no activations."""
    monkeypatch.setattr(runner_prepare, "footprint", lambda *a, **k: pytest.fail("estimated"))
    runner = _prepared(tmp_path, teacher, "  - remove_blocks: {blocks: {blocks: [0]}}\n")
    assert [p.name for p in runner.passes] == ["remove_blocks"]
    with pytest.raises(pytest.fail.Exception, match="estimated"):
        _prepared(tmp_path, teacher, "  - svd: {ratio: 0.5}\n")


@pytest.mark.parametrize("none, one", [("{count: 0, criterion: learned}", "{count: 1, criterion: learned}"),
                                       ("{fraction: 0.25, criterion: learned}", "{fraction: 0.34, criterion: learned}"),
                                       ("{count: 0}", "{count: 1}"),
                                       ("{count: 0, iterative: true}", "{count: 1, iterative: true}")])
def test_no_activation_warning_for_a_removal_of_none(tmp_path, teacher, monkeypatch, capsys, none, one):
    """A removal whose budget is none (a fraction of 3 blocks rounding to 0 too) reads no calibration
    input, as plan says ('calibration: none', plan.calibrates): the run still warned 'calibration: 8
    inputs of 16 + 8 caption tokens; ...; 1000 bytes are free on cpu: set calibration.spill_activations:
    true ...' of activations it never computes. A removal of one block is warned, as before."""
    monkeypatch.setattr(runner_memory, "available_bytes", lambda: 1000)  # every estimate is too big
    _prepared(tmp_path, teacher, f"  - remove_blocks: {none}\n")
    assert "spill_activations" not in capsys.readouterr().err
    _prepared(tmp_path, teacher, f"  - remove_blocks: {one}\n")
    assert "set calibration.spill_activations: true" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("removal", ["{blocks: {blocks: [0]}}", "{count: 0}"])
def test_a_streamed_run_that_calibrates_nothing_still_checks_its_weights_fit(tmp_path, teacher, monkeypatch,
                                                                             capsys, removal):
    """A streamed run whose passes read no calibration input (a removal by index, or of none) skipped the
    check that its two top levels and one block fit what is free (warn_if_streamed_too_big): nothing was
    said. Now it is, with no activations counted nor their settings advised; no footprint is estimated."""
    monkeypatch.setattr(runner_memory, "available_bytes", lambda: 1000)
    monkeypatch.setattr(runner_prepare, "footprint", lambda *a, **k: pytest.fail("estimated"))
    recipe = parse_recipe("stream: true\n" + SIMPLE.format(teacher=teacher, passes=f"  - remove_blocks: {removal}\n"),
                          str(tmp_path / "r.yaml"))
    Runner(recipe, tmp_path / "out", tmp_path / "run").prepare()
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(r"a streamed run holds about \d+ KiB on cpu \(two top levels and one block; no pass calibrates\), "
                     r"and 1000 bytes are free there: set compute_dtype: bfloat16, or run where more memory is free",
                     err), err  # '0.0 GiB' twice: sizes under 1 MiB in KiB and bytes (calib_footprint.human_size)
    assert "spill_activations" not in err


def test_a_distill_on_teacher_samples_is_warned_of_the_pipeline_it_samples(tmp_path, monkeypatch, capsys):
    """Through a pipeline source, distill's teacher samples sample the pipeline, its text encoders and
    VAE beside the teacher (calibration.drawn, though no pass calibrates): plan and run (which plans the
    recipe before loading, plan.warn_if_beyond_memory) left them out of the peak they warn of, counting
    them only where some pass calibrates. Both name them now, in the same words."""
    import compress.plan as plan
    import compress.plan_memory as plan_memory
    from compress import cli
    from tests.pipelines import pixart_pipeline

    folder = pixart_pipeline(tmp_path / "pipe")
    monkeypatch.setattr(plan_memory, "component_params", lambda source, index: 10**10)  # as big as T5-XXL and more
    monkeypatch.setattr(plan, "device_memory", lambda device: (2**20, "this machine"))  # every peak is beyond
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: pixart\nteacher: {folder}\ndevice: cpu\ncalibration: {{source: pipeline, prompts: "
                      "[a cat, a dog], sample_steps: 2, timesteps: 2, batch_size: 2, heldout: 2}\npasses:\n"
                      "  - distill: {steps: 2, warmup_steps: 0, data: teacher_samples}\n")
    capsys.readouterr()
    assert cli.main(["plan", str(recipe)]) == 0
    planned = [line for line in capsys.readouterr().err.splitlines() if "at its peak" in line]
    Runner(parse_recipe(recipe.read_text(), str(recipe)), tmp_path / "out", tmp_path / "run").prepare()
    ran = [line for line in capsys.readouterr().err.splitlines() if "at its peak" in line]
    assert len(planned) == 1 and ran == planned
    assert "the pipeline's text encoders and VAE while calibration samples 37.3 GiB (teacher)" in planned[0]


@pytest.mark.parametrize("passes, advice", [
    ("  - svd: {ratio: 0.5, fisher: block}\n", "set stream: true in the recipe (one block resident), or "
                                               "compute_dtype: bfloat16"),
    ("  - remove_blocks: {count: 1, criterion: learned}\n", "set stream: true in the recipe with "
     "passes.0.remove_blocks.criterion: scan or proxy (then one block is resident), or compute_dtype: bfloat16"),
    ("  - svd: {ratio: 0.5, fisher: block}\n  - distill: {steps: 2, data: teacher_samples}\n",
     "distill (passes.1) needs the whole model in memory, which stream: true does not hold: set "
     "compute_dtype: bfloat16, or run where more memory is free")])
def test_a_teacher_too_big_to_hold_is_advised_what_its_passes_allow(tmp_path, teacher, monkeypatch, capsys,
                                                                    passes, advice):
    """A teacher too big to hold resident was advised 'set stream: true in the recipe (svd passes, one block
    resident) or compute_dtype: bfloat16' whatever the passes, though run refuses stream: true for a
    learned removal (unless its criterion changes) and for distill (always): the advice follows the rule
    run refuses by (stream_refusals.not_streamed)."""
    monkeypatch.setattr(runner_memory, "available_bytes", lambda: 1000)
    try:
        _prepared(tmp_path, teacher, passes)
    except UserError:  # (after the teacher loaded: the warning is said)
        pass
    assert f"1000 bytes are available; {advice}" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("passes", ["  - svd: {ratio: 0.5}\n", "  - remove_blocks: {count: 1, criterion: learned}\n",
                                    "  - svd: {ratio: 0.5}\n  - distill: {steps: 2, data: teacher_samples}\n"])
def test_plan_advises_a_teacher_too_big_to_hold_as_run_does(tmp_path, teacher, monkeypatch, capsys, passes):
    """plan's fix of 'teacher and student weights' was 'stream: true (svd passes)' for a folder teacher
    whatever the passes, where run advises what they allow (a learned removal streams with another
    criterion, distill never): both read runner_memory.resident_advice, and say the same words."""
    import compress.plan_machine as plan_machine
    from compress.plan import make_plan

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)  # plan's own warning aside
    monkeypatch.setattr(runner_memory, "available_bytes", lambda: 1000)  # the teacher never fits
    recipe = parse_recipe(SIMPLE.format(teacher=teacher, passes=passes), str(tmp_path / "r.yaml"))
    recipe.device = "cpu"
    planned = {p["what"]: p for p in make_plan(recipe)["memory"]["parts"]}["teacher and student weights"]["fix"]
    capsys.readouterr()
    try:
        _prepared(tmp_path, teacher, passes)
    except UserError:  # (after the teacher loaded: the warning is said)
        pass
    ran = re.search(r"bytes are available; (.*?)(?: warning:|$)", " ".join(capsys.readouterr().err.split()))
    assert ran and planned == ran[1]


def test_a_finished_run_of_other_prompts_is_not_offered_to_resume(tmp_path, capsys):
    """A finished run whose passes a rerun shares, but sampled on other calibration prompts, was noted
    as kept by --resume ('add --resume to keep them'), which then refused it (the prompts changed): the
    note is said only where --resume would keep the stage (same teacher, same prompts)."""
    text = ("model: pixart\nteacher: toy:pixart\n"
            "calibration: {{source: pipeline, prompts: [{}], sample_steps: 2, timesteps: 2, heldout: 1}}\n"
            "passes:\n  - remove_blocks: {{blocks: {{blocks: [0]}}}}\n")

    def runner(prompts: str, out: str, **kw) -> Runner:
        return Runner(parse_recipe(text.format(prompts), str(tmp_path / "r.yaml")), tmp_path / out,
                      tmp_path / "run", **kw)

    runner("a 1, a 2", "out-a").run()
    capsys.readouterr()
    runner("a 3, a 4", "out-b").prepare()  # other prompts: --resume refuses the stage, so no note
    assert "finished run" not in capsys.readouterr().err
    with pytest.raises(UserError, match="the calibration prompts changed"):
        runner("a 3, a 4", "out-b", resume=True).run()
    runner("a 1, a 2", "out-c").prepare()  # the same prompts: noted, and --resume keeps it
    assert ("holds a finished run that shares this recipe's one pass: starting over (Ctrl-C now and add "
            "--resume to keep them, with the same teacher)") in " ".join(capsys.readouterr().err.split())
    runner("a 1, a 2", "out-c", resume=True).run()
    assert "its only pass (remove_blocks) was done: writing the output again" in " ".join(capsys.readouterr().err.split())
