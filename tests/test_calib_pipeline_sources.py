"""What calibration samples in (compress/calib_pipeline.py): saved toy pipelines (as their toy), outputs and
broken chains of teachers named as what they are, at the recipe line that gave them."""

import json

import pytest

from compress.calib_pipeline import PipelineSource
from compress.errors import UserError
from compress.inputs import source_kind
from compress.recipe import CalibrationConfig, parse_recipe
from tests.teacher_chain_helpers import chained_outputs, output_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(tmp_path, teacher: str, calibration: str, model: str = "pixart"):
    text = f"model: {model}\nteacher: {teacher}\ncalibration:\n{calibration}passes:\n  - svd: {{}}\n"
    return parse_recipe(text, str(tmp_path / "r.yaml"))


def test_a_saved_toy_pipeline_samples_as_its_toy(tmp_path):
    """A folder a toy pipeline's save_pretrained wrote (model_index.json: ToyPixArtPipeline; its toy text
    encoder and VAE not saved) is the toy's pipeline with the scheduler saved there, as load_pipeline takes
    it for a base: as calibration.pipeline, or as the teacher it samples in, it samples what toy:pixart
    does. It was refused ('... is a saved toy pipeline (ToyPixArtPipeline in its model_index.json), which
    diffusers cannot load ...; set calibration.pipeline: toy:pixart ...'), while load_pipeline(out,
    base=FOLDER) loaded it. One whose index names another family's toy than the recipe's model is refused
    at its line."""
    import torch

    from compress.io import load_teacher
    from compress.plan import make_plan
    from compress.toy import load_toy_pipeline

    load_toy_pipeline("pixart").save_pretrained(tmp_path / "pipe")
    prompts = "  prompts: [a 3, a 7, a 1]\n  sample_steps: 2\n  timesteps: 2\n"
    teacher = load_teacher("toy:pixart")
    batches, plans = {}, {}
    for name, pipeline in (("toy", "toy:pixart"), ("saved", str(tmp_path / "pipe"))):
        given = _recipe(tmp_path, "toy:pixart", f"  source: pipeline\n  pipeline: {pipeline}\n{prompts}")
        assert source_kind(given.calibration, given.teacher) == "pipeline"
        batches[name] = PipelineSource("pixart", given.calibration, teacher, pipeline).calibration()
        plans[name] = make_plan(given)["calibration"]  # the toy's tokens, not a real pipeline's
    assert plans["saved"] == plans["toy"]
    assert len(batches["saved"]) == len(batches["toy"])
    for a, b in zip(batches["toy"], batches["saved"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    as_teacher = _recipe(tmp_path, str(tmp_path / "pipe"), prompts)
    assert source_kind(as_teacher.calibration, as_teacher.teacher) == "pipeline"
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(dict(index, _class_name="ToyFluxPipeline")))
    with pytest.raises(UserError) as e:
        source_kind(as_teacher.calibration, as_teacher.teacher)
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:2: cannot load calibration pipeline '{tmp_path / 'pipe'}': it is "
                            "a saved toy:flux pipeline (its model_index.json), and the recipe's model is pixart")


def test_an_output_as_the_pipeline_is_named_at_its_recipe_line_with_the_toy_its_chain_starts_at(tmp_path):
    """'calibration.source pipeline samples in a diffusers pipeline, and the teacher OUT is a folder
    without model_index.json' named no line of the recipe, and for a chain of teachers starting at a
    toy offered a Hugging Face id too: it names the line of `teacher:` (or of calibration.pipeline)
    and the toy alone."""
    _, d = chained_outputs(tmp_path, "toy:flux")
    recipe = _recipe(tmp_path, str(d), "  source: pipeline\n  prompts: [a 3, a 7]\n", "flux")
    with pytest.raises(UserError) as e:
        PipelineSource("flux", recipe.calibration, None, str(d))
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:2: calibration.source 'pipeline' samples in a diffusers pipeline, "
                            f"and the teacher {d} is a folder without model_index.json; set calibration.pipeline to "
                            f"toy:flux, the base pipeline {d} records, or calibration.source: synthetic")
    given = _recipe(tmp_path, "toy:flux", f"  source: pipeline\n  pipeline: {d}\n  prompts: [a 3, a 7]\n", "flux")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'r.yaml'}:5: calibration.source 'pipeline' samples in a "
                                        rf"diffusers pipeline, and {d} is a folder"):
        PipelineSource("flux", given.calibration, None, str(d))


