"""calib_pipeline_load: the calibration pipeline's scheduler config of a Hub id is read as the
pipeline loads (io_hub_pipeline.hub_or_cache): no huggingface_hub warning, and no request once the
Hub is taken as unreachable; the pipeline loads before a sampling bar starts."""

from __future__ import annotations

import json

import pytest

from tests.hub_server import within

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A tiny PixArt pipeline cached as acme/pix (HF_HUB_CACHE), HF_HUB_OFFLINE set; its folder."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache, pixart_pipeline

    pipe = pixart_pipeline(tmp_path / "pipe")
    hub_cache(tmp_path / "hub", "acme/pix", pipe)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return pipe


def test_a_hub_pipelines_scheduler_config_says_no_huggingface_hub_warning(cached):
    """load_config of a Hub id (diffusers passes local_dir_use_symlinks to hf_hub_download) printed
    huggingface_hub's UserWarning with its source line on every run, offline too: it is read inside
    quiet_hub, from the cache offline."""
    import warnings

    from compress.calib_pipeline_load import scheduler_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = scheduler_config("acme/pix")
    said = [str(w.message) for w in caught]
    assert not [w for w in said if "local_dir_use_symlinks" in w], said
    assert config["_class_name"] == json.loads((cached / "scheduler" / "scheduler_config.json").read_text())["_class_name"]


def test_a_scheduler_config_after_the_hub_stopped_answering_asks_it_nothing(cached, hanging_hub, monkeypatch, capsys):
    """After the calibration pipeline's load noted the Hub stopped answering (read from the cache),
    the scheduler config still sent HEAD …/scheduler/scheduler_config.json and waited: it is read
    from the cache (local_files_only) with no request."""
    from huggingface_hub import constants

    from compress.calib_pipeline_load import load_pipeline_for, scheduler_config
    from tests.conftest import tiny_pixart

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pipeline, _ = within(30, lambda: load_pipeline_for(tiny_pixart(), "acme/pix"))
    assert type(pipeline).__name__ == "PixArtSigmaPipeline", pipeline
    assert "'acme/pix' is read from the Hugging Face cache" in capsys.readouterr().err
    asked = len(hanging_hub)
    config, took = within(30, lambda: scheduler_config("acme/pix"))
    assert isinstance(config, dict) and config["_class_name"].endswith("Scheduler"), config
    assert hanging_hub[asked:] == [] and took < 1


def test_the_pipeline_loads_before_the_sampling_bar_starts(tmp_path, monkeypatch):
    """eval's 'sample held-out prompts 0/1 (5:00)' counted the Hub's waits of the pipeline's load as
    sampling: the pipeline loads before the bar; a source whose calls are all read back loads none."""
    import contextlib

    import torch

    from compress import calib_pipeline, progress
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    events = []

    class Pipe:
        def set_progress_bar_config(self, **kwargs):
            pass

    @contextlib.contextmanager
    def bar(enabled, **kwargs):
        events.append("bar")
        yield type("Bar", (), {"add_task": lambda self, *a, **k: 0, "advance": lambda self, *a: None})()
    monkeypatch.setattr(progress, "bar", bar)
    monkeypatch.setattr(calib_pipeline, "load_pipeline_for", lambda teacher, source: events.append("load") or Pipe())
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: [{"hidden_states": torch.zeros(1, 2)}])
    calib = CalibrationConfig(source="pipeline", prompts=["a", "b"], prompts_per_call=1, sample_steps=2, timesteps=1)
    source = PipelineSource.__new__(PipelineSource)  # no checks of a real pipeline: only _run's order
    source.calib, source.pipeline, source._pipe, source.size = calib, "acme/pix", None, {}
    source.teacher = type("Teacher", (), {"dtype": torch.float32})()
    source.cache_dir, source.read_only = tmp_path / "inputs", False
    monkeypatch.setattr(PipelineSource, "guidance", lambda self: 1.0)
    source._run(["a", "b"], 0)
    assert events == ["load", "bar"]
    events.clear()
    source._pipe = None
    source._run(["a", "b"], 0)  # both calls read back
    assert events == ["bar"]


@pytest.mark.parametrize("held", [["config.json", "diffusion_pytorch_model.safetensors"], None])
def test_a_hub_calibration_pipeline_the_hub_answers_is_no_pipeline_is_said_in_one_line(tmp_path, monkeypatch, held,
                                                                                       caplog):
    """calibration.pipeline acme/pixt online, the cache holding nothing of it (plan reads the cache alone): the
    Hub's 404 Entry Not Found for its model_index.json (a transformer's repo) was "cannot load calibration pipeline
    'acme/pixt': 404 Client Error.", a repo the Hub does not hold diffusers' "Cannot load model acme/pixt: the model
    is not fully cached locally (…) … Please check out the root cause in the stacktrace above.", after diffusers'
    warning "Couldn't connect to the Hub: 404 Client Error. … Will try to load from local cache." (dropped now)."""
    from huggingface_hub import constants

    from compress.calib_pipeline import load_pipeline_for
    from compress.errors import UserError
    from tests import hub_server
    from tests.conftest import tiny_pixart

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    served = hub_server.answering_repo(monkeypatch, "acme/pixt", held)
    next(served)
    try:
        error, took = within(30, lambda: load_pipeline_for(tiny_pixart(), "acme/pixt"))
    finally:
        next(served, None)
    assert isinstance(error, UserError) and took < 10, error
    assert str(error) == "cannot load calibration pipeline 'acme/pixt': " + (
        "calibration.source 'pipeline' samples in a diffusers pipeline, and acme/pixt is a Hub repo without "
        "model_index.json (the Hugging Face Hub answered 404 Entry Not Found for it); set calibration.pipeline to "
        "the base pipeline (a Hugging Face id such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, or a pipeline "
        "folder), or calibration.source: synthetic" if held else
        "'acme/pixt' is not on the Hugging Face Hub (or is private: log in); check the id, or pass a pipeline "
        "folder as calibration.pipeline (or calibration.source: synthetic)")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("diffusers")] == []
