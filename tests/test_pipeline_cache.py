"""A Hub id given as a pipeline, checked from the Hugging Face cache before it loads without a request
to the Hub (compress.pipeline_cache): its model_index.json's family against the teacher's (calibration.pipeline)
or the output's (load_pipeline's base), offline and online; a transformer's repo, offline and online; what
refs/main's snapshot lacks (a part, a file a part reads, model_index.json: snapshot_lacks), by load_pipeline,
plan and run, with an older snapshot holding the whole pipeline."""

import shutil

import pytest

from compress import load_pipeline, save_compressed
from compress.cli import main
from compress.errors import UserError
from compress.io import load_teacher
from tests.pipelines import pipeline_folders
from tests.test_pipeline_folder import (_cached_offline, _copy, _one_error, _pipeline_recipe, _recipe,
                                        _refused_before_the_teacher_loads, _run)

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


def _refused_before_loading(tmp_path, monkeypatch, capsys, out, base: str, calibration: str):
    """load_pipeline(out, base='acme/pix') refused with `base`, and plan and run of a recipe whose
    teacher and pipeline it is with `calibration` at its line, before the teacher loads."""
    import compress.calib_pipeline as calib_pipeline
    import compress.runner_setup as runner_setup

    with pytest.raises(UserError) as e:
        load_pipeline(out, base="acme/pix")
    assert str(e.value) == f"cannot load base pipeline 'acme/pix': {base}"
    recipe = _recipe(tmp_path, "pixart", "acme/pix")
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: pytest.fail("sampled"))
    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    for command in (["plan", recipe], _run(recipe, tmp_path / "r")):
        assert main(command) == 2
        assert _one_error(capsys) == (f"dit-compress: error: {recipe}:2: cannot load calibration pipeline 'acme/pix': "
                                      f"{calibration}")


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


def test_a_cached_hub_pipeline_lacking_a_part_is_refused_as_a_folder_is(tmp_path, folders, monkeypatch, capsys):
    """`hf download acme/pix --include 'transformer/*'` leaves the tokenizer out: a Hub id read from
    the cache offline (load_pipeline's base, calibration's pipeline) was not checked as a local
    pipeline folder is; diffusers built the tokenizer from nothing. Now load_pipeline, plan and run
    name the snapshot and the hf download that fetches the part, before any sampling."""
    import compress.calib_pipeline as calib_pipeline

    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    snapshot = _cached_offline(tmp_path, monkeypatch, _copy(folders, "pixart", tmp_path, drop="tokenizer"))
    lacks = (f"the Hugging Face cache's snapshot {snapshot} of it: its model_index.json lists tokenizer (transformers "
             "T5Tokenizer), but the folder has no tokenizer/ with files in it (diffusers would build it from nothing: "
             f"a tokenizer without its vocabulary); download it online (hf download acme/pix --include 'tokenizer/*' "
             f"--revision {'0' * 40})")
    with pytest.raises(UserError) as e:
        load_pipeline(out, base="acme/pix")
    assert str(e.value) == f"cannot load base pipeline 'acme/pix': {lacks}"
    recipe = _recipe(tmp_path, "pixart", "acme/pix")
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: pytest.fail("sampled"))
    for command in (["plan", recipe], _run(recipe, tmp_path / "r")):
        assert main(command) == 2
        assert _one_error(capsys) == f"dit-compress: error: {recipe}:2: cannot load calibration pipeline 'acme/pix': {lacks}"
    shutil.copytree(folders["pixart"] / "tokenizer", snapshot / "tokenizer")
    assert type(load_pipeline(out, base="acme/pix")).__name__ == "PixArtSigmaPipeline"


@pytest.mark.parametrize(("part", "drop", "lacks", "cls"), [
    ("scheduler", "scheduler_config.json", "scheduler_config.json", "DPMSolverMultistepScheduler"),
    ("text_encoder", "config.json", "config.json", "T5EncoderModel")])
