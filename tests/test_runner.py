"""End to end on tiny random diffusers models in temp folders (synthetic calibration inputs). Output
and run folders, upfront pass checks, --resume and failures have their own files (test_runner_*.py)."""

import json

import pytest
import torch

from compress.cli import main
from compress.errors import UserError
from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.runner_helpers import RECIPE, SIMPLE


@pytest.fixture(params=["pixart", "flux"])
def setup(request, tmp_path):
    family = request.param
    model = tiny_pixart() if family == "pixart" else tiny_flux()
    model.save_pretrained(tmp_path / "teacher")
    group = "blocks" if family == "pixart" else "single"
    text = RECIPE.format(family=family, teacher=tmp_path / "teacher", group=group)
    (tmp_path / "r.yaml").write_text(text)
    return family, model, tmp_path, text


def _run(tmp_path, text, out="out", run="run", **kw):
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    return Runner(recipe, tmp_path / out, tmp_path / run, **kw).run()


def test_run_exports_a_loadable_student(setup):
    family, teacher, tmp_path, text = setup
    out = _run(tmp_path, text)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "recipe.yaml", "report.json",
                 "block_map.json", "README.md"):
        assert (out / name).is_file(), name
    student = load_transformer(out)
    report = json.loads((out / "report.json").read_text())
    card = (out / "README.md").read_text()
    worst = max(r["loss_ratio"] for r in report["svd"]["layers"].values() if "loss_ratio" in r)
    assert f"worst whitened loss / closed-form optimal loss: {worst:.9f}" in card
    assert f"Compensation in {len(report['svd']['compensation'])} stages" in card
    group = "transformer_blocks" if family == "pixart" else "single_transformer_blocks (single)"  # by module
    assert (f"Blocks removed by the last remove_blocks pass (teacher indices): {group} [0] (listed in the "
            "recipe).") in card
    assert report["student_params"] == sum(p.numel() for p in student.parameters())
    assert report["student_params"] < report["teacher_params"]
    block_map = json.loads((out / "block_map.json").read_text())
    group = "blocks" if family == "pixart" else "single"
    assert block_map[group] == list(range(1, len(block_map[group]) + 1))
    with torch.no_grad():
        student(**model_inputs(student))


def test_deterministic_and_resumable(setup, monkeypatch):
    family, teacher, tmp_path, text = setup
    first = _run(tmp_path, text, out="a", run="run-a")
    second = _run(tmp_path, text, out="b", run="run-b")
    weights = "diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()

    from compress.passes import svd

    def boom(self, model, ctx):
        raise KeyboardInterrupt("simulated Ctrl-C during svd")

    monkeypatch.setattr(svd.SVDPass, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, text, out="c", run="run-c")
    assert not (tmp_path / "c").exists()  # nothing half-written
    monkeypatch.undo()
    third = _run(tmp_path, text, out="c", run="run-c", resume=True)
    assert (third / weights).read_bytes() == (first / weights).read_bytes()


def test_failed_export_leaves_no_output(setup, monkeypatch):
    family, teacher, tmp_path, text = setup
    import compress.io_export as io_export

    real = io_export.save_file

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_export, "save_file", disk_full)
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    runner = Runner(recipe, tmp_path / "out", tmp_path / "run")
    runner.prepare()
    with pytest.raises(OSError):
        runner.export(runner.teacher, 1)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())
    monkeypatch.setattr(io_export, "save_file", real)


def test_existing_output_refused_before_compute(setup):
    family, teacher, tmp_path, text = setup
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        _run(tmp_path, text)


