"""`eval` and `bench` (compress/commands.py) through the CLI on tiny models: the teacher and inputs they measure."""

import json

import pytest
import torch

from compress.cli import main
from tests.conftest import tiny_flux
from tests.test_commands import RECIPE, STREAMABLE, _one_line_errors, write_recipe


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path)


def test_eval_and_bench_commands(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["pred_rel_error"] < 10
    assert main(["bench", str(out), "--json", "--repeats", "2", "--device", "cpu"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["params_ratio"] < 1 and bench["speedup"] > 0
    bad = ["nonsense", "meta"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:  # a one-line error, not a traceback
        assert main(["bench", str(out), "--repeats", "2", "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--device" in err
    _one_line_errors(capsys, [
        (["bench", str(out), "--repeats", "0"], "at least 1"),
        (["bench", str(out), "--batch", "0"], "at least 1"),
        (["bench", str(out), "--teacher", "toy:pixart"], "is a PixArtTransformer2DModel; the model"),
        (["eval", str(out), "--teacher", "toy:pixart"], "is a PixArtTransformer2DModel; the model"),
        (["bench", str(tmp_path / "teacher")], "plain diffusers model, not a dit-compress output"),
        (["inspect", str(tmp_path / "teacher")], "plain diffusers model, not a dit-compress output"),
        (["inspect", str(out), "--plot", str(recipe)], "cannot make the folder")])


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_eval_of_a_resident_output_measures_in_the_recipes_compute_dtype(recipe, tmp_path, capsys, compute):
    """eval of a resident output loaded the teacher in float32 whatever the recipe's compute_dtype,
    so a bfloat16 run's error came out otherwise than the run's own (a streamed output was measured
    in the compute dtype): the error is the run's held-out error after its last pass."""
    run = tmp_path / "c.yaml"
    run.write_text(f"compute_dtype: {compute}\n" + recipe.read_text())
    out = tmp_path / "out"
    assert main(["run", str(run), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert result["pred_rel_error"] == pytest.approx(report["stages"][-1]["relative_error"], rel=1e-6)


def test_eval_of_a_streamed_output_streams(recipe, tmp_path, capsys, monkeypatch):
    """The output of a stream: true run is evaluated as the run held it: teacher and student read
    block by block, never whole; the error is the run's own held-out error after its last pass."""
    from compress.stream import CheckpointBlocks

    streamed = tmp_path / "s.yaml"
    streamed.write_text("stream: true\n" + recipe.read_text().replace("ratio: 0.5", "ratio: 0.5, fisher: block"))
    out = tmp_path / "out"
    assert main(["run", str(streamed), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    reads, real = [], CheckpointBlocks.materialize
    monkeypatch.setattr(CheckpointBlocks, "materialize",
                        lambda self, g, i, blk: (reads.append((g, i)), real(self, g, i, blk))[1])
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["streamed"] and result["family"] == "flux"
    assert result["teacher"] == str(tmp_path / "teacher") and result["teacher_from"] == "recorded"
    report = json.loads((out / "report.json").read_text())
    assert result["pred_rel_error"] == pytest.approx(report["stages"][-1]["relative_error"], rel=1e-6)
    assert result["pred_rel_error"] > 0 and len(reads) >= 2 * 5  # both models' 5 blocks, read as they ran
    tiny_flux(joint_attention_dim=6).save_pretrained(tmp_path / "other")
    _one_line_errors(capsys, [(["eval", str(out), "--teacher", str(tmp_path / "other")],
                               "is not the model this one was compressed from")])


def test_eval_and_bench_find_a_single_file_teacher_and_its_config(tmp_path, capsys, monkeypatch):
    """The run records --teacher-config (and local paths absolute), so eval and bench load the
    teacher from anywhere without it."""
    from safetensors.torch import save_file

    from tests.conftest import tiny_pixart

    teacher = tiny_pixart()
    (tmp_path / "weights").mkdir()
    save_file(teacher.state_dict(), str(tmp_path / "weights" / "pixart.safetensors"))  # no config beside it
    teacher.save_config(tmp_path / "cfg")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("model: flux", "model: pixart").format(teacher="unused"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe), "--teacher", "weights/pixart.safetensors", "--teacher-config", "cfg",
                 "--out", "out", "--run-dir", "run"]) == 0
    monkeypatch.chdir(tmp_path / "weights")  # elsewhere: the relative paths given to run no longer resolve
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "out"), "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["pred_rel_error"] < 10
    assert main(["bench", str(tmp_path / "out"), "--json", "--repeats", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["params_ratio"] < 1


def test_eval_and_bench_reach_a_single_file_teacher_named_again_or_moved_and_its_moved_config(tmp_path, capsys):
    """--teacher naming the recorded file, or the file moved (no config.json beside it), keeps the
    recorded --teacher-config; a config moved since is said naming --teacher-config, which eval and
    bench take as run does; a changed file's warning advises --teacher ORIGINAL, which works."""
    import shutil

    from safetensors.torch import save_file

    from tests.conftest import tiny_pixart

    teacher, file, cfg = tiny_pixart(), tmp_path / "w" / "pixart.safetensors", tmp_path / "cfg"
    file.parent.mkdir()
    save_file(teacher.state_dict(), str(file))  # no config beside it
    teacher.save_config(cfg)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("model: flux", "model: pixart").format(teacher=file))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--teacher-config", str(cfg), "--out", str(out), "--run-dir",
                 str(tmp_path / "run")]) == 0
    capsys.readouterr()
    bench = ["--repeats", "1", "--device", "cpu"]

    def error(argv) -> float:
        assert main(argv + ["--json"]) == 0, (argv, capsys.readouterr().err)
        result = json.loads(capsys.readouterr().out)
        return result.get("pred_rel_error", result.get("params_ratio"))

    want = error(["eval", str(out)])
    assert error(["eval", str(out), "--teacher", str(file)]) == want
    assert error(["bench", str(out), "--teacher", str(file)] + bench) < 1
    moved = tmp_path / "moved" / "pixart.safetensors"
    moved.parent.mkdir()
    shutil.move(file, moved)
    _one_line_errors(capsys, [([command, str(out)], f"compressed from the teacher {file}, which is not there now; "
                                                    "pass --teacher with where it is") for command in ("eval", "bench")])
    assert error(["eval", str(out), "--teacher", str(moved)]) == want
    assert error(["bench", str(out), "--teacher", str(moved)] + bench) < 1
    shutil.move(moved, file)
    shutil.move(cfg, tmp_path / "cfg2")
    said = f"with the teacher config {cfg}, which is not there now (no config.json); pass --teacher-config with where"
    _one_line_errors(capsys, [([command, str(out)], said) for command in ("eval", "bench")])
    assert error(["eval", str(out), "--teacher-config", str(tmp_path / "cfg2")]) == want
    assert error(["bench", str(out), "--teacher-config", str(tmp_path / "cfg2")] + bench) < 1
    assert error(["eval", str(out), "--teacher", str(file), "--teacher-config", str(tmp_path / "cfg2")]) == want
    shutil.move(tmp_path / "cfg2", cfg)
    shutil.copy(file, tmp_path / "original.safetensors")
    save_file(tiny_pixart(seed=1).state_dict(), str(file))  # a fine-tune saved over it
    assert main(["eval", str(out), "--json"]) == 0
    assert "pass the original with --teacher" in capsys.readouterr().err
    assert error(["eval", str(out), "--teacher", str(tmp_path / "original.safetensors")]) == want


def test_eval_checks_its_grid_path_first_and_that_the_model_has_toy_samples(recipe, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    _one_line_errors(capsys, [
        (["eval", "toy:pixart", "--grid", str(tmp_path / "g.txt")], "a figure is written as"),
        (["eval", "toy:pixart", "--grid", str(tmp_path / "file" / "g.png")], "cannot make the folder"),
        (["eval", str(tmp_path / "teacher"), "--grid", str(tmp_path / "g.png")], "draws the toy pipelines"),
        (["eval", str(tmp_path / "teacher"), "--seed", "3"], "--seed seeds the toy evaluation's samples")])


def test_eval_says_what_it_is_doing(monkeypatch, capsys):
    """The toy scores take minutes on a CPU (200 samples of model and teacher): a line says so, and
    the evaluation shows its sampling's progress (a bar; a line per tenth in a log)."""
    import compress.toy.evaluate as toy_evaluate

    asked = []
    monkeypatch.setattr(toy_evaluate, "evaluate", lambda *a, **k: (asked.append(k), {"adherence": 1.0})[1])
    assert main(["eval", "toy:flux", "--json"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "eval: sampling 200 toy digits with the model (20 steps each) and scoring them\n"
    assert json.loads(printed.out) == {"adherence": 1.0} and asked[0]["progress"] is True


def test_eval_says_where_it_wrote_the_grid(tmp_path, capsys, monkeypatch):
    import compress.toy.evaluate

    monkeypatch.setattr(compress.toy.evaluate, "evaluate", lambda *a, **k: {"adherence": 1.0})
    sample = compress.toy.evaluate.sample  # the grid's samples, in 2 denoising steps of the default 20
    monkeypatch.setattr(compress.toy.evaluate, "sample", lambda *a, **k: sample(*a, **{**k, "num_inference_steps": 2}))
    grid = tmp_path / "g.png"
    assert main(["eval", "toy:flux", "--grid", str(grid)]) == 0
    printed = capsys.readouterr()
    assert grid.stat().st_size > 1000 and f"wrote {grid}" in " ".join(printed.err.split())
    assert "adherence: 1" in printed.out


def test_eval_of_an_output_without_report_json_takes_the_teacher_its_config_records(tmp_path, capsys, monkeypatch):
    """A toy output keeps its toy scores against its teacher; a real one says what eval lacks."""
    import compress.toy.evaluate
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher

    given = []
    monkeypatch.setattr(compress.toy.evaluate, "evaluate",
                        lambda model, family, teacher=None, seed=0, progress=False:
                        given.append(teacher) or {"adherence": 1.0})
    out = save_compressed(load_toy_teacher("flux"), tmp_path / "toy", extra={"teacher": "toy:flux"})
    assert not (out / "report.json").exists()
    assert main(["eval", str(out), "--json"]) == 0 and given[0] is not None
    real = save_compressed(tiny_flux(), tmp_path / "real")
    tiny_flux().save_pretrained(tmp_path / "teacher")
    no_recipe = f"{real} has no recipe.yaml, whose calibration settings give eval its held-out inputs"
    _one_line_errors(capsys, [
        (["eval", str(real)], no_recipe),  # first: no --teacher stands in for it
        (["eval", str(real), "--teacher", str(tmp_path / "teacher")], no_recipe),
        (["eval", str(tmp_path / "teacher")], "teacher is not a dit-compress output: eval measures a compressed output")])
    (real / "recipe.yaml").write_text(STREAMABLE)
    _one_line_errors(capsys, [
        (["eval", str(real)], f"{real}: neither report.json nor config.json (compression.teacher) names the teacher")])


def test_eval_of_an_output_compressed_from_a_toys_output_scores_it_as_a_toy(tmp_path, monkeypatch):
    """An output whose recorded teacher is an output of toy:flux gets the toy scores against that
    teacher (the chain of teachers starts at a toy), not a real model's 'no recipe.yaml' refusal."""
    import compress.toy.evaluate
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher

    given = []
    monkeypatch.setattr(compress.toy.evaluate, "evaluate",
                        lambda model, family, teacher=None, seed=0, progress=False:
                        given.append(teacher) or {"adherence": 1.0})
    a = save_compressed(load_toy_teacher("flux"), tmp_path / "a", extra={"teacher": "toy:flux"})
    d = save_compressed(load_toy_teacher("flux"), tmp_path / "d", extra={"teacher": str(a.resolve())})
    assert main(["eval", str(d), "--json"]) == 0 and given and given[0] is not None


def test_eval_of_a_re_saved_output_says_what_it_lacks_and_measures_with_the_runs_recipe(tmp_path, capsys,
                                                                                         monkeypatch):
    """A loaded output re-saved with save_pretrained (config.json and weights, no recipe.yaml or
    report.json) was called damaged; it lacks the recipe, and measures once the run's is copied in."""
    import shutil

    from compress.io_output import load_transformer

    tiny_flux().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(STREAMABLE)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "r.yaml", "--teacher", "teacher", "--out", "out", "--run-dir", "run"]) == 0
    load_transformer("out").save_pretrained("resaved")
    assert sorted(p.name for p in (tmp_path / "resaved").iterdir()) == \
        ["config.json", "diffusion_pytorch_model.safetensors"]
    capsys.readouterr()
    _one_line_errors(capsys, [(["eval", "resaved"], "resaved has no recipe.yaml, whose calibration settings give "
                               "eval its held-out inputs (a folder re-saved with save_pretrained holds only "
                               "config.json and the weights): copy the recipe.yaml of the output the run wrote "
                               "into it, or rerun the recipe")])
    shutil.copy("out/recipe.yaml", "resaved/recipe.yaml")
    assert main(["eval", "resaved", "--json"]) == 0
    resaved = json.loads(capsys.readouterr().out)
    assert main(["eval", "out", "--json"]) == 0
    assert resaved == json.loads(capsys.readouterr().out)


def test_eval_of_a_pipeline_folder_holding_a_streamed_output_streams_it(tmp_path, capsys):
    """_streamed_output read the pipeline folder's own recipe.yaml (none): its transformer/, a
    streamed run's output, was measured resident, not block by block as the run held it."""
    import shutil

    from tests.runner_helpers import run_recipe, streamed_teacher

    out = run_recipe(tmp_path, streamed_teacher(tmp_path, "flux").format(stream="true"), "s")
    pipe = tmp_path / "pipe"
    shutil.copytree(out, pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert streamed["streamed"] is True
    assert main(["eval", str(pipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == streamed


def test_eval_of_a_resident_output_samples_in_the_pipeline_of_the_teacher_it_is_given(tmp_path, capsys):
    """_teacher_relative sampled the held-out inputs in the pipeline the run recorded, not the --teacher
    given: with the teacher moved and the run's inputs cache gone, eval failed at the old place."""
    import shutil

    from tests.pipelines import RECIPE as PIPELINE_RECIPE
    from tests.pipelines import pixart_pipeline
    from tests.runner_helpers import run_recipe

    (tmp_path / "a").mkdir()
    old = pixart_pipeline(tmp_path / "a" / "pipe")
    text = PIPELINE_RECIPE.replace("{teacher}", str(old)).replace("{family}", "pixart").replace("{size}", "")
    out = run_recipe(tmp_path, text.format(stream="false"), "p")
    shutil.rmtree(json.loads((out / "report.json").read_text())["inputs_cache"])
    new = tmp_path / "b"
    shutil.move(str(tmp_path / "a"), new)  # the teacher moved: nothing is left at the recorded place
    capsys.readouterr()
    assert main(["eval", str(out), "--teacher", str(new / "pipe"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_rel_error"] > 0


@pytest.mark.parametrize("stream", ["false", "true"])
def test_eval_with_a_teacher_that_is_no_pipeline_reads_the_runs_held_out_inputs(stream, tmp_path, capsys,
                                                                               monkeypatch):
    """A --teacher that is no pipeline (the pipeline folder's bare transformer/, no model_index.json) was
    taken as the pipeline to sample the held-out inputs in: eval failed with check_pipeline_source's advice
    to set calibration.pipeline, which eval cannot. The recorded pipeline gives them (the run's inputs
    cache), and so does a relative spelling of it: neither samples again."""
    import compress.calib_pipeline as calib_pipeline
    from tests.pipelines import RECIPE as PIPELINE_RECIPE
    from tests.pipelines import pixart_pipeline
    from tests.runner_helpers import run_recipe

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = PIPELINE_RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "")
    out = run_recipe(tmp_path, text.format(stream=stream), "p")

    def no_sampling(*args, **kwargs):
        raise AssertionError("the held-out inputs sampled again: the run's inputs cache was missed")

    monkeypatch.setattr(calib_pipeline, "load_pipeline_for", no_sampling)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert recorded["pred_rel_error"] > 0 and recorded.get("streamed", False) is (stream == "true")
    assert recorded["teacher"] == str(pipe) and recorded["teacher_from"] == "recorded"
    for teacher in (str(pipe / "transformer"), "pipe/transformer", "pipe"):
        assert main(["eval", str(out), "--teacher", teacher, "--json"]) == 0, teacher
        given = {**recorded, "teacher": teacher, "teacher_from": "--teacher"}  # named as given
        assert json.loads(capsys.readouterr().out) == given, teacher


def test_eval_of_a_recipe_says_it_takes_an_output_folder(recipe, capsys):
    """`eval RECIPE.yaml` said "is not a checkpoint: file type '.yaml'; a teacher is a folder or a
    checkpoint file", as if a teacher were wanted."""
    _one_line_errors(capsys, [(["eval", str(recipe)], f"{recipe} is a recipe: eval takes an output folder")])


def test_eval_refuses_a_real_teacher_before_loading_it(tmp_path, capsys, monkeypatch):
    """eval of a teacher folder loaded all of it (FLUX.1-dev: ~24 GB) before saying it is no output;
    a single file said 'pass --teacher-config', a folder of damaged weights 'not a readable
    safetensors': each is now refused from its files, unloaded. A toy teacher is still scored."""
    import compress.commands
    import compress.toy.evaluate
    from safetensors.torch import save_file

    monkeypatch.setattr(compress.commands, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    tiny_flux().save_pretrained(tmp_path / "teacher")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text((tmp_path / "teacher" / "config.json").read_text())
    (tmp_path / "damaged" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08")
    save_file({"x": torch.zeros(2)}, tmp_path / "file.safetensors")
    _one_line_errors(capsys, [
        (["eval", str(tmp_path / name)], f"{tmp_path / name} is not a dit-compress output: eval measures a compressed")
        for name in ("teacher", "damaged", "file.safetensors")])
    monkeypatch.undo()
    monkeypatch.setattr(compress.toy.evaluate, "evaluate", lambda *a, **k: {"adherence": 1.0})
    assert main(["eval", "toy:flux", "--json"]) == 0


def test_eval_of_a_hub_id_reads_the_caches_output_as_inspect_and_bench_do(tmp_path, monkeypatch, capsys):
    """`dit-compress eval ORG/NAME` said "ORG/NAME is not a dit-compress output", though it may be one
    on the Hub; then it refused the id, naming the cache's snapshot to give, while inspect and bench
    read that snapshot, and told another download (hf download X --local-dir DIR and give DIR). Now
    eval reads the cache's copy of an output as they do, and says their lines where it cannot."""
    import compress.toy.evaluate
    from huggingface_hub import constants

    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher
    from tests.pipelines import hub_cache

    given = []
    monkeypatch.setattr(compress.toy.evaluate, "evaluate",
                        lambda model, family, teacher=None, seed=0, progress=False:
                        given.append((model, teacher)) or {"adherence": 1.0})
    out = save_compressed(load_toy_teacher("flux"), tmp_path / "out", extra={"teacher": "toy:flux"})
    hub_cache(tmp_path / "hub", "acme/out", out)
    tiny_flux().save_pretrained(tmp_path / "teacher")
    hub_cache(tmp_path / "hub", "acme/teacher", tmp_path / "teacher")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", "acme/out", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adherence"] == 1.0
    assert [type(m).__name__ for pair in given for m in pair] == ["FluxTransformer2DModel"] * 2  # model, teacher
    for what in ("eval", "inspect", "bench"):
        assert main([what, "acme/none"]) == 2
        assert capsys.readouterr().err == (
            f"dit-compress: error: acme/none: no such output folder, and the Hugging Face cache {tmp_path / 'hub'} "
            f"holds no copy of it: {what} reads a local output folder or the cache's copy of a Hub id; download it "
            "(hf download acme/none) and give acme/none again, or give a local folder\n")
    snapshot = tmp_path / "hub" / "models--acme--teacher" / "snapshots" / ("0" * 40)
    assert main(["eval", "acme/teacher"]) == 2
    assert capsys.readouterr().err == (f"dit-compress: error: acme/teacher: the Hugging Face cache holds it at "
                                       f"{snapshot}, which is no dit-compress output (its config.json has no "
                                       "compression section)\n")