def test_a_cached_hub_pipeline_lacking_a_file_a_part_reads_is_refused_by_plan_and_run_before_the_teacher_loads(
        tmp_path, folders, monkeypatch, capsys, part, drop, lacks, cls):
    """A snapshot whose part folder lacks the file its class reads (an interrupted download) passed
    plan and the pre-run check (pipeline_snapshot.cached_problem looked at parts' folders only), and only
    the calibration pipeline's load refused it, after the teacher had loaded. Plan and run now say the
    load's line (io_hub_cache_files.missing_file) before the teacher loads."""
    import compress.calib_pipeline as calib_pipeline
    import compress.runner_setup as runner_setup

    folder = _copy(folders, "pixart", tmp_path)
    (folder / part / drop).unlink()
    (folder / part / "README.md").write_text("a file, so the part's folder is not empty")
    snapshot = _cached_offline(tmp_path, monkeypatch, folder)
    recipe = _recipe(tmp_path, "pixart", "acme/pix")
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: pytest.fail("sampled"))
    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    line = (f"dit-compress: error: {recipe}:2: cannot load calibration pipeline 'acme/pix': the Hugging Face cache's "
            f"snapshot {snapshot} of it: its {part}/ lacks {lacks}, which {cls} reads; download it online "
            f"(hf download acme/pix --include '{part}/*' --revision {'0' * 40})")
    for command in (["plan", recipe], _run(recipe, tmp_path / "r")):
        assert main(command) == 2
        assert _one_error(capsys) == line
    assert not (tmp_path / "r" / "out").exists()


@pytest.mark.parametrize("held", ["transformer", "listed"])
def test_a_cached_hub_pipeline_lacking_its_model_index_is_refused_by_plan_run_and_load_pipeline(
        tmp_path, folders, monkeypatch, capsys, held):
    """A snapshot without model_index.json: one holding transformer/ alone (what a Hub teacher's load
    fetches) ended, offline, in diffusers' "We couldn't connect to 'https://huggingface.co' to load
    this model, couldn't find it in the cached files and it looks like …/model_index.json is not the
    path to a directory containing a model_index.json file", after plan had passed it and the teacher
    had loaded; one whose commit's file list the cache holds (an interrupted snapshot_download) in
    huggingface_hub's 'The cached snapshot … is incomplete'. Now one line names it and its download."""
    import json

    from huggingface_hub import _tree_cache

    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    folder = _copy(folders, "pixart", tmp_path)
    listed = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
    for path in (folder.iterdir() if held == "transformer" else [folder / "model_index.json"]):
        if path.name != "transformer":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    snapshot = _cached_offline(tmp_path, monkeypatch, folder)
    why = (" and the cache's file list of the commit names" if held == "listed" else
           "; it holds transformer/ (which a Hub teacher's load, or hf download --include 'transformer/*', fetches alone)")
    if held == "listed":  # an online snapshot_download's list of the commit's files
        (snapshot.parent.parent / "trees").mkdir()
        (snapshot.parent.parent / "trees" / f"{'0' * 40}.json").write_text(json.dumps(
            {"format_version": 1, "files": {f: {"size": 1, "blob_id": "0" * 40} for f in listed}}))
        monkeypatch.setattr(_tree_cache, "_IN_MEMORY_TREE_CACHE", {})
    lacks = (f"the Hugging Face cache's snapshot {snapshot} of it lacks model_index.json, which diffusers reads first{why}; "
             f"download it online (hf download acme/pix model_index.json --revision {'0' * 40}), then the parts it lists "
             "that the snapshot lacks (named here once it is there)")
    _refused_before_loading(tmp_path, monkeypatch, capsys, out, lacks, lacks)
    shutil.copy(folders["pixart"] / "model_index.json", snapshot / "model_index.json")
    if held == "transformer":  # then the parts it lists are named
        with pytest.raises(UserError, match="its model_index.json lists scheduler .*, but the folder has no scheduler/, "
                                            "text_encoder/, tokenizer/, vae/ with files in it"):
            load_pipeline(out, base="acme/pix")
    else:
        assert type(load_pipeline(out, base="acme/pix")).__name__ == "PixArtSigmaPipeline"


