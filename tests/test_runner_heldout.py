"""compress.runner_heldout.check_stage: a stage whose student's held-out prediction is not finite stops
the run, naming the pass and the student's first layer to hold NaN/Inf; nothing is exported."""

import pytest
import torch

from compress.errors import NumericError
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_stage_whose_prediction_is_not_finite_is_refused_naming_its_first_layer(tmp_path, monkeypatch):
    """A pass that hands on a student whose prediction overflows (here an svd pass whose output layer is
    set to 1e38, finite): the run printed 'teacher-relative error nan' and wrote the output."""
    from compress.passes.svd import SVDPass

    real = SVDPass.run

    def overflowing(self, model, ctx):
        model = real(self, model, ctx)
        model.transformer_blocks[1].ff.net[2].bias.data[:] = 1e38  # finite; its output's sums are not
        return model

    monkeypatch.setattr(SVDPass, "run", overflowing)
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    passes = "  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n"
    with pytest.raises(NumericError) as e:
        run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "teacher", passes=passes), "r")
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'}:5: pass 1/1 (svd): the student's prediction holds "
                                   "NaN/Inf on held-out batch 1 of "), e.value
    assert "'s output is the first to hold it" in str(e.value)
    # (the first pass: there are no passes before it to keep)
    assert str(e.value).endswith("; change its settings and rerun with --resume"), e.value
    assert not (tmp_path / "out-r").exists()


DISTILL = ("  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n"
           "  - distill: {lr: LR, steps: 2, batch_size: 2, checkpoint_every: 1, progress: false, plot: false, "
           "data: teacher_samples, num_samples: 4, sample_steps: 2}\n")


def test_a_refused_distill_stage_names_its_key_and_what_resume_keeps(tmp_path, monkeypatch):
    """A distill stage refused by the held-out check said 'lower distill.lr and rerun with --resume (it keeps
    the passes before it)': not the pass's key (passes.1.distill.lr, as its divergence words say it), nor that
    --resume keeps its teacher samples and trains it from its start (its stage deleted, Runner._checked; its
    checkpoints gone with the stage's saving). What the words say is what --resume at a lower lr does."""
    import json

    from compress.passes import svd
    from compress.passes.distill import DistillPass

    real, ran = DistillPass.run, []

    def diverged(self, model, ctx):  # finite in its own checks, NaN in the runner's
        model = real(self, model, ctx)
        if not ran:
            model.proj_out.weight.data[:] = float("nan")
        ran.append(1)
        return model

    monkeypatch.setattr(DistillPass, "run", diverged)
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes=DISTILL)
    with pytest.raises(NumericError) as e:
        run_recipe(tmp_path, text.replace("LR", "0.001"), "r")
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'}:6: pass 2/2 (distill): the student's prediction holds "
                                   "NaN/Inf on held-out batch 1 of "), e.value
    assert str(e.value).endswith("; lower passes.1.distill.lr (0.001) and rerun with --resume (it keeps the passes "
                                 "before it and the teacher samples, and trains this pass from its start)"), e.value
    run_dir = tmp_path / "run-r"
    assert not (run_dir / "distill" / "checkpoints").exists() and not (run_dir / "stages" / "1-distill").exists()
    samples = sorted((run_dir / "distill" / "teacher_samples").rglob("*"))
    assert samples
    svd_runs = []
    real_svd = svd.SVDPass.run
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, m, c: (svd_runs.append(1), real_svd(self, m, c))[1])
    out = run_recipe(tmp_path, text.replace("LR", "0.0005"), "r", resume=True)
    assert svd_runs == [] and len(ran) == 2  # the passes before it kept, this one trained again
    distill = json.loads((out / "report.json").read_text())["distill"]
    assert distill["resumed"] == 0 and distill["steps_done"] == 2, distill  # from its start
    assert sorted((run_dir / "distill" / "teacher_samples").rglob("*")) == samples  # kept (not sampled again)


