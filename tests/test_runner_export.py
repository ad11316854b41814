"""What a run writes beside its weights (runner_export): the recipe as run names the teacher the run read."""

from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from compress.plan import make_plan
from compress.recipe import load_recipe
from compress.report import error_figure
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE, run_recipe

PASSES = "  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n"
STREAMED_PASSES = "  - svd: {targets: [attention], ratio: 0.5, fisher: block, multiple: 2}\n"  # stream: true's


def test_the_recipe_as_run_names_the_teacher_given_with_teacher(tmp_path, monkeypatch):
    """--teacher X over a recipe naming Y: the output's recipe.yaml names X (absolute, though given
    relative), so that it loads, plans and reruns X, not the recipe's Y."""
    tiny_pixart().save_pretrained(tmp_path / "x")
    tiny_pixart(num_layers=3).save_pretrained(tmp_path / "y")  # another model: plan tells them apart
    monkeypatch.chdir(tmp_path)
    out = run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "y", passes=PASSES), "r", teacher="x")
    text = (out / "recipe.yaml").read_text()
    assert yaml.safe_load(text)["teacher"] == str(tmp_path / "x")
    assert f"# teacher: the one the run read (the recipe's was {tmp_path / 'y'})" in text
    monkeypatch.chdir("/")
    again = load_recipe(out / "recipe.yaml")
    assert again.teacher == str(tmp_path / "x")
    plan = make_plan(again)
    assert plan["teacher"] == str(tmp_path / "x")
    assert plan["params_before"] == sum(p.numel() for p in tiny_pixart().parameters())


def test_the_recipe_as_run_names_the_teacher_config_it_read(tmp_path):
    """A single file with --teacher-config: the recipe as run names the file and, as its teacher_config key
    (it was a comment asking to give it again), the config; load_recipe reads it, and plan without
    --teacher-config resolves the same teacher."""
    model = tiny_pixart()
    save_file(model.state_dict(), str(tmp_path / "pix.safetensors"))
    model.save_config(tmp_path / "cfg")
    text = SIMPLE.format(teacher=tmp_path / "pix.safetensors", passes=PASSES)
    out = run_recipe(tmp_path, text, "r", teacher_config=str(tmp_path / "cfg"))
    written = (out / "recipe.yaml").read_text()
    assert f"\nteacher_config: {tmp_path / 'cfg'}\n" in written and "--teacher-config" not in written
    assert "# teacher: the one the run read" not in written  # the recipe's own
    again = load_recipe(out / "recipe.yaml")
    assert Path(again.teacher) == tmp_path / "pix.safetensors" and again.teacher_config == str(tmp_path / "cfg")
    plan = make_plan(again)
    assert plan["params_before"] == sum(p.numel() for p in model.parameters())


def test_the_exported_weights_error_is_measured_where_the_export_rounds_them(tmp_path, capsys):
    """The run's final error (report.json, model card) was the float32 stage weights' alone, before the
    export cast to bfloat16: the exported model's (eval's) error is measured too, and both are said."""
    import json

    from compress.cli import main

    tiny_pixart().save_pretrained(tmp_path / "t")
    text = SIMPLE.format(teacher=tmp_path / "t", passes=PASSES)
    out = run_recipe(tmp_path, text + "export: {dtype: bfloat16}\n", "r")
    report = json.loads((out / "report.json").read_text())
    last = report["stages"][-1]["relative_error"]
    export = report["export"]
    assert export["dtype"] == "bfloat16" and export["computed_in"] == "float32" and "exact" not in export
    assert export["relative_error"] != last and abs(export["relative_error"] - last) < 0.05 * last
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_rel_error"] == pytest.approx(export["relative_error"], rel=1e-9)
    card = (out / "README.md").read_text()
    assert (f"The teacher-relative errors above are of the float32 weights before the export; the output holds them in "
            f"bfloat16: its teacher-relative error on the same held-out inputs is "
            f"{error_figure(export['relative_error'])}.") in card
    plain = json.loads((run_recipe(tmp_path, text, "f32") / "report.json").read_text())
    assert plain["export"] == {"dtype": "float32", "computed_in": "float32", "exact": True,
                               "relative_error": plain["stages"][-1]["relative_error"]}


