"""`importance`, `eval`, `plan`, `bench`, `convert` through the CLI on tiny models (synthetic inputs)."""

import json

import pytest
import torch

from compress.cli import main
from tests.conftest import tiny_flux

RECIPE = """\
model: flux
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [mlp], ratio: 0.5, multiple: 2}}
"""


@pytest.fixture
def recipe(tmp_path):
    tiny_flux().save_pretrained(tmp_path / "teacher")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    return path


def test_importance_command(recipe, tmp_path, capsys):
    png, js = tmp_path / "imp.png", tmp_path / "imp.json"
    assert main(["importance", str(recipe), "--png", str(png), "--json", str(js)]) == 0
    assert png.stat().st_size > 1000
    data = json.loads(js.read_text())
    assert data["family"] == "flux"


def test_importance_of_a_streamed_recipe_streams(recipe, tmp_path, monkeypatch):
    """A recipe with stream: true is scanned as its run would hold the teacher (top level resident,
    each block read once per batch), with the scores of the resident scan."""
    from compress.stream import CheckpointBlocks

    reads, real = [], CheckpointBlocks.materialize
    monkeypatch.setattr(CheckpointBlocks, "materialize",
                        lambda self, g, i, blk: (reads.append((g, i)), real(self, g, i, blk))[1])
    streamed = tmp_path / "s.yaml"
    streamed.write_text("stream: true\n" + recipe.read_text())
    scores = []
    for path, name in ((recipe, "resident"), (streamed, "streamed")):
        js = tmp_path / f"{name}.json"
        assert main(["importance", str(path), "--png", str(tmp_path / f"{name}.png"), "--json", str(js)]) == 0
        scores.append([(b["scan"], b["proxy"]) for b in json.loads(js.read_text())["blocks"]])
    assert scores[0] == scores[1] and all(s > 0 for s, _ in scores[0])
    assert len(reads) == len(scores[0])  # one calibration batch (2 prompts × 2 timesteps, batch_size 4)


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


def _one_line_errors(capsys, cases) -> None:
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert message in err and "Traceback" not in err, (argv, err)


def test_damaged_outputs_are_one_line(recipe, tmp_path, capsys):
    from compress.io_export import save_compressed

    out = save_compressed(tiny_flux(), tmp_path / "out", extra={"teacher": str(tmp_path / "teacher")})
    config = json.loads((out / "config.json").read_text())
    (out / "report.json").write_text("{oops")
    _one_line_errors(capsys, [(["inspect", str(out)], "cannot read"), (["bench", str(out)], "cannot read")])
    (out / "report.json").write_text("[1, 2]")
    _one_line_errors(capsys, [(["inspect", str(out)], "not a dit-compress report")])
    damaged = f"{out}/report.json: teacher is 5, not text (a path or a Hugging Face id); the output is damaged"
    for report, commands, message in (({"teacher": 5}, ("eval", "bench"), damaged),
                                      ({"teacher": ["a"]}, ("eval", "bench"), 'teacher is ["a"], not text'),
                                      ({"teacher_config": 5}, ("eval", "bench"), "teacher_config is 5, not text"),
                                      ({"svd": "x"}, ("inspect",), 'report.json: svd is "x", not a mapping')):
        (out / "report.json").write_text(json.dumps(report))
        _one_line_errors(capsys, [([command, str(out)], message) for command in commands])
    (out / "report.json").unlink()
    for ranks, message in (({"transformer_blocks.9.ff.net.2": 2}, "which the model does not have"),
                           ({"transformer_blocks.0.ff.net.2": "two"}, "rank 'two'"),
                           ({"transformer_blocks.0.norm1": 2}, "rank 2; expected")):
        config["compression"]["ranks"] = ranks
        (out / "config.json").write_text(json.dumps(config))
        _one_line_errors(capsys, [(["inspect", str(out)], message), (["eval", str(out)], message)])


def test_a_teacher_of_another_architecture_is_one_line(tmp_path, capsys):
    """eval and bench against a teacher of the same class but other widths say so, not a matmul
    shape error from inside the forward."""
    from compress.io_export import save_compressed
    from tests.conftest import factorize

    student = factorize(tiny_flux(), ["transformer_blocks.0.ff.net.2"], rank=2)
    out = save_compressed(student, tmp_path / "out")
    (out / "report.json").write_text(json.dumps({"teacher": "toy:flux"}))  # the recorded one
    (out / "recipe.yaml").write_text(RECIPE.format(teacher="toy:flux"))  # eval's held-out inputs
    tiny_flux(joint_attention_dim=6).save_pretrained(tmp_path / "other")
    message = "is not the model this one was compressed from: its config has joint_attention_dim 6"
    _one_line_errors(capsys, [(["eval", str(out), "--teacher", str(tmp_path / "other")], message),
                              (["bench", str(out), "--teacher", str(tmp_path / "other")], message),
                              (["bench", str(out)], "is not the model this one was compressed from")])


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