@pytest.mark.parametrize("index, name, config, said", [
    (0, "svd", {}, "change its settings and rerun with --resume"),
    (2, "svd", {}, "change its settings and rerun with --resume (it keeps the passes before it)"),
    (0, "distill", dict(lr=0.01), "lower passes.0.distill.lr (0.01) and rerun with --resume (it trains this pass "
                                  "from its start)"),
    (3, "distill", dict(lr=0.01, grad_clip=0.0, data="teacher_samples"),
     "lower passes.3.distill.lr (0.01) or set passes.3.distill.grad_clip (0 now: no clipping) and rerun with --resume "
     "(it keeps the passes before it and the teacher samples, and trains this pass from its start)"),
])
def test_the_refusals_words_say_only_what_resume_keeps(index, name, config, said):
    """'(it keeps the passes before it)' was said of the first pass too, 'lower distill.lr' of every distill pass."""
    from types import SimpleNamespace

    from compress.passes.distill import DistillConfig
    from compress.runner_heldout import nonfinite_words

    p = SimpleNamespace(name=name, config=DistillConfig(**config) if name == "distill" else None)
    runner = SimpleNamespace(doing=index, passes=[None] * index + [p], _doing_words=lambda: "pass X")
    assert nonfinite_words(runner, None, []) == f"pass X: the student's prediction holds NaN/Inf; {said}"


TOY = ("model: {family}\nteacher: toy:{family}\n"
       "calibration: {{num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 6, cfg_branches: {cfg}}}\n"
       "passes:\n  - svd: {{targets: [mlp], ratio: 0.5, multiple: 8, fisher: none}}\n")


def _direct_guided_error(family: str, out, dtype=None) -> float:
    """||guided(student) − guided(teacher)|| / ||guided(teacher)|| on the toy source's 6 held-out inputs
    (seed 1), each model's prediction of [empty prompt; prompt] guided as the toy pipeline guides (scale 3);
    the student `out` loaded in `dtype` (None: the one it holds)."""
    from compress.arch import get_adapter
    from compress import load_transformer
    from compress.toy.data import model_inputs
    from compress.toy.pipeline import DEFAULT_GUIDANCE, guide
    from compress.toy.weights import load_toy_teacher

    kwargs = model_inputs(family, 6, seed=1, split="heldout", cfg=True)  # (12, ...): [uncond; cond]
    teacher, student = load_toy_teacher(family), load_transformer(out, **({} if dtype is None else {'dtype': dtype}))
    adapter = get_adapter(teacher)
    with torch.no_grad():
        t, s = (guide(adapter.predict(m, kwargs).double(), DEFAULT_GUIDANCE) for m in (teacher, student))
    return ((s - t).norm() / t.norm()).item()


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_toy_run_with_cfg_branches_records_the_guided_error_beside_the_conditional(tmp_path, family, capsys):
    """The toy source's held-out inputs hold the prompt's branch alone: a run recorded its conditional error
    only, though its pipeline samples uncond + 3 (cond − uncond). Now each stage records `guided_error` too
    (report.json's stages, the stage line), equal to that computed directly; the conditional error is
    unchanged (measured on the prompt's rows alone); without cfg_branches there is none."""
    import json

    out = run_recipe(tmp_path, TOY.format(family=family, cfg="true"), "r")
    stage = json.loads((out / "report.json").read_text())["stages"][-1]
    assert stage["guided_error"] == pytest.approx(_direct_guided_error(family, out), rel=1e-4)
    assert stage["guided_error"] != pytest.approx(stage["relative_error"], rel=1e-3)
    said = "".join(capsys.readouterr())
    assert f"teacher-relative error {stage['relative_error']:.4g} (guided {stage['guided_error']:.4g})" in said
    plain = run_recipe(tmp_path, TOY.format(family=family, cfg="false"), "p")
    unguided = json.loads((plain / "report.json").read_text())["stages"][-1]
    assert "guided_error" not in unguided and "(guided" not in "".join(capsys.readouterr())


