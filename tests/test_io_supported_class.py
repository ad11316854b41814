"""io.supported_class's words ('T/vae holds an AutoencoderKL (not a PixArt or Flux transformer): give the
pipeline folder or its transformer/ folder') at each place that builds a model from a config read from a
file: stream.empty_transformer (a folder), io_output.empty_compressed (an output's config.json),
plan.meta_model (a teacher folder), TeacherSource.family (a Hub id: the id as typed), io_hub._hub_folder
(tests/test_io_hub.py). Each test fails where its call site loses the file (the class alone: "unsupported
model class 'AutoencoderKL'; supported: ...", no path)."""

import json

import pytest

from compress.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

HOLDS = "holds an AutoencoderKL (not a PixArt or Flux transformer): give the pipeline folder or its transformer/ folder"
VAE = {"_class_name": "AutoencoderKL", "in_channels": 3, "latent_channels": 4}


def _folder(tmp_path, config: dict):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_stream_names_a_folder_of_another_model(tmp_path):
    from compress.stream import empty_transformer

    folder = _folder(tmp_path, VAE)
    with pytest.raises(UserError) as e:
        empty_transformer(folder)
    assert str(e.value) == f"{folder} {HOLDS}"


def test_an_output_whose_config_is_another_models_is_named(tmp_path):
    from compress import load_transformer

    folder = _folder(tmp_path, {**VAE, "compression": {"format": 1, "ranks": {}}})
    with pytest.raises(UserError) as e:
        load_transformer(folder)
    assert str(e.value) == f"{folder} {HOLDS}"


def test_plans_meta_model_names_a_teacher_folder_of_another_model(tmp_path):
    from compress.plan import meta_model

    folder = _folder(tmp_path, VAE)
    with pytest.raises(UserError) as e:
        meta_model(str(folder))
    assert str(e.value) == f"{folder} {HOLDS}"


def test_plan_names_a_hub_id_of_another_model_as_typed(tmp_path, monkeypatch, capsys):
    """plan / run of a cached Hub id of a VAE said "r.yaml:2: unsupported model class 'AutoencoderKL'; supported:
    FluxTransformer2DModel, PixArtTransformer2DModel", naming neither the id nor what to give."""
    from huggingface_hub import constants

    from compress.cli import main
    from tests.pipelines import hub_cache

    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "transformer" / "config.json").write_text(json.dumps(VAE))
    hub_cache(tmp_path / "hub", "acme/vae", tmp_path / "pipe")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pixart\nteacher: acme/vae\ncalibration: {source: synthetic}\npasses:\n  - svd: {ratio: 0.5}\n")
    for command in (["plan", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "out")]):
        assert main(command) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"dit-compress {command[0]}: error: {recipe}:2: 'acme/vae' holds an AutoencoderKL (not a PixArt or Flux transformer): "
            "give the Hub id of a PixArt or Flux pipeline or transformer, or a local folder"]