def test_importance_checks_where_it_writes_before_the_scan(recipe, tmp_path, capsys, monkeypatch):
    import compress.passes.importance as importance

    monkeypatch.setattr(importance, "scan", lambda *a, **k: pytest.fail("scanned before the check"))
    (tmp_path / "file").write_text("")
    _one_line_errors(capsys, [
        (["importance", str(recipe), "--png", str(tmp_path / "imp.txt")], "a figure is written as"),
        (["importance", str(recipe), "--png", str(tmp_path / "file" / "x.png")], "cannot make the folder"),
        (["importance", str(recipe), "--json", str(tmp_path)], "is a folder; give a file name"),
        (["plan", str(recipe), "--teacher", str(tmp_path / "nowhere")], "teacher not found")])


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
    report = json.loads((out / "report.json").read_text())
    assert result["pred_rel_error"] == pytest.approx(report["stages"][-1]["relative_error"], rel=1e-6)
    assert result["pred_rel_error"] > 0 and len(reads) >= 2 * 5  # both models' 5 blocks, read as they ran
    tiny_flux(joint_attention_dim=6).save_pretrained(tmp_path / "other")
    _one_line_errors(capsys, [(["eval", str(out), "--teacher", str(tmp_path / "other")],
                               "is not the model this one was compressed from")])


