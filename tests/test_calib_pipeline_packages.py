"""Pipeline calibration without its packages (transformers, the caption cleaners) says what to install
before any download; hub ids resolve from a downloaded cache without network, and one not there is
a one-line error."""

import os
import subprocess
import sys

import pytest
import torch

from compress.errors import UserError
from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from tests.pipelines import RECIPE, SIZE, hub_cache, pipeline_folders
from tests.runner_helpers import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def test_hub_ids_resolve_from_a_downloaded_cache(tmp_path, folders):
    """`dit-compress run` with a hub id as the teacher, offline, from the Hugging Face cache: the
    resident loader (hf_hub_download + from_pretrained), the pipeline (DiffusionPipeline) and the
    streamed loader (snapshot_download of transformer/) all find it."""
    cache = hub_cache(tmp_path / "hub", "tiny-org/tiny-flux", folders["flux"])
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    outs = {}
    for stream in ("false", "true"):
        text = RECIPE.format(family="flux", teacher="tiny-org/tiny-flux", stream=stream, size=SIZE["flux"])
        (tmp_path / f"{stream}.yaml").write_text(text)
        outs[stream] = tmp_path / f"out-{stream}"
        done = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(tmp_path / f"{stream}.yaml"),
                               "--out", str(outs[stream]), "--run-dir", str(tmp_path / f"run-{stream}")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_transformer(outs[s]).state_dict() for s in ("false", "true"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_hub_id_is_one_line_offline(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    text = RECIPE.format(family="flux", teacher="tiny-org/not-there", stream="false", size=SIZE["flux"])
    (tmp_path / "r.yaml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(tmp_path / "r.yaml"),
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "cannot fetch 'tiny-org/not-there'" in done.stderr


def test_without_transformers_pipeline_calibration_says_what_to_install(tmp_path, folders, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    with pytest.raises(UserError, match=r"needs transformers: pip install 'dit-compress\[pipelines\]'"):
        run_recipe(tmp_path, text, "no-transformers")
    assert not (tmp_path / "out-no-transformers").exists()


def test_without_caption_cleaning_pixart_calibration_says_what_to_install(tmp_path, folders, monkeypatch):
    """Without beautifulsoup4 / ftfy PixArt-Σ's pipeline only logs a warning and samples from
    uncleaned captions, which inference would not see: an error naming them, not a silent change."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ftfy" else real(name, *a))
    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    with pytest.raises(UserError, match=r"needs ftfy: pip install 'dit-compress\[pipelines\]'"):
        run_recipe(tmp_path, text, "no-ftfy")
    flux = RECIPE.format(family="flux", teacher=str(folders["flux"]), stream="false", size=SIZE["flux"])
    from compress.inputs import check_pipeline_packages

    check_pipeline_packages(parse_recipe(flux, str(tmp_path / "f.yaml")))  # Flux's pipeline cleans nothing


@pytest.mark.parametrize("command", ["run", "importance"])
def test_without_transformers_a_hub_teacher_is_not_fetched_first(tmp_path, monkeypatch, capsys, command):
    """`run` / `importance` of a real recipe say what to install before they load (download) the
    teacher: a Hub teacher is GBs."""
    import importlib.util

    import compress.io
    from compress.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    fetched = []
    monkeypatch.setattr(compress.io, "_load_hub", lambda *a: fetched.append(a) or 1 / 0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(family="flux", teacher="tiny-org/tiny-flux", stream="false", size=""))
    extra = ["--out", str(tmp_path / "out")] if command == "run" else []
    assert main([command, str(recipe), *extra]) == 2
    assert fetched == [] and "pip install 'dit-compress[pipelines]'" in capsys.readouterr().err
    if command == "run":  # a teacher that is not there is named first
        assert main([command, str(recipe), "--teacher", str(tmp_path / "nothere"), *extra]) == 2
        assert "teacher not found" in capsys.readouterr().err