def test_a_kept_stage_recorded_before_the_guided_error_resumes_with_none(tmp_path, capsys):
    """--resume after a run whose stages recorded no guided error (an older dit-compress): the kept pass
    keeps its record as it was (report.json without its guided_error, inspect's '-'), the pass run again
    records one."""
    import json

    two = TOY.format(family="pixart", cfg="true") + "  - svd: {targets: [modulation], ranks: {modulation: 8}, fisher: none}\n"
    run_recipe(tmp_path, two, "r")
    for path in (tmp_path / "run-r" / "stages").glob("*/state.json"):
        state = json.loads(path.read_text())
        for stage in state["report"]["stages"]:
            stage.pop("guided_error")
        path.write_text(json.dumps(state))
    out = run_recipe(tmp_path, two.replace("modulation: 8", "modulation: 4"), "r", resume=True, overwrite=True)
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert "guided_error" not in stages[0] and stages[1]["guided_error"] > 0



def _guided_error_of(export: bool):
    """() -> the guided error the run's check (guided_error, of pass 2/3 at r.yaml:6) or its bfloat16 export
    (runner_export.exported_error) records for a tiny PixArt, with a runner of what they read."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from compress.arch import get_adapter
    from compress.passes.base import predictions
    from compress.runner_export import exported_error
    from compress.runner_heldout import guided_error
    from tests.conftest import pixart_inputs

    model = tiny_pixart()
    batches = [pixart_inputs(model)]
    recipe = SimpleNamespace(export=SimpleNamespace(dtype="bfloat16"), compute_dtype="float32", stream=False)
    runner = SimpleNamespace(adapter=get_adapter(model), _doing_words=lambda: "r.yaml:6: pass 2/3 (svd)",
                             recipe=recipe, ctx=SimpleNamespace(report={"stages": [{"guided_error": 0.1}]}),
                             held_out=(batches, predictions(model, get_adapter(model), batches)),
                             held_out_guided=(None, []), models=SimpleNamespace(forwards=lambda m: nullcontext()))
    if export:
        return lambda: exported_error(runner, model)["guided_error"]
    return lambda: guided_error(runner, model, [], runner.held_out_guided)["guided_error"]


@pytest.mark.parametrize("export", [False, True], ids=["stage", "export"])
def test_a_guided_error_not_finite_is_null_and_warned_naming_whose(monkeypatch, capsys, export):
    """The run's check (guided_error) and its export (runner_export.exported_error) record null where the
    guided prediction holds NaN/Inf, in one warning each (runner_heldout.finite_guided); finite, no word."""
    import math

    import compress.runner_heldout as heldout

    check = _guided_error_of(export)
    whose = "export: the exported model" if export else "r.yaml:6: pass 2/3 (svd): the student"
    monkeypatch.setattr(heldout, "guided_distance", lambda *args: 0.25)
    assert check() == 0.25 and "NaN" not in "".join(capsys.readouterr())
    monkeypatch.setattr(heldout, "guided_distance", lambda *args: math.nan)
    assert check() is None
    said = " ".join("".join(capsys.readouterr()).split())
    assert f"warning: {whose}'s guided prediction (with the empty prompt's branch) holds NaN/Inf" in said, said


def test_resume_of_stages_measured_on_the_older_seeds_heldout_inputs_says_so(tmp_path, capsys):
    """T1 stop 52 #1: the held-out inputs were drawn with calibration.seed + 1; they are one set for every seed now.
    --resume of a seed-1 run folder whose kept pass was measured on the older draw (its stage's report records no
    heldout seed) says its error is not on the inputs the passes run now are measured on; a folder of this
    dit-compress says nothing, and report.json's heldout records the seed its inputs are drawn with (1)."""
    import json

    two = (TOY.format(family="pixart", cfg="false").replace("heldout: 6", "heldout: 6, seed: 1")
           + "  - svd: {targets: [modulation], ranks: {modulation: 8}, fisher: none}\n")
    out = run_recipe(tmp_path, two, "r")
    assert json.loads((out / "report.json").read_text())["heldout"]["seed"] == 1
    capsys.readouterr()
    out = run_recipe(tmp_path, two.replace("modulation: 8", "modulation: 4"), "r", resume=True, overwrite=True)
    assert "older dit-compress" not in "".join(capsys.readouterr())
    for path in (tmp_path / "run-r" / "stages").glob("*/state.json"):  # as an older dit-compress wrote them
        state = json.loads(path.read_text())
        state["report"].pop("heldout")
        path.write_text(json.dumps(state))
    out = run_recipe(tmp_path, two.replace("modulation: 8", "modulation: 2"), "r", resume=True, overwrite=True)
    said = " ".join("".join(capsys.readouterr()).split())
    assert ("--resume: the held-out errors of the 1 pass kept were measured by an older dit-compress, on held-out "
            "inputs drawn for calibration.seed 1 (with seed 2: each seed had its own)") in said
    assert "rerun with --restart" in said
    heldout = json.loads((out / "report.json").read_text())["heldout"]
    assert "seed" not in heldout  # its kept errors: the older draw
    assert heldout["older_draw_stages"] == 1  # the first stage's only: the second's and the export's are today's


