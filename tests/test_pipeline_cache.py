"""A Hub id given as a pipeline, checked from the Hugging Face cache before it loads without a request
to the Hub (compress.pipeline_cache): its model_index.json's family against the teacher's, offline and
online; a transformer's repo online; refs/main's snapshot downloaded in part beside an older whole one."""

import shutil

import pytest

from tests.pipelines import pipeline_folders
from tests.test_pipeline_folder import (_cached_offline, _copy, _pipeline_recipe, _refused_before_loading,
                                        _refused_before_the_teacher_loads)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def _online(monkeypatch):
    """HF_HUB_OFFLINE unset, and any request to the Hub a test failure."""
    import huggingface_hub
    from huggingface_hub import constants

    import compress.io_hub_requests as io_hub_requests

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(io_hub_requests, "head_request", lambda *a, **k: pytest.fail("asked the Hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("asked the Hub"))


@pytest.mark.parametrize("online", [False, True])
def test_a_cached_hub_calibration_pipeline_of_another_family_is_refused_naming_both_before_the_teacher_loads(
        tmp_path, folders, capsys, monkeypatch, online):
    """calibration.pipeline: acme/flux (a Flux pipeline the cache holds) for a PixArt teacher passed plan
    and the pre-run check (the family check read local folders only) and failed while sampling, inside
    diffusers. The cache's model_index.json is read, offline or online, without asking the Hub."""
    snapshot = _cached_offline(tmp_path, monkeypatch, folders["flux"], "acme/flux")
    if online:
        _online(monkeypatch)
    teacher = folders["pixart"] / "transformer"
    recipe = _pipeline_recipe(tmp_path, "pixart", teacher, "acme/flux")
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: cannot load calibration pipeline 'acme/flux': the Hugging Face cache's "
        f"snapshot {snapshot} of it: its model_index.json's transformer is a FluxTransformer2DModel, and the teacher "
        f"{teacher} is a PixArtTransformer2DModel (pixart); set calibration.pipeline to a pipeline of the teacher's "
        "family")


def test_a_hub_pipeline_the_cache_lacks_is_not_checked_and_nothing_is_asked(tmp_path, folders, monkeypatch):
    """Where the cache holds no copy of a Hub id there is nothing to read: no check, no request; nor
    where its model_index.json cannot be read online (the Hub may serve another)."""
    from compress.pipeline_cache import cached_index, cached_transformer_repo

    snapshot = _cached_offline(tmp_path, monkeypatch, folders["flux"], "acme/flux")
    _online(monkeypatch)
    assert cached_index("acme/other") is None and cached_transformer_repo("acme/other") is None
    assert cached_index("acme/flux")[1]["_class_name"] == "FluxPipeline"
    (snapshot / "model_index.json").write_text("[]")
    assert cached_index("acme/flux") is None


def test_a_cached_hub_transformer_repo_to_sample_in_is_refused_online_too(tmp_path, folders, capsys, monkeypatch):
    """A cached Hub repo holding a transformer alone, as calibration.pipeline, was refused offline only:
    online run loaded the teacher, then ended in diffusers' 404 for model_index.json. The cache's
    snapshot is read online too, without a request."""
    snapshot = _cached_offline(tmp_path, monkeypatch, folders["pixart"] / "transformer", "acme/pixt")
    _online(monkeypatch)
    recipe = _pipeline_recipe(tmp_path, "pixart", folders["pixart"] / "transformer", "acme/pixt")
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: calibration.source 'pipeline' samples in a diffusers pipeline, and "
        "acme/pixt is a transformer's repo (the Hugging Face cache's snapshot of it, main's as last downloaded (the "
        f"Hub not asked), holds config.json at its root and no model_index.json: {snapshot}); set calibration.pipeline "
        "to the base pipeline (a Hugging Face id such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, or a pipeline "
        "folder), or calibration.source: synthetic")