def test_cli_user_errors_exit_2_with_one_line(setup, capsys):
    family, teacher, tmp_path, text = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("ratio: 0.5", "ratio: 1.5"))
    assert main(["run", str(bad), "--out", str(tmp_path / "o"), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dit-compress run: error:") and "\n" not in err and "ratio" in err
    assert f"{bad}:6:" in err  # file:line of the svd pass
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    missing = tmp_path / "missing.yaml"
    missing.write_text(text.replace(str(tmp_path / "teacher"), str(tmp_path / "gone")))
    assert main(["run", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "teacher not found" in capsys.readouterr().err


def test_cli_run_and_inspect(setup, capsys):
    """run's result line 'wrote OUT  (N params, P% of the teacher)' is on stdout, alone there, as README
    says of results (it was on stderr with the progress: `run ... > log` left an empty log)."""
    family, teacher, tmp_path, text = setup
    out, plots = tmp_path / "o", tmp_path / "plots"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir",
                 str(tmp_path / "run"), "--set", "passes.1.svd.ratio=0.4"]) == 0
    said = capsys.readouterr()
    assert len(said.out.splitlines()) == 1 and said.out.startswith(f"wrote {out}  (")
    assert said.out.endswith("% of the teacher)\n") and "wrote" not in said.err and "pass 1/" in said.err
    assert main(["inspect", str(out), "--json", "--plot", str(plots)]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    factored = [r for r in rows if r["rank"]]
    assert factored and all(r["loss_ratio"] <= 1.001 for r in factored)
    assert (plots / "ranks.png").stat().st_size > 1000
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "whitened loss / optimal loss" in shown and "compensation " in shown and "→" in shown


def test_nan_weight_names_the_layer(tmp_path):
    from compress.errors import NumericError

    model = tiny_pixart()
    with torch.no_grad():
        model.transformer_blocks[1].attn1.to_k.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "teacher")
    text = RECIPE.format(family="pixart", teacher=tmp_path / "teacher", group="blocks")
    with pytest.raises(NumericError, match=r"transformer_blocks\.1\.attn1\.to_k\.weight"):
        _run(tmp_path, text)


def test_calibration_inputs_are_made_once_per_run(setup, monkeypatch):
    """Every pass asks for calibration inputs; a pipeline source samples the teacher to make them."""
    from compress.inputs import SyntheticSource

    calls = {"calibration": 0, "heldout": 0}
    for name in calls:
        original = getattr(SyntheticSource, name)

        def counted(self, _name=name, _original=original):
            calls[_name] += 1
            return _original(self)

        monkeypatch.setattr(SyntheticSource, name, counted)
    _family, _model, tmp_path, text = setup
    _run(tmp_path, text.replace("  - remove_blocks:", "  - importance: {}\n  - remove_blocks:"))
    assert calls == {"calibration": 1, "heldout": 1}


@pytest.mark.parametrize("bad, words", [
    ("{train: everything}", "train must be one of"),
    ("{data: pictures}", "data must be one of"),
    ("{data: folder, latents_dir: /nonexistent/latents}", "latents_dir /nonexistent/latents is not a folder"),
    ("{data: teacher_samples, sample_steps: 0}", "sample_steps must be ≥ 1"),
    ("{data: toy, guidance_scale: 3.0}", "guidance_scale .3.0. is the teacher sampler.s: ≥ 1, and only with data: teacher_samples"),
    ("{data: teacher_samples, guidance_scale: 0.5}", "guidance_scale"),
])
def test_bad_distill_config_is_refused_before_any_pass_runs(setup, monkeypatch, bad, words):
    """The distill pass comes last; its mistakes must not wait for calibration and svd to finish."""
    from compress.passes import svd

    family, teacher, tmp_path, text = setup
    ran = []
    monkeypatch.setattr(svd.SVDPass, "run", lambda self, model, ctx: ran.append(1))
    with pytest.raises(UserError, match=rf"r\.yaml:7: distill(: |\.){words}"):  # a choice: distill.train
        _run(tmp_path, text + f"  - distill: {bad}\n")
    assert not ran


def test_pipeline_prompts_are_inlined_in_the_output_recipe(tmp_path):
    """A real-model style run (calibration sampled from a pipeline on a prompt file beside the recipe):
    the output's recipe.yaml carries the prompts themselves, so eval works from any folder."""
    from compress.recipe import load_recipe

    (tmp_path / "prompts.txt").write_text("a handwritten 3\na handwritten 8\na handwritten 1\n")
    (tmp_path / "r.yaml").write_text(
        "model: pixart\nteacher: toy:pixart\n"
        "calibration: {source: pipeline, prompt_file: prompts.txt, num_prompts: 3, sample_steps: 2,\n"
        "              timesteps: 1, batch_size: 4, heldout: 2}\n"
        "passes:\n  - svd: {targets: [modulation], ranks: {modulation: 8}, multiple: 4, fisher: none}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    out = Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    saved = load_recipe(out / "recipe.yaml").calibration
    assert saved.prompt_file is None
    assert saved.prompts == ["a handwritten 3", "a handwritten 8", "a handwritten 1"]


def test_device_key(setup):
    """device: auto, cpu, cuda or cuda:N (file:line otherwise); a GPU that is not there is a
    one-line error before anything loads, streamed or not; cpu and auto (on a machine without a
    GPU) write the same weights."""
    family, _, tmp_path, text = setup
    with pytest.raises(UserError, match=r"r\.yaml:1: device must be one of auto, cpu, cuda, cuda:N, not 'gpu'; did you mean 'cuda'\?"):
        parse_recipe("device: gpu\n" + text, str(tmp_path / "r.yaml"))
    if not torch.cuda.is_available():
        for head in ("device: cuda:0\n", "device: cuda\nstream: true\n"):
            with pytest.raises(UserError, match="torch sees no CUDA GPU here"):
                _run(tmp_path, head + text)
        a = load_transformer(_run(tmp_path, "device: cpu\n" + text, out="cpu", run="run-cpu")).state_dict()
        b = load_transformer(_run(tmp_path, text, out="auto", run="run-auto")).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_the_gpu_matches_the_cpu(setup, exact_gpu_float32):
    """Teacher, student, calibration and factorization on the GPU (float64 eigendecompositions
    there): the same ranks, and factors and held-out errors within float tolerance of the CPU's."""
    family, _, tmp_path, text = setup
    runs = {d: _run(tmp_path, f"device: {d}\n" + text, out=f"out-{d}", run=f"run-{d}") for d in ("cpu", "cuda")}
    a, b = (load_transformer(runs[d]).state_dict() for d in ("cpu", "cuda"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    errors = [json.loads((runs[d] / "report.json").read_text())["stages"][-1]["relative_error"] for d in runs]
    assert errors[1] == pytest.approx(errors[0], rel=1e-3)


def test_the_gpu_comparison_takes_the_timestep_embedding_on_the_cpu(exact_gpu_float32, monkeypatch):
    """exact_gpu_float32 has diffusers' sinusoidal timestep and guidance embeddings computed from CPU
    timesteps whatever the device (CUDA's float32 exp/sin round an ulp apart from the CPU's there, at
    arguments up to 1000, which can move the compensated factors 150x past the GPU tests'
    tolerance), where both families' forwards call it; on the CPU it changes nothing, bit for bit."""
    import diffusers.models.embeddings as embeddings

    patched = embeddings.get_timestep_embedding
    t = torch.rand(4, generator=torch.Generator().manual_seed(0)) * 1000
    assert patched.__wrapped__ is not patched
    assert torch.equal(patched(t, 256, True, 0), patched.__wrapped__(t, 256, True, 0))
    calls = []
    monkeypatch.setattr(embeddings, "get_timestep_embedding", lambda *a, **k: (calls.append(1), patched(*a, **k))[1])
    for model in (tiny_pixart(), tiny_flux()):
        with torch.no_grad():
            model(**model_inputs(model))
    assert len(calls) == 3  # PixArt's timestep; Flux's timestep and guidance


# ---- importance scores are reused only while they describe the student ------------------------
def _removed_after(tmp_path, name: str, passes: str, **kw) -> dict:
    recipe = parse_recipe(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes), str(tmp_path / f"{name}.yaml"))
    out = Runner(recipe, tmp_path / f"out-{name}", tmp_path / f"run-{name}", **kw).run()
    return json.loads((out / "report.json").read_text())


def test_an_importance_scan_before_svd_is_not_reused_after_it(tmp_path, monkeypatch):
    """svd changes the model the scan scored: remove_blocks after importance -> svd scans the
    student as svd left it, and removes what an importance pass placed after svd chooses (on this
    tiny PixArt the teacher's scores pick another block), also when --resume starts at the removal
    (what changed the weights is known from the recipe). With nothing in between, the recorded
    scores are reused."""
    from compress.passes.remove_blocks import RemoveBlocksPass

    tiny_pixart(num_layers=5).save_pretrained(tmp_path / "teacher")
    imp, rb = "  - importance: {progress: false}\n", "  - remove_blocks: {count: 1}\n"
    svd = "  - svd: {targets: [attention, mlp], ratio: 0.15, multiple: 2, progress: false}\n"
    after = _removed_after(tmp_path, "after", svd + imp + rb)
    fresh = after["remove_blocks"]["removed"]["blocks"]
    assert after["remove_blocks"]["reused_importance"] is True

    def interrupted(self, model, ctx):
        raise KeyboardInterrupt("simulated Ctrl-C during remove_blocks")

    monkeypatch.setattr(RemoveBlocksPass, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _removed_after(tmp_path, "before", imp + svd + rb)
    monkeypatch.undo()
    before = _removed_after(tmp_path, "before", imp + svd + rb, resume=True)
    stale = min(before["importance"]["blocks"], key=lambda b: b["scan"])["teacher_index"]
    assert fresh != [stale]  # the case: the teacher's ranking picks another block than the student's
    assert before["remove_blocks"]["removed"]["blocks"] == fresh
    assert before["remove_blocks"]["reused_importance"] is False


def test_the_runs_teacher_is_checked_once(tmp_path, monkeypatch):
    """The run checks its source before any weights (family, prompt file) and loads it without
    checking it again (the old code checked it twice)."""
    from compress.runner_setup import load_checked_teacher
    from tests.test_io_source import _counting, _recipe

    tiny_pixart().save_pretrained(tmp_path / "t")
    recipe = _recipe(tmp_path / "r", teacher=str(tmp_path / "t"), overrides=["calibration={source: synthetic}"])
    checked, _ = _counting(monkeypatch)
    source, teacher = load_checked_teacher(recipe)
    assert source == str(tmp_path / "t") and type(teacher).__name__ == "PixArtTransformer2DModel"
    assert checked == [source]


def test_a_run_checks_its_teacher_and_makes_its_passes_once(tmp_path, monkeypatch):
    """The run's memory warning planned the recipe on its own: the teacher's source was checked and
    the passes made a second time before the teacher loaded."""
    from compress.passes.base import Pass
    from tests.test_io_source import _counting

    tiny_pixart().save_pretrained(tmp_path / "t")
    text = SIMPLE.format(teacher=tmp_path / "t", passes="  - remove_blocks: {blocks: {blocks: [0]}}\n"
                                                      "  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n")
    made, init = [], Pass.__init__
    monkeypatch.setattr(Pass, "__init__", lambda self, config: made.append(type(self).__name__) or init(self, config))
    checked, _ = _counting(monkeypatch)
    _run(tmp_path, text)
    assert checked == [str(tmp_path / "t")]
    assert made == ["RemoveBlocksPass", "SVDPass"]


def test_an_output_written_during_the_run_is_refused_at_export_in_the_runs_words(setup):
    """The run's export (save_compressed, a Python call) of an output folder written since the run began
    says the run's option, --overwrite, not the Python caller's overwrite=True."""
    family, teacher, tmp_path, text = setup
    runner = Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run")
    runner.prepare()
    runner.models.save(runner.teacher, tmp_path / "out")  # written by another run since this one's start
    with pytest.raises(UserError, match="exists; pass --overwrite to replace it"):
        runner.export(runner.teacher, 1)


def test_a_run_whose_stdout_reader_is_gone_still_marks_its_run_finished(tmp_path, monkeypatch):
    """R2 stop 52: `run R.yaml | head -0` (stdout's reader gone as 'wrote OUT' was said) exited 0 with its
    output in place but its run folder not marked finished (the BrokenPipeError left Runner.run past
    mark_finished), so `run R.yaml --overwrite` then refused ('... not marked written ...'). Now it is
    marked finished, and the rerun starts over."""
    import os
    import subprocess
    import sys

    from compress.runner_resume import FINISHED
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from compress.cli import main; sys.exit(main())",
                               *argv], stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=600)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert load_transformer(tmp_path / "out") is not None and (tmp_path / "run" / "stages" / FINISHED).is_file()
    assert main([*argv, "--overwrite"]) == 0