def test_a_float16_export_warns_of_activations_beyond_float16_naming_the_layer(tmp_path, capsys):
    """A teacher whose weights float16 holds (block 1's MLP output weights ~1e4) computes activations past
    65504: the float32 measurement stayed finite and said nothing, while the float16 model gives inf/NaN.
    The export warns naming where it starts and records each block's largest; eval says it computes wider."""
    import json

    import torch

    from compress.cli import main

    teacher = tiny_pixart()
    with torch.no_grad():
        teacher.transformer_blocks[1].ff.net[2].weight.mul_(10000)
    teacher.save_pretrained(tmp_path / "t")
    text = SIMPLE.format(teacher=tmp_path / "t", passes=PASSES) + "export: {dtype: float16}\n"
    out = run_recipe(tmp_path, text, "r")
    err = " ".join(capsys.readouterr().err.split())  # rich wraps nothing (soft_wrap), but be safe
    assert "warning: export.dtype float16: on the held-out inputs the exported model's activations reach" in err
    assert "beyond float16's range (max 65504): run in float16 it gives inf/NaN; first at " \
           "transformer_blocks.1.ff.net.2 (" in err
    largest = json.loads((out / "report.json").read_text())["export"]["activation_max"]
    assert largest["transformer_blocks.0"] < 1000 < 65504 < largest["transformer_blocks.1"]
    assert main(["eval", str(out), "--json"]) == 0
    assert (f"note: {out} holds float16 weights, computed here in float32 (its recipe's compute_dtype" in
            " ".join(capsys.readouterr().err.split()))


def test_a_float16_export_of_a_normal_model_does_not_warn(tmp_path, capsys):
    import json

    tiny_pixart().save_pretrained(tmp_path / "t")
    out = run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "t", passes=PASSES) + "export: {dtype: float16}\n", "r")
    assert "activations reach" not in capsys.readouterr().err
    largest = json.loads((out / "report.json").read_text())["export"]["activation_max"]
    assert {"transformer_blocks.0", "transformer_blocks.2", "proj_out"} <= set(largest)
    assert 0 < max(largest.values()) < 65504 / 2


def test_a_streamed_float16_export_warns_from_the_last_held_out_check_and_again_on_a_resumed_export(
        tmp_path, capsys):
    """Streamed, the export measures no weights of its own (relative_error None): the float16 output of the
    teacher above passed silently. Its last pass's held-out check records the maxima (the final student
    before the export's rounding), so the export warns naming the layer; a --resume that only changes
    export.dtype to float16 (the passes not run again) reads them back from the stage and warns too."""
    import json

    import torch

    teacher = tiny_pixart()
    with torch.no_grad():
        teacher.transformer_blocks[1].ff.net[2].weight.mul_(10000)
    teacher.save_pretrained(tmp_path / "t")
    text = "stream: true\n" + SIMPLE.format(teacher=tmp_path / "t", passes=STREAMED_PASSES)
    out = run_recipe(tmp_path, text + "export: {dtype: float16}\n", "r")
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: export.dtype float16: on the held-out inputs the last pass's student's activations (its "
            "held-out check, before the export's rounding) reach") in err
    assert "beyond float16's range (max 65504)" in err and "first at transformer_blocks.1.ff.net.2 (" in err
    export = json.loads((out / "report.json").read_text())["export"]
    assert export["relative_error"] is None
    largest = export["activation_max"]
    assert largest["transformer_blocks.0"] < 1000 < 65504 < largest["transformer_blocks.1"]
    run_recipe(tmp_path, text, "again")  # float32: nothing to warn of
    assert "activations" not in capsys.readouterr().err
    run_recipe(tmp_path, text + "export: {dtype: float16}\n", "again", resume=True, overwrite=True)
    assert "first at transformer_blocks.1.ff.net.2 (" in " ".join(capsys.readouterr().err.split())


def test_a_streamed_float16_export_of_a_normal_model_does_not_warn(tmp_path, capsys):
    import json

    tiny_pixart().save_pretrained(tmp_path / "t")
    text = "stream: true\n" + SIMPLE.format(teacher=tmp_path / "t", passes=STREAMED_PASSES)
    out = run_recipe(tmp_path, text + "export: {dtype: float16}\n", "r")
    assert "activations" not in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    largest = report["export"]["activation_max"]
    assert {"transformer_blocks.0", "transformer_blocks.2", "proj_out"} <= set(largest)
    assert 0 < max(largest.values()) < 65504 / 2
    assert report["stages"][-1]["activation_near_float16"] == []


def test_a_resumed_float16_export_of_a_stage_measured_before_the_maxima_says_its_range_is_unchecked(
        tmp_path, capsys):
    """A streamed output whose last stage record predates 667c647 (no activation_max in its state.json),
    resumed only to export float16, had no maxima to warn from and said nothing: it says the range was not
    measured and how to measure it, and report.json claims no maxima."""
    import json

    tiny_pixart().save_pretrained(tmp_path / "t")
    text = "stream: true\n" + SIMPLE.format(teacher=tmp_path / "t", passes=STREAMED_PASSES)
    run_recipe(tmp_path, text, "r")
    (state,) = (tmp_path / "run-r" / "stages").glob("*/state.json")
    saved = json.loads(state.read_text())
    for key in ("activation_max", "activation_near_float16"):  # as written before they were recorded
        del saved["report"]["stages"][-1][key]
    state.write_text(json.dumps(saved))
    capsys.readouterr()
    out = run_recipe(tmp_path, text + "export: {dtype: float16}\n", "r", resume=True, overwrite=True)
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: export.dtype float16: the activations of this output were not measured (its last "
            "stage was saved before runs recorded them): float16's range is unchecked") in err
    assert "--restart" in err
    assert "activation_max" not in json.loads((out / "report.json").read_text())["export"]
    run_recipe(tmp_path, text + "export: {dtype: bfloat16}\n", "r", resume=True, overwrite=True)
    assert "not measured" not in capsys.readouterr().err  # bfloat16 holds float32's range
    out = run_recipe(tmp_path, text + "export: {dtype: float16}\n", "r", restart=True, overwrite=True)
    assert "not measured" not in capsys.readouterr().err  # as the warning advises: measured again
    assert json.loads((out / "report.json").read_text())["export"]["activation_max"]


