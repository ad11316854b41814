"""`importance`, `plan`, `inspect`, `convert` through the CLI on tiny models (synthetic inputs); eval and bench:
test_commands_eval.py, test_commands_eval_given.py."""

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


def write_recipe(tmp_path):
    """A tiny Flux teacher at tmp_path/teacher and RECIPE naming it at tmp_path/r.yaml; returns its path."""
    tiny_flux().save_pretrained(tmp_path / "teacher")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    return path


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path)


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


def test_importance_checks_where_it_writes_before_the_scan(recipe, tmp_path, capsys, monkeypatch):
    import compress.passes.importance as importance

    monkeypatch.setattr(importance, "scan", lambda *a, **k: pytest.fail("scanned before the check"))
    (tmp_path / "file").write_text("")
    _one_line_errors(capsys, [
        (["importance", str(recipe), "--png", str(tmp_path / "imp.txt")], "a figure is written as"),
        (["importance", str(recipe), "--png", str(tmp_path / "file" / "x.png")], "cannot make the folder"),
        (["importance", str(recipe), "--json", str(tmp_path)], "is a folder; give a file name"),
        (["plan", str(recipe), "--teacher", str(tmp_path / "nowhere")], "teacher not found")])


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
    numbers (stdout), and `run > file` its 'wrote OUT' line (it was on stderr: the file was empty);
    progress and notes go to stderr, with nothing left of progress bars there when it is not a terminal."""
    streamed = tmp_path / "s.yaml"
    streamed.write_text("stream: true\n" + recipe.read_text())
    for path, args in ((streamed, ["--set", "passes.0.svd.fisher=block"]), (recipe, [])):
        out = tmp_path / f"out-{path.stem}"
        assert main(["run", str(path), "--out", str(out), "--run-dir", str(tmp_path / path.stem), *args]) == 0
        run = capsys.readouterr()
        assert run.out.startswith(f"wrote {out}  (") and run.out.count("\n") == 1  # its result line alone
        assert "\n\n" not in run.err and "pass 1/1: svd" in run.err
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
    assert err.count("\n") == 0 and "error: --buckets must be an integer ≥ 1, got 0" in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    assert main(["eval", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err
    for command in ("eval", "bench", "importance"):  # a path that is not there says so
        assert main([command, str(tmp_path / "missing")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("missing: no such" in err or f"no such folder {tmp_path / 'missing'}" in err)


def test_a_typo_in_a_relative_path_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    _one_line_errors(capsys, [(["eval", "out/typo"], "no such folder out/typo (eval takes"),
                              (["bench", "out/typo"], "no such folder out/typo (dit-compress bench OUT")])


def test_plan_refuses_what_the_run_would_and_says_when_there_is_no_gpu(recipe, tmp_path, capsys):
    toy_source = tmp_path / "t.yaml"
    toy_source.write_text(recipe.read_text().replace("source: synthetic", "source: toy"))
    _one_line_errors(capsys, [(["plan", str(toy_source)], "calibration.source 'toy' needs a toy teacher")])
    auto = tmp_path / "a.yaml"
    auto.write_text(recipe.read_text().replace("source: synthetic", "source: auto"))
    _one_line_errors(capsys, [(["plan", str(auto)], "calibration.source 'pipeline' (source auto is pipeline for a "
                                                    "teacher that is not toy:) samples in a diffusers pipeline, "
                                                    "and the teacher")])  # a transformer folder: no pipeline
    if not torch.cuda.is_available():
        cuda = tmp_path / "c[red]x.yaml"  # a note shows the path as it is (not read as rich markup)
        cuda.write_text("device: cuda\n" + recipe.read_text())
        assert main(["plan", str(cuda)]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert "torch sees no CUDA GPU here" in err and f"note: {cuda}:1: device cuda" in err


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




def test_convert_into_a_mount_point_says_so_in_runs_words(tmp_path, monkeypatch, capsys):
    """`convert FILE OUT` with OUT a mount point (a Docker volume, a bind mount) said 'OUT exists; convert writes
    a new folder', where run's --out says what a mount point takes (e9afcd6, c2ee7e1): now run's words, before
    the file is read; a bind mount known from /proc/self/mountinfo alone too, a read-only one as run says it."""
    import os

    from tests.runner_helpers import MOUNT_REFUSAL, mount_points

    (tmp_path / "f.safetensors").write_bytes(b"not read")
    mnt, bound = mount_points(tmp_path, monkeypatch)
    for new in (mnt, bound):
        capsys.readouterr()
        assert main(["convert", str(tmp_path / "f.safetensors"), str(new)]) == 2
        assert capsys.readouterr().err == f"dit-compress convert: error: {MOUNT_REFUSAL.format(out=new)}\n"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: mode != os.W_OK if str(p) == str(mnt) else
                        real_access(p, mode, **kw))
    assert main(["convert", str(tmp_path / "f.safetensors"), str(mnt)]) == 2
    assert capsys.readouterr().err == (f"dit-compress convert: error: output folder {mnt} is a mount point that cannot be "
                                       "written (read-only, or not yours); name a folder on a writable disk\n")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_convert_says_the_teacher_to_stream_quoted_as_a_shell_takes_it(tmp_path, capsys, monkeypatch):
    """'stream it with --teacher ../wé ird dir/cönv out': a path with spaces, pasted, is three arguments."""
    import shlex

    from safetensors.torch import save_file

    model = tiny_flux()
    save_file(model.state_dict(), str(tmp_path / "f.safetensors"))
    model.save_config(tmp_path)  # config.json beside the file
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["convert", "f.safetensors", "wé ird dir/cönv out"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert said.endswith("; stream it with --teacher 'wé ird dir/cönv out'"), said
    assert shlex.split(said.rsplit("--teacher ", 1)[1]) == ["wé ird dir/cönv out"]