def test_a_second_resume_counts_only_the_stages_of_the_older_draw():
    """--resume of a run folder an earlier --resume mixed (its first stage of the older draw, its second of
    today's: heldout.older_draw_stages 1) named every kept pass measured as the older draw's ('the 2 passes
    kept'): the recorded count, where there is one, of the passes kept."""
    from compress.runner_heldout import older_draw_stages, older_heldout_note

    mixed = {"stages": [{"relative_error": 0.2}, {"relative_error": 0.1}], "heldout": {"older_draw_stages": 1}}
    assert [older_draw_stages(mixed, start, "toy", 1) for start in (0, 1, 2)] == [0, 1, 1]
    assert older_draw_stages(dict(mixed, heldout={}), 2, "toy", 1) == 2
    assert "errors of the 1 pass kept were" in older_heldout_note(older_draw_stages(mixed, 2, "toy", 1), "toy", 1)
    assert "errors of the 2 passes kept were" in older_heldout_note(2, "toy", 1)


@pytest.mark.parametrize("kind, seed, said", [("toy", 0, False), ("toy", 1, True), ("pipeline", 0, False),
                                              ("pipeline", 3, True), ("synthetic", 0, True)])
def test_which_older_heldout_draws_resume_names(kind, seed, said):
    """The older draw (seed + 1; a pipeline's seed + 10000) was today's for seed 0 of the toy and pipeline
    sources, never for the synthetic source (numpy's generator now); a kept pass measured by this dit-compress
    (its report's heldout seed) or none kept: nothing to say."""
    from compress.runner_heldout import older_draw_stages, older_heldout_note

    report = {"stages": [{"pass": "svd", "relative_error": 0.1}]}
    assert older_draw_stages(report, 1, kind, seed) == int(said)
    assert older_draw_stages(dict(report, heldout={"seed": 1}), 1, kind, seed) == 0
    assert older_draw_stages(report, 0, kind, seed) == 0
    if said:  # the older draw's seed: seed + 1, a pipeline's seed + 10000
        assert f"drawn for calibration.seed {seed} (with seed {seed + (10000 if kind == 'pipeline' else 1)}:" in \
            older_heldout_note(1, kind, seed)


def test_resume_of_a_run_stopped_in_its_first_held_out_check_says_nothing_of_an_older_draw(tmp_path, monkeypatch,
                                                                                        capsys):
    """R2 stop 52: a run of this dit-compress stopped during its first pass's held-out check (its stage kept, not yet
    measured, so its report records no heldout seed) got '--resume: the held-out errors of the 1 pass kept were
    measured by an older dit-compress ...' (synthetic source, any seed), and its later stages then recorded no seed
    (the note again on every resume). Only kept passes measured count: nothing said, report.json's heldout seed."""
    import json
    import os
    import signal

    import compress.runner_heldout
    from compress.cli import main
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks, then svd; synthetic source
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"),
            "--set", "calibration.seed=3"]
    real = compress.runner_heldout.relative_error

    def stop_then_measure(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(compress.runner_heldout, "relative_error", stop_then_measure)
        assert main(argv) == 143
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    said = "".join(capsys.readouterr())
    assert "pass 1/2 (remove_blocks, kept) was stopped during its held-out check" in said
    assert "older dit-compress" not in said
    assert json.loads((tmp_path / "out" / "report.json").read_text())["heldout"]["seed"] == 1
