"""`eval` (compress/commands.py) through the CLI given other than an output as a run wrote it: a toy (its
scores' lines, its grid), an output without report.json or recipe.yaml (a toy's, one compressed from a
toy's output, one re-saved), and what it refuses before loading (a recipe, a teacher, a Hub id whose
cached copy is no output)."""

import json

import pytest
import torch

from compress.cli import main
from tests.conftest import tiny_flux
from tests.test_commands import STREAMABLE, _one_line_errors, write_recipe


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path)


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


def test_eval_of_a_recipe_says_it_takes_an_output_folder(recipe, capsys):
    """`eval RECIPE.yaml` said "is not a checkpoint: file type '.yaml'; a teacher is a folder or a
    checkpoint file", as if a teacher were wanted."""
    _one_line_errors(capsys, [(["eval", str(recipe)], f"{recipe} is a recipe: eval takes an output folder")])


def test_eval_of_a_folder_of_recipes_says_what_it_is_and_what_eval_takes(tmp_path, capsys, monkeypatch):
    """T2 stop 52 #11: `eval recipes` (the shipped recipes' folder) said 'recipes is not a dit-compress output:
    eval measures a compressed output folder against its teacher (dit-compress eval OUT); a real teacher has
    no toy scores', as if a teacher had been given. Now it is a folder of recipes, its YAMLs named, and what
    eval takes; a model folder that holds a YAML beside its config.json is no such folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    for name in ("b.yaml", "a.yml", "c.yaml", "d.yaml"):
        (tmp_path / "recipes" / name).write_text("model: pixart\n")
    _one_line_errors(capsys, [(["eval", "recipes"], "recipes is a folder of recipes (a.yml, b.yaml, c.yaml, ...), "
                               "not a model: eval takes an output folder (dit-compress eval OUT, OUT written by run: "
                               "dit-compress run recipes/a.yml) or a teacher source")])
    (tmp_path / "recipes" / "config.json").write_text("{}")
    assert main(["eval", "recipes"]) == 2
    assert "folder of recipes" not in capsys.readouterr().err


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
            f"dit-compress {what}: error: acme/none: no such output folder, and the Hugging Face cache {tmp_path / 'hub'} "
            f"holds no copy of it: {what} reads a local output folder or the cache's copy of a Hub id; download it "
            "(hf download acme/none) and give acme/none again, or give a local folder\n")
    snapshot = tmp_path / "hub" / "models--acme--teacher" / "snapshots" / ("0" * 40)
    assert main(["eval", "acme/teacher"]) == 2
    assert capsys.readouterr().err == (f"dit-compress eval: error: acme/teacher: the Hugging Face cache holds it at "
                                       f"{snapshot}, which is no dit-compress output (its config.json has no "
                                       "compression section)\n")