def test_a_cached_transformer_repo_whose_file_list_names_model_index_is_no_transformer_repo(
        tmp_path, folders, monkeypatch):
    """The cache's file list of the commit naming model_index.json (an interrupted snapshot_download of
    a pipeline holding config.json at its root) is a pipeline's: not refused as a transformer's repo."""
    import json

    from huggingface_hub import _tree_cache

    from compress.pipeline_cache import cached_transformer_repo

    snapshot = _cached_offline(tmp_path, monkeypatch, folders["pixart"] / "transformer", "acme/pixt")
    _online(monkeypatch)
    assert cached_transformer_repo("acme/pixt") == snapshot
    (snapshot.parent.parent / "trees").mkdir()
    (snapshot.parent.parent / "trees" / f"{snapshot.name}.json").write_text(json.dumps(
        {"format_version": 1, "files": {f: {"size": 1, "blob_id": "0" * 40} for f in ("config.json", "model_index.json")}}))
    monkeypatch.setattr(_tree_cache, "_IN_MEMORY_TREE_CACHE", {})
    assert cached_transformer_repo("acme/pixt") is None


@pytest.mark.parametrize("lacking", ["part", "file"])
def test_main_downloaded_in_part_names_an_older_snapshot_holding_the_whole_pipeline(
        tmp_path, folders, monkeypatch, capsys, lacking):
    """main moved on to a commit downloaded in part (a part, or a file a part reads): the line named
    what it lacks and its hf download, not the older snapshot the cache holds of the whole pipeline,
    which loads passed as a folder. Now it names that one too, as where model_index.json is lacking."""
    from compress import load_pipeline, save_compressed
    from compress.io import load_teacher

    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    old = _cached_offline(tmp_path, monkeypatch, _copy(folders, "pixart", tmp_path))
    newer = old.parent / ("1" * 40)
    shutil.copytree(old, newer)
    (old.parent.parent / "refs" / "main").write_text(newer.name)
    if lacking == "part":
        shutil.rmtree(newer / "tokenizer")
        lacks = (f"the Hugging Face cache's snapshot {newer} of it: its model_index.json lists tokenizer (transformers "
                 "T5Tokenizer), but the folder has no tokenizer/ with files in it (diffusers would build it from "
                 "nothing: a tokenizer without its vocabulary); download it online (hf download acme/pix --include "
                 f"'tokenizer/*' --revision {newer.name})")
    else:
        (newer / "scheduler" / "scheduler_config.json").unlink()
        (newer / "scheduler" / "README.md").write_text("a file, so the part's folder is not empty")
        lacks = (f"the Hugging Face cache's snapshot {newer} of it: its scheduler/ lacks scheduler_config.json, which "
                 "DPMSolverMultistepScheduler reads; download it online (hf download acme/pix --include 'scheduler/*' "
                 f"--revision {newer.name})")
    lacks += f"; the whole pipeline, of another commit, is in the snapshot {old} (pass a snapshot folder as {{}})"
    _refused_before_loading(tmp_path, monkeypatch, capsys, out, lacks.format("load_pipeline's base"),
                            lacks.format("calibration.pipeline"))
    assert type(load_pipeline(out, base=str(old))).__name__ == "PixArtSigmaPipeline"  # the snapshot named loads


@pytest.mark.parametrize(("where", "drop"), [("offline", "transformer"), ("offline", "tokenizer"), ("online", ""),
                                             ("folder", "transformer")])
def test_load_pipeline_refuses_a_base_of_another_family_from_its_model_index_before_it_loads(
        tmp_path, folders, monkeypatch, where, drop):
    """load_pipeline(PIXART_OUT, base=acme/flux) checked the base's transformer config alone: a base
    downloaded without transformer/ (load_pipeline passes it; a local folder too) loaded a FluxPipeline
    around the PixArt transformer (diffusers only logged the class), one lacking its tokenizer asked for
    its download, and online the Hub was asked first. Its model_index.json (a Hub id's as the cache
    holds it, no request) now refuses it before anything loads."""
    from compress import load_pipeline, save_compressed
    from compress.errors import UserError
    from compress.io import load_teacher

    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    folder = _copy(folders, "flux", tmp_path)
    if drop:
        shutil.rmtree(folder / drop)
    base, held = str(folder), ""
    if where != "folder":
        base = "acme/flux"
        snapshot = _cached_offline(tmp_path, monkeypatch, folder, base)
        held = f" (its model_index.json in the Hugging Face cache's snapshot {snapshot} of it)"
    if where == "online":
        _online(monkeypatch)
    with pytest.raises(UserError) as e:
        load_pipeline(out, base=base)
    assert str(e.value) == (f"base pipeline {base} holds a FluxTransformer2DModel{held}; the compressed transformer is "
                            "a PixArtTransformer2DModel: pass a base of its family")