@pytest.mark.parametrize("given", ["pipeline", "teacher"])
def test_a_cached_hub_transformer_repo_to_sample_in_is_refused_as_a_transformer_folder_is(
        tmp_path, folders, capsys, monkeypatch, given):
    """A cached Hub repo holding a transformer alone (config.json at its root, its weights), read offline,
    as calibration.pipeline (or a Hub --teacher sampled in with no calibration.pipeline) passed plan; run
    loaded the teacher, then ended in diffusers' "We couldn't connect to 'https://huggingface.co' …
    model_index.json". Plan and run now refuse it before the teacher loads, as a local transformer folder."""
    snapshot = _cached_offline(tmp_path, monkeypatch, folders["pixart"] / "transformer", "acme/pixt")
    if given == "pipeline":
        recipe, line = _pipeline_recipe(tmp_path, "pixart", folders["pixart"] / "transformer", "acme/pixt"), 5
        whose = ""
    else:
        recipe, line = _recipe(tmp_path, "pixart", "acme/pixt"), 2
        whose = "the teacher "
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:{line}: calibration.source 'pipeline' samples in a diffusers pipeline, "
        f"and {whose}acme/pixt is a transformer's repo (the Hugging Face cache's snapshot of it, read offline, holds "
        f"config.json at its root and no model_index.json: {snapshot}); set calibration.pipeline to the base pipeline "
        "(a Hugging Face id such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, or a pipeline folder), or "
        "calibration.source: synthetic")


def test_a_snapshot_of_the_transformer_alone_names_an_older_snapshot_holding_the_whole_pipeline(
        tmp_path, folders, monkeypatch, capsys):
    """A Hub teacher's load moved refs/main to a new commit and fetched its transformer/config.json
    alone; the older snapshot holding the whole pipeline went unnamed: the line advised only `hf
    download … model_index.json`. Now it names that snapshot too, to pass as calibration.pipeline
    (as load_pipeline's base)."""

    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    old = _cached_offline(tmp_path, monkeypatch, _copy(folders, "pixart", tmp_path))
    newer = old.parent / ("1" * 40)
    (newer / "transformer").mkdir(parents=True)
    shutil.copy(old / "transformer" / "config.json", newer / "transformer" / "config.json")
    (old.parent.parent / "refs" / "main").write_text(newer.name)
    lacks = (f"the Hugging Face cache's snapshot {newer} of it lacks model_index.json, which diffusers reads first; it "
             "holds transformer/ (which a Hub teacher's load, or hf download --include 'transformer/*', fetches alone); "
             f"download it online (hf download acme/pix model_index.json --revision {newer.name}), then the parts it "
             "lists that the snapshot lacks (named here once it is there); the whole pipeline, of another commit, is in "
             f"the snapshot {old} (pass a snapshot folder as {{}})")
    _refused_before_loading(tmp_path, monkeypatch, capsys, out, lacks.format("load_pipeline's base"),
                            lacks.format("calibration.pipeline"))
    assert type(load_pipeline(out, base=str(old))).__name__ == "PixArtSigmaPipeline"  # the snapshot named loads


@pytest.mark.parametrize("online", [False, True])
def test_load_pipeline_refuses_a_cached_hub_transformer_repo_as_base_naming_it(tmp_path, folders, monkeypatch, online):
    """load_pipeline(out, base=acme/pixt), a Hub repo holding a transformer alone, ended offline in diffusers'
    "We couldn't connect to 'https://huggingface.co' … model_index.json", and online asked the Hub for it. The
    cache's snapshot is read (no request) and refused as calibration.pipeline's is, saying a base is a pipeline."""
    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    snapshot = _cached_offline(tmp_path, monkeypatch, folders["pixart"] / "transformer", "acme/pixt")
    if online:
        _online(monkeypatch)
    read = "main's as last downloaded (the Hub not asked)" if online else "read offline"
    with pytest.raises(UserError) as e:
        load_pipeline(out, base="acme/pixt")
    assert str(e.value) == (
        "cannot load base pipeline 'acme/pixt': a base is a whole pipeline (model_index.json and its parts), and "
        f"acme/pixt is a transformer's repo (the Hugging Face cache's snapshot of it, {read}, holds config.json at its "
        f"root and no model_index.json: {snapshot}); pass base= the pipeline of its teacher's family (a Hugging Face id "
        "such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, a pipeline folder, or toy:NAME)")