def test_the_recipe_as_run_names_a_relative_calibration_pipeline_absolute(tmp_path, monkeypatch):
    """A relative calibration.pipeline (taken from the current folder) was written as given: load_pipeline
    of the output suggested base='pipes/pix', which loads only from the folder the run started in. The
    recipe as run names it absolute, as the run read it; the run's recipe keeps it as given."""
    import json

    from compress import save_compressed
    from compress.io_pipeline import _ask
    from compress.runner_export import recipe_as_run

    (tmp_path / "pipes" / "pix").mkdir(parents=True)
    (tmp_path / "pipes" / "pix" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    (tmp_path / "r.yaml").write_text(f"model: pixart\nteacher: {tmp_path / 't'}\ncalibration: {{source: pipeline, "
                                     f"pipeline: pipes/pix}}\npasses:\n{PASSES}")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(tmp_path / "r.yaml")
    out = save_compressed(tiny_pixart(), tmp_path / "out", extra={"teacher": str(tmp_path / "t")})
    (out / "recipe.yaml").write_text(recipe_as_run(recipe, None, {"teacher": str(tmp_path / "t")}))
    assert recipe.calibration.pipeline == "pipes/pix"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["calibration"]["pipeline"] == str(tmp_path / "pipes" / "pix")
    monkeypatch.chdir("/")
    assert _ask(out, []).startswith(f"pass base='{tmp_path / 'pipes' / 'pix'}', the pipeline the recipe.yaml of {out}")


@pytest.mark.parametrize("cfg", ["true", "false"])
def test_report_json_records_the_held_out_inputs_and_the_guided_errors_scale(tmp_path, cfg):
    """report.json recorded each stage's guided_error but not the guidance scale it was measured at: now its
    `heldout` gives the held-out inputs' count and that scale (the toy pipeline's 3), null where no stage
    records a guided error (cfg_branches false), and so after a --resume that keeps every stage (checked
before: no guided reference computed); the model card's guided error line names the scale."""
    import json

    from tests.test_runner_heldout import TOY

    out = run_recipe(tmp_path, TOY.format(family="pixart", cfg=cfg), "r")
    report = json.loads((out / "report.json").read_text())
    guided = cfg == "true"
    assert report["heldout"] == {"inputs": 6, "guidance_scale": 3.0 if guided else None, "seed": 1}
    assert ("guided_error" in report["stages"][-1]) is guided
    card = (out / "README.md").read_text()
    assert ("the pipeline samples with, s = 3." in card) is guided and ("Guided error" in card) is guided
    again = run_recipe(tmp_path, TOY.format(family="pixart", cfg=cfg), "r", resume=True, overwrite=True)
    assert json.loads((again / "report.json").read_text())["heldout"] == report["heldout"]  # its stages kept


def test_an_export_rounded_to_bfloat16_records_its_guided_error_beside_the_conditional(tmp_path, capsys):
    """A float16/bfloat16 export recorded its conditional error after the rounding (export.relative_error,
    'exported in bfloat16: teacher-relative error 0.19') but no guided error, which the stages record: now
    export.guided_error is the rounded weights' (as computed directly from the output), said on that line;
    a float32 export's is its last stage's; without cfg_branches there is none."""
    import json

    import torch

    from tests.test_runner_heldout import TOY, _direct_guided_error

    out = run_recipe(tmp_path, TOY.format(family="pixart", cfg="true") + "export: {dtype: bfloat16}\n", "r")
    report = json.loads((out / "report.json").read_text())
    export, stage = report["export"], report["stages"][-1]
    assert export["guided_error"] == pytest.approx(_direct_guided_error("pixart", out, torch.float32), rel=1e-4)
    assert export["guided_error"] != stage["guided_error"]  # the rounding moved it
    said = "".join(capsys.readouterr())
    assert (f"exported in bfloat16: teacher-relative error {export['relative_error']:.4g} "
            f"(guided {export['guided_error']:.4g})") in said, said
    f32 = json.loads((run_recipe(tmp_path, TOY.format(family="pixart", cfg="true"), "f") / "report.json").read_text())
    assert f32["export"]["guided_error"] == f32["stages"][-1]["guided_error"]
    plain = run_recipe(tmp_path, TOY.format(family="pixart", cfg="false") + "export: {dtype: bfloat16}\n", "p")
    assert "guided_error" not in json.loads((plain / "report.json").read_text())["export"]


def test_a_resume_that_keeps_every_stage_records_the_exports_guided_error(tmp_path, capsys):
    """--resume of a finished run, every stage kept, with export.dtype: bfloat16 wrote export.guided_error null
    and the line '  exported in bfloat16: teacher-relative error 0.06345' without its guided error, though the
    stages record one: the teacher's guided reference was computed by the stages' checks alone. Now the export
    computes it: equal to that computed directly from the output, said on the line; back to float32, the last
    stage's, as a run that trains does."""
    import json

    import torch

    from tests.test_runner_heldout import TOY, _direct_guided_error

    text = TOY.format(family="pixart", cfg="true")
    run_recipe(tmp_path, text, "r")
    capsys.readouterr()
    out = run_recipe(tmp_path, text + "export: {dtype: bfloat16}\n", "r", resume=True, overwrite=True)
    export = json.loads((out / "report.json").read_text())["export"]
    assert export["guided_error"] == pytest.approx(_direct_guided_error("pixart", out, torch.float32), rel=1e-4)
    said = "".join(capsys.readouterr())
    assert (f"exported in bfloat16: teacher-relative error {export['relative_error']:.4g} "
            f"(guided {export['guided_error']:.4g})") in said, said
    report = json.loads((run_recipe(tmp_path, text, "r", resume=True, overwrite=True) / "report.json").read_text())
    assert report["export"]["guided_error"] == report["stages"][-1]["guided_error"]


def _ctrl_c_at_line(call, n: int) -> int:
    """`call()` with a Ctrl-C (a real SIGINT) sent at the n-th line run in io_export, io_atomic, stream,
    runner_stream or runner from the output's rename on (io_atomic._swap_in called); the lines run there, counted."""
    import os
    import signal

    from tests.test_io_export_api import interrupted_at_line

    return interrupted_at_line(call, n, ("io_export.py", "io_atomic.py", "stream.py", "runner_stream.py", "runner.py"),
                               "_swap_in",
                               lambda: os.kill(os.getpid(), signal.SIGINT))


@pytest.mark.parametrize("stream", [False, True], ids=["resident", "streamed"])
def test_a_ctrl_c_at_any_line_from_the_outputs_rename_to_its_record_leaves_the_two_agreeing(
        tmp_path, monkeypatch, capsys, ctrl_c_raises, stream):
    """A Ctrl-C between atomic_folder's rename and the runner's `written = out` was taken as a stop during
    the export: the output whole in place, yet the run said it was interrupted there (a --resume writing
    it again), not 'interrupted after the output was written'. Now the rename and its record are one step
    (the Ctrl-C held over both): at every line from the rename on, the output is in place exactly where
    the run records it written, said written once, with nothing left beside it."""
    from compress import load_transformer
    from compress.recipe import parse_recipe
    from compress.runner import Runner
    from tests.runner_helpers import streamed_teacher

    text = streamed_teacher(tmp_path, "pixart").format(stream=str(stream).lower())
    runner = Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run")
    real, exported = runner.export, []
    monkeypatch.setattr(runner, "export", lambda *args: (exported.append(args), real(*args))[1])
    runner.run()
    capsys.readouterr()

    def export_to(folder):
        runner.out, runner.written = folder / "out", None
        return lambda: real(*exported[0])
    lines = _ctrl_c_at_line(export_to(tmp_path / "whole"), 0)
    assert lines > 5
    for n in range(1, lines + 1):
        folder = tmp_path / str(n)
        _ctrl_c_at_line(export_to(folder), n)
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert left in ([], ["out"]), (n, left)
        assert (runner.written == folder / "out") == bool(left), (n, left, runner.written)
        assert capsys.readouterr().out.count(f"wrote {folder / 'out'}") == len(left), n
        if left:
            load_transformer(folder / "out")


@pytest.mark.parametrize("seed", [0, 3])
def test_report_json_records_the_calibration_seed(tmp_path, seed):
    """T1 stop 52 #3: report.json recorded no calibration seed (only recipe.yaml held it); now `calibration.seed`."""
    import json

    tiny_pixart().save_pretrained(tmp_path / "t")
    text = SIMPLE.format(teacher=tmp_path / "t", passes=PASSES).replace("heldout: 4}", f"heldout: 4, seed: {seed}}}")
    report = json.loads((run_recipe(tmp_path, text, "r") / "report.json").read_text())
    assert report["calibration"] == {"seed": seed}