@pytest.mark.parametrize("iterative", [False, True])
def test_plan_states_what_a_streamed_skip_scan_reads_and_holds(recipe, tmp_path, capsys, iterative):
    """Streamed, each skip scan reads every block once per calibration batch and holds N + 1
    residual streams of a batch; remove_blocks reuses an importance scan before it (so iterative
    removal of 2 blocks scans once more). Resident recipes plan no such thing."""
    text = recipe.read_text().replace("ratio: 0.5", "ratio: 0.5, fisher: block").replace(
        "passes:\n", f"passes:\n  - importance: {{buckets: 2}}\n"
                     f"  - remove_blocks: {{count: 2, iterative: {str(iterative).lower()}}}\n")
    plans = []
    for stream in ("false", "true"):
        path = tmp_path / f"{stream}.yaml"
        path.write_text(f"stream: {stream}\n" + text)
        assert main(["plan", str(path), "--json"]) == 0
        plans.append(json.loads(capsys.readouterr().out))
    assert not any("streamed_scan" in step for step in plans[0]["passes"])
    calib = plans[1]["calibration"]
    scan, remove = (step["streamed_scan"] for step in plans[1]["passes"][:2])
    assert scan["scans"] == 1 and scan["checkpoint_reads"] == calib["batches"] == 1
    assert scan["block_reads"] == 5 * calib["batches"]  # tiny Flux: 2 double + 3 single blocks
    width = 2 * 8  # heads x head dim of the tiny Flux
    assert scan["batch_bytes"] == 6 * calib["tokens"] * width * 4 * min(calib["rows"], calib["batch_rows"])
    assert remove["scans"] == (1 if iterative else 0)
    assert main(["plan", str(tmp_path / "true.yaml")]) == 0
    assert "streamed skip scan: 1 scan(s)" in " ".join(capsys.readouterr().out.split())
    again = tmp_path / "again.yaml"  # a second removal: the importance scan is of another model
    again.write_text("stream: true\n" + text.replace("  - remove_blocks:", "  - remove_blocks: {count: 1}\n"
                                                      "  - remove_blocks:", 1))
    assert main(["plan", str(again), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["passes"]
    assert [s["streamed_scan"]["scans"] for s in steps[1:3]] == [0, 2 if iterative else 1]


def test_plan_command(recipe, capsys):
    assert main(["plan", str(recipe), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["params_before"] > 0 and plan["passes"][0]["pass"] == "svd"
    plain, checkpointed = plan["backward"]  # the whole-model backward's estimate, per batch
    assert plain > checkpointed > 0
    assert main(["plan", str(recipe)]) == 0
    printed = capsys.readouterr()
    assert "whole-model backwards keep about" in " ".join(printed.out.split())


def test_what_the_commands_show_goes_to_stdout(recipe, tmp_path, capsys):
    """`dit-compress plan / inspect / bench / eval / importance > file` keeps their tables and
    numbers (stdout); progress and notes go to stderr, with nothing left of progress bars there
    when it is not a terminal."""
    streamed = tmp_path / "s.yaml"
    streamed.write_text("stream: true\n" + recipe.read_text())
    for path, args in ((streamed, ["--set", "passes.0.svd.fisher=block"]), (recipe, [])):
        out = tmp_path / f"out-{path.stem}"
        assert main(["run", str(path), "--out", str(out), "--run-dir", str(tmp_path / path.stem), *args]) == 0
        run = capsys.readouterr()
        assert run.out == "" and "\n\n" not in run.err and "pass 1/1: svd" in run.err
    shown = {"plan": (["plan", str(recipe)], "total parameters"),
             "inspect": (["inspect", str(out)], "by block"),
             "bench": (["bench", str(out), "--repeats", "1", "--device", "cpu"], "time per denoising step"),
             "eval": (["eval", str(out)], "pred_rel_error"),
             "importance": (["importance", str(recipe), "--png", str(tmp_path / "i.png")], "error when the block")}
    for name, (argv, what) in shown.items():
        assert main(argv) == 0
        printed = capsys.readouterr()
        assert what in printed.out and what not in printed.err, name
        if name == "inspect":  # the linears outside the blocks, by name in the table by block
            assert "│ top level" in printed.out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["importance", "toy:pixart", "--buckets", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "buckets must be an integer ≥ 1" in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    assert main(["eval", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err
    for command in ("eval", "bench", "importance"):  # a path that is not there says so
        assert main([command, str(tmp_path / "missing")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "missing: no such" in err


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


def test_a_typo_in_a_relative_path_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    _one_line_errors(capsys, [(["eval", "out/typo"], "out/typo: no such model"),
                              (["bench", "out/typo"], "no such output folder")])


def test_plan_refuses_what_the_run_would_and_says_when_there_is_no_gpu(recipe, tmp_path, capsys):
    toy_source = tmp_path / "t.yaml"
    toy_source.write_text(recipe.read_text().replace("source: synthetic", "source: toy"))
    _one_line_errors(capsys, [(["plan", str(toy_source)], "calibration.source 'toy' needs a toy teacher")])
    auto = tmp_path / "a.yaml"
    auto.write_text(recipe.read_text().replace("source: synthetic", "source: auto"))
    _one_line_errors(capsys, [(["plan", str(auto)], "'pipeline' (source auto is pipeline for a teacher")])
    if not torch.cuda.is_available():
        cuda = tmp_path / "c.yaml"
        cuda.write_text("device: cuda\n" + recipe.read_text())
        assert main(["plan", str(cuda)]) == 0
        assert "torch sees no CUDA GPU here" in " ".join(capsys.readouterr().err.split())


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as jq and JavaScript do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_inspect_json_is_strict_json(tmp_path, capsys):
    """A layer whose whitened loss / optimal loss is infinite (optimum at round-off, loss not)
    prints as null, not as Python's Infinity."""
    from compress.io_export import save_compressed
    from tests.conftest import factorize

    name = "transformer_blocks.0.ff.net.2"
    out = save_compressed(factorize(tiny_flux(), [name], rank=2), tmp_path / "out")
    (out / "report.json").write_text(json.dumps({"svd": {"layers": {name: {"loss_ratio": float("inf")}}}}))
    assert main(["inspect", str(out), "--json"]) == 0
    data = _strict_json(capsys.readouterr().out)
    row = next(r for r in data["layers"] if r["name"] == name)
    assert row["loss_ratio"] is None and data["report"]["svd"]["layers"][name]["loss_ratio"] is None


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
    grid = tmp_path / "g.png"
    assert main(["eval", "toy:flux", "--grid", str(grid)]) == 0
    printed = capsys.readouterr()
    assert grid.stat().st_size > 1000 and f"wrote {grid}" in " ".join(printed.err.split())
    assert "adherence: 1" in printed.out


STREAMABLE = """\
model: flux
teacher: unused
calibration: {source: synthetic, num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4}
passes:
  - svd: {targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 2}
"""


def test_a_bfl_flux_file_runs_and_its_converted_folder_streams_to_the_same_weights(tmp_path, capsys, monkeypatch):
    """A BFL-keyed FLUX.1-schnell file as ComfyUI saves it, in bfloat16, no config beside it: `run`
    compresses it; `stream: true` refuses it and names `dit-compress convert`, whose folder keeps the
    file's tensors and streams to the resident run's weights."""
    from safetensors.torch import load_file, save_file

    from compress.io_output import load_transformer
    from tests.bfl import flux_to_bfl

    model = tiny_flux(guidance_embeds=False).to(torch.bfloat16)
    model.save_config(tmp_path / "cfg")
    (tmp_path / "weights").mkdir()
    file = "weights/flux1-schnell.safetensors"
    save_file(flux_to_bfl(model, "model.diffusion_model."), str(tmp_path / file))
    (tmp_path / "r.yaml").write_text(STREAMABLE)
    monkeypatch.chdir(tmp_path)
    run = ["run", "r.yaml", "--teacher-config", "cfg"]
    assert main([*run, "--teacher", file, "--out", "resident", "--run-dir", "run-r"]) == 0
    _one_line_errors(capsys, [
        ([*run, "--teacher", file, "--set", "stream=true", "--out", "x", "--run-dir", "run-x"],
         f"{file} is a single file: write it once as a folder with `dit-compress convert {file} FOLDER`"),
        (["convert", "weights", "folder"], "weights: a folder; convert reads a single-file checkpoint"),
        (["convert", "weights/typo.safetensors", "folder"], "weights/typo.safetensors: no such file"),
        (["convert", file, "folder"], "has no config.json beside it; pass --teacher-config"),
        (["convert", file, "resident", "--teacher-config", "cfg"], "resident exists; convert writes a new folder")])
    assert not (tmp_path / "folder").exists()
    assert main(["convert", file, "folder", "--teacher-config", "cfg"]) == 0
    assert "wrote folder: a diffusers FluxTransformer2DModel folder (122 tensors, bfloat16, 1 shard)" in \
        capsys.readouterr().out
    saved, want = load_file("folder/diffusion_pytorch_model.safetensors"), model.state_dict()
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], v) for k, v in want.items())
    assert main(["run", "r.yaml", "--teacher", "folder", "--set", "stream=true", "--out", "streamed",
                 "--run-dir", "run-s"]) == 0
    a, b = load_transformer("resident").state_dict(), load_transformer("streamed").state_dict()
    assert a.keys() == b.keys() and any(k.endswith(".down.weight") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["norm_out.linear.weight"], want["norm_out.linear.weight"].float())  # BFL's halves swapped back


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


def test_importance_and_plan_say_when_a_source_is_not_a_teacher(recipe, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    _one_line_errors(capsys, [
        (["importance", str(tmp_path / "notes.txt")], "notes.txt is not a checkpoint: file type '.txt'; importance "
                                                      "reads a recipe (.yaml) or a teacher"),
        (["importance", str(tmp_path / "empty")], "empty has neither model_index.json nor config.json"),
        (["importance", "toy:pixar"], "unknown toy teacher 'toy:pixar'; did you mean 'toy:pixart'?"),
        (["plan", str(recipe), "--teacher", str(tmp_path / "empty")], "empty has neither model_index.json"),
        (["plan", str(recipe), "--teacher", str(tmp_path / "notes.txt")], "notes.txt is not a checkpoint")])


def _output_with_a_nan(tmp_path, name="adaln_single.linear.down.weight"):
    """A tiny PixArt output (adaln_single.linear factorized) whose weight `name` holds a NaN."""
    from safetensors.torch import load_file, save_file

    from compress.io_export import save_compressed
    from tests.conftest import factorize, tiny_pixart

    out = save_compressed(factorize(tiny_pixart(), ["adaln_single.linear"], rank=2), tmp_path / "out")
    (out / "report.json").write_text(json.dumps({"teacher": "toy:pixart"}))
    weights = next(out.glob("*.safetensors"))
    sd = load_file(weights)
    sd[name][0, 0] = float("nan")
    save_file(sd, weights)
    return out, weights


def test_an_output_with_a_nan_is_one_line_naming_the_tensor_before_eval_or_bench(tmp_path, capsys, monkeypatch):
    """eval sampled for minutes, then failed inside sklearn (Input X contains NaN); bench ran."""
    import compress.toy.evaluate as toy_evaluate

    monkeypatch.setattr(toy_evaluate, "evaluate", lambda *a, **k: pytest.fail("eval sampled"))
    out, weights = _output_with_a_nan(tmp_path)
    for argv in (["eval", str(out)], ["bench", str(out), "--repeats", "1", "--device", "cpu"]):
        assert main(argv) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "adaln_single.linear.down.weight has 1 NaN/Inf" in err and str(weights) in err


def test_load_transformer_can_warn_of_a_nan(tmp_path, capsys):
    from compress.errors import NumericError
    from compress.io_output import load_transformer

    out, _ = _output_with_a_nan(tmp_path, "proj_out.weight")
    with pytest.raises(NumericError, match="proj_out.weight has 1 NaN/Inf"):
        load_transformer(out)
    model = load_transformer(out, nonfinite="warn")
    assert torch.isnan(model.proj_out.weight).any()
    assert "warning:" in capsys.readouterr().err


def test_inspect_shows_an_output_with_a_nan_and_warns(tmp_path, capsys):
    """inspect is for looking: a damaged output is shown with a warning naming the tensor, where
    eval and bench refuse it."""
    from compress.cli import main

    out, _ = _output_with_a_nan(tmp_path, "proj_out.weight")
    assert main(["inspect", str(out)]) == 0
    captured = capsys.readouterr()
    assert "proj_out.weight has 1 NaN/Inf" in captured.err and "rank budget" in captured.out


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
    for teacher in (str(pipe / "transformer"), "pipe/transformer", "pipe"):
        assert main(["eval", str(out), "--teacher", teacher, "--json"]) == 0, teacher
        assert json.loads(capsys.readouterr().out) == recorded, teacher