def test_an_output_calibrated_in_a_toy_pipeline_names_it_where_its_chain_ends_in_no_pipeline(tmp_path):
    """An output of a transformer folder calibrated with calibration.pipeline: toy:pixart: the next
    link, with that output as its teacher, was told 'a Hugging Face id ... or a pipeline folder'; the
    toy pipeline the output's recipe.yaml calibrated in is named."""
    (tmp_path / "bare").mkdir()  # a transformer folder: the chain's end, no pipeline
    a = output_config(tmp_path / "a", str(tmp_path / "bare"))
    (a / "recipe.yaml").write_text("model: pixart\nteacher: bare\ncalibration:\n  pipeline: toy:pixart\n")
    calib = CalibrationConfig(prompts=["a 3", "a 7"])
    with pytest.raises(UserError) as e:
        PipelineSource("pixart", calib, None, str(a))
    assert str(e.value).endswith(f"set calibration.pipeline to toy:pixart, the pipeline the recipe.yaml of {a} "
                                 "calibrated in, or calibration.source: synthetic")
    gone = tmp_path / "gone" / "pipe"
    (a / "recipe.yaml").write_text(f"model: pixart\nteacher: bare\ncalibration:\n  pipeline: {gone}\n")
    with pytest.raises(UserError, match=r"base pipeline \(a Hugging Face id such as PixArt-alpha/"):
        PipelineSource("pixart", calib, None, str(a))  # a local pipeline not there now: not offered


def test_distill_data_toy_through_a_pipeline_says_what_is_true(tmp_path):
    """'distill on a non-toy teacher needs data' was said also for a toy chain calibrated through a
    pipeline (calibration.pipeline: toy:pixart)."""
    import torch

    calib = CalibrationConfig(prompts=["a 3", "a 7"])
    with pytest.raises(UserError) as e:
        PipelineSource("pixart", calib, None, "toy:pixart").train_batch(2, torch.Generator())
    assert str(e.value) == ("distill.data: toy trains on the toy data, and this run calibrates through a pipeline: "
                            "set distill.data to 'teacher_samples' or 'folder'")


def test_a_transformer_folder_with_a_saved_toy_pipelines_index_is_refused_as_a_pipeline_naming_its_scheduler(
        tmp_path, capsys):
    """The toy teacher's folder with a saved toy pipeline's model_index.json beside its config.json (no
    scheduler/): plan --teacher passed (rc 0) and run failed after loading the teacher ("cannot load
    calibration pipeline 'T': its scheduler: Error no file named scheduler_config.json found in directory
    T."), load_pipeline(base=T) too. Now plan, run (before any work) and load_pipeline name the part it
    lacks; as a teacher with a synthetic source, and as an output, the folder is read as before."""
    import shutil

    from compress import load_pipeline, save_compressed
    from compress.cli import main
    from compress.toy import load_toy_pipeline, load_toy_teacher

    load_toy_pipeline("pixart").save_pretrained(tmp_path / "pipe")
    teacher, out = tmp_path / "t", tmp_path / "o"
    load_toy_teacher("pixart").save_pretrained(teacher)
    save_compressed(load_toy_teacher("pixart"), out)
    for folder in (teacher, out):
        shutil.copy(tmp_path / "pipe" / "model_index.json", folder / "model_index.json")
    lacks = ("its model_index.json lists scheduler (diffusers DPMSolverMultistepScheduler), but the folder has no "
             "scheduler/ with files in it (diffusers would stop loading it on a file it reads); copy it from the "
             "pipeline the folder came from")
    calibration = "{source: %s, prompts: [a 3, a 7, a 1], sample_steps: 2, timesteps: 2, batch_size: 4, heldout: 2}"
    recipe = "model: pixart\nteacher: toy:pixart\ncalibration: %s\npasses:\n  - svd: {ratio: 0.5, progress: false}\n"
    (tmp_path / "p.yaml").write_text(recipe % (calibration % "pipeline"))
    (tmp_path / "s.yaml").write_text(recipe % (calibration % "synthetic"))
    given = ["--teacher", str(teacher)]
    for argv in (["plan", str(tmp_path / "p.yaml")], ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "new")]):
        capsys.readouterr()
        assert main(argv + given) == 2, argv
        assert capsys.readouterr().err.strip().splitlines() == [
            f"dit-compress {argv[0]}: error: cannot load calibration pipeline '{teacher}': {lacks}"], argv
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError) as e:
        load_pipeline(out, base=str(teacher))
    assert str(e.value) == f"cannot load base pipeline '{teacher}': {lacks}"
    assert main(["plan", str(tmp_path / "s.yaml")] + given) == 0
    assert main(["inspect", str(out)]) == 0
    shutil.copytree(tmp_path / "pipe" / "scheduler", teacher / "scheduler")  # the whole saved toy pipeline
    assert main(["plan", str(tmp_path / "p.yaml")] + given) == 0
