"""The transformer class a pipeline's model_index.json lists (compress.pipeline_family), the generic
Transformer2DModel of older PixArt repos told by transformer/config.json, else by the pipeline class:
a Flux teacher in such a pipeline refused by plan, run's pre-run check and the check after the teacher
loads, and a Flux output's base of it by load_pipeline, naming both; a PixArt teacher or output passes."""

import json
import shutil

import pytest

from compress import load_pipeline, save_compressed
from compress.cli import main
from compress.errors import UserError
from compress.io import load_teacher
from tests.pipelines import pipeline_folders
from tests.test_pipeline_folder import _cached_offline, _pipeline_recipe, _refused_before_the_teacher_loads

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = [("folder", False), ("folder", True), ("cached", False), ("cached", True)]  # (where, without transformer/)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def _older_pixart(folders, tmp_path, monkeypatch, where: str, bare: bool) -> tuple[str, str, str]:
    """(pipeline, how, cached): the tiny PixArt pipeline as an older PixArt repo (model_index.json and
    transformer/config.json name the generic Transformer2DModel), without transformer/ where `bare`
    (a download without it), a folder or the Hugging Face cache's snapshot of acme/pixold; how its
    transformer's class is told; the snapshot's words, where cached."""
    folder = tmp_path / "pixold"
    shutil.copytree(folders["pixart"], folder)
    for path in (folder / "model_index.json", folder / "transformer" / "config.json"):
        data = json.loads(path.read_text())
        if "transformer" in data:
            data["transformer"] = ["diffusers", "Transformer2DModel"]
        else:
            data["_class_name"] = "Transformer2DModel"
        path.write_text(json.dumps(data))
    if bare:
        shutil.rmtree(folder / "transformer")
    how = "by its pipeline class PixArtSigmaPipeline" if bare else "by its transformer/config.json"
    if where == "folder":
        return str(folder), how, ""
    snapshot = _cached_offline(tmp_path, monkeypatch, folder, "acme/pixold")
    return "acme/pixold", how, str(snapshot)


@pytest.mark.parametrize(("where", "bare"), PARAMS)
def test_a_flux_teacher_in_an_older_pixart_pipeline_is_refused_naming_both_before_it_loads(
        tmp_path, folders, capsys, monkeypatch, where, bare):
    """c851746 took the generic Transformer2DModel as no family: a Flux teacher with an older PixArt
    calibration pipeline passed plan, and run failed while sampling ('FrozenDict' object has no
    attribute 'sample_size')."""
    pipeline, how, snapshot = _older_pixart(folders, tmp_path, monkeypatch, where, bare)
    teacher = folders["flux"] / "transformer"
    recipe = _pipeline_recipe(tmp_path, "flux", teacher, pipeline)
    cached = f"the Hugging Face cache's snapshot {snapshot} of it: " if snapshot else ""
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: cannot load calibration pipeline '{pipeline}': {cached}its model_index.json's "
        f"transformer is a Transformer2DModel (a PixArtTransformer2DModel {how}), and the teacher {teacher} is a "
        "FluxTransformer2DModel (flux); set calibration.pipeline to a pipeline of the teacher's family")


@pytest.mark.parametrize(("where", "bare"), PARAMS)
def test_a_pixart_teacher_plans_with_an_older_pixart_pipeline(tmp_path, folders, capsys, monkeypatch, where, bare):
    pipeline, _, _ = _older_pixart(folders, tmp_path, monkeypatch, where, bare)
    recipe = _pipeline_recipe(tmp_path, "pixart", folders["pixart"] / "transformer", pipeline)
    assert main(["plan", recipe]) == 0
    assert "total parameters" in capsys.readouterr().out


def test_the_check_after_the_teacher_loads_tells_the_older_pixart_pipeline_too(tmp_path, folders, monkeypatch):
    from compress.calib_pipeline_load import load_pipeline_for

    pipeline, how, _ = _older_pixart(folders, tmp_path, monkeypatch, "folder", False)
    with pytest.raises(UserError) as e:
        load_pipeline_for(load_teacher(str(folders["flux"] / "transformer")), pipeline)
    assert str(e.value) == (f"cannot load calibration pipeline '{pipeline}': its model_index.json's transformer is a "
                            f"Transformer2DModel (a PixArtTransformer2DModel {how}), and the teacher is a "
                            "FluxTransformer2DModel; set calibration.pipeline to a pipeline of the teacher's family")
    pipe = load_pipeline_for(load_teacher(str(folders["pixart"] / "transformer")), pipeline)
    assert type(pipe.transformer).__name__ == "PixArtTransformer2DModel"


@pytest.mark.parametrize(("where", "bare"), PARAMS)
def test_load_pipeline_refuses_an_older_pixart_base_for_a_flux_output_and_takes_it_for_a_pixart_one(
        tmp_path, folders, monkeypatch, where, bare):
    """A Flux output's older PixArt base without transformer/ loaded a PixArt pipeline around the Flux
    transformer; one with it was refused as 'a Transformer2DModel', and so was a PixArt output's."""
    base, how, snapshot = _older_pixart(folders, tmp_path, monkeypatch, where, bare)
    flux = save_compressed(load_teacher(str(folders["flux"] / "transformer")), tmp_path / "flux-out",
                           extra={"teacher": "x"})
    with pytest.raises(UserError) as e:
        load_pipeline(flux, base=base)
    held = f" (its model_index.json in the Hugging Face cache's snapshot {snapshot} of it)" if snapshot else ""
    assert str(e.value) == (f"base pipeline {base} holds a Transformer2DModel (a PixArtTransformer2DModel {how}){held}; "
                            "the compressed transformer is a FluxTransformer2DModel: pass a base of its family")
    if not bare:
        pixart = save_compressed(load_teacher(str(folders["pixart"] / "transformer")), tmp_path / "pixart-out",
                                 extra={"teacher": "x"})
        assert type(load_pipeline(pixart, base=base).transformer).__name__ == "PixArtTransformer2DModel"


def test_the_generic_transformer2dmodel_is_told_by_its_config_else_by_the_pipeline_class(tmp_path):
    from compress.pipeline_family import config_class, index_transformer, pipeline_family
    from compress.pipeline_folder import family_problem

    index = {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "Transformer2DModel"]}
    assert family_problem(index, "pixart", "t") is None
    assert "Transformer2DModel (a PixArtTransformer2DModel by its pipeline class" in family_problem(index, "flux", "t")
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    assert index_transformer(index, tmp_path) == ("FluxTransformer2DModel", "by its transformer/config.json")
    assert index_transformer(dict(index, _class_name="DiTPipeline")) is None  # nothing tells: nothing checked
    assert index_transformer(dict(index, _class_name="FluxPipeline"))[0] == "FluxTransformer2DModel"
    assert index_transformer(dict(index, transformer=["diffusers", "SD3Transformer2DModel"])) == (
        "SD3Transformer2DModel", "")
    assert index_transformer({"_class_name": "PixArtSigmaPipeline"}) is None
    assert config_class({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_single"}) == "PixArtTransformer2DModel"
    assert config_class({"_class_name": "Transformer2DModel", "guidance_embeds": True}) == "FluxTransformer2DModel"
    assert config_class({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero"}) is None  # DiT
    assert config_class({"caption_channels": 8, "num_single_layers": 2}) is None  # both: none told
    assert pipeline_family("PixArtAlphaPipeline") == "pixart" and pipeline_family(None) is None
