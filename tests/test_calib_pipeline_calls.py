"""A pipeline source's sampled inputs on disk (compress/calib_pipeline.py): what their cache is keyed by
(the prompts read, the pipeline's parts), each sampling call's file named by the pipeline's absolute
path, a call on a full disk, the call files a source names as its own."""

import pytest

from compress.io import load_teacher
from tests.pipelines import pipeline_folders

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def test_the_inputs_identity_holds_the_prompts_read_and_the_pipelines_parts(tmp_path, folders):
    """What the caches are keyed by besides the recipe: the lines a prompt_file holds (its path is
    all the recipe holds) and the pipeline's parts but the transformer (the inputs cache's folder too);
    a toy pipeline has no parts of its own to read."""
    import json
    import shutil

    from compress.calib_pipeline import PipelineSource, inputs_cache_name
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", heldout=None)
    toy = PipelineSource("pixart", calib, None, "toy:pixart", tmp_path).inputs_identity()
    (tmp_path / "p.txt").write_text("a cat\na cow\n")
    edited = PipelineSource("pixart", calib, None, "toy:pixart", tmp_path).inputs_identity()
    assert toy["pipeline"] is None and edited["pipeline"] is None and toy["prompts"] != edited["prompts"]
    pipe = shutil.copytree(folders["pixart"], tmp_path / "pipe")
    before = PipelineSource("pixart", calib, None, str(pipe), tmp_path).inputs_identity()
    config = pipe / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), use_karras_sigmas=True)))
    after = PipelineSource("pixart", calib, None, str(pipe), tmp_path).inputs_identity()
    assert before["prompts"] == after["prompts"] and before["pipeline"] != after["pipeline"]
    assert "transformer/config.json" not in before["pipeline"] and "vae/config.json" in before["pipeline"]
    names = {inputs_cache_name(str(pipe), "w", parts) for parts in (None, before["pipeline"], after["pipeline"])}
    assert len(names) == 3 and inputs_cache_name(str(pipe), "w") in names


def test_a_sampling_calls_cache_file_names_a_local_pipeline_by_its_absolute_path(tmp_path, folders, monkeypatch):
    """The run folder's sampled-inputs folder keys the teacher as report.json records it (absolute),
    but each call's file was named with the teacher as typed: `pipe` then `pipe/` (or eval's absolute
    path) sampled every call again into the same folder."""
    import shutil

    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    shutil.copytree(folders["pixart"], tmp_path / "pipe")
    monkeypatch.chdir(tmp_path)
    calib = CalibrationConfig(source="pipeline", prompts=["a cat"], heldout=None)
    teacher = load_teacher(str(folders["pixart"] / "transformer"))
    names = set()
    for spelling in ("pipe", "pipe/", "./pipe", str(tmp_path / "pipe")):
        source = PipelineSource("pixart", calib, teacher, spelling)
        source.cache_dir = tmp_path / "inputs"
        names.add(source._cached(["a cat"], 0))
    assert len(names) == 1
    source = PipelineSource("pixart", calib, teacher, str(shutil.copytree(tmp_path / "pipe", tmp_path / "other")))
    source.cache_dir = tmp_path / "inputs"
    assert source._cached(["a cat"], 0) not in names


def test_a_sampling_call_on_a_full_disk_is_enospc_naming_its_file_and_leaves_no_half_file(tmp_path, folders,
                                                                                          monkeypatch):
    """torch's zip writer says 'unexpected pos' when the disk fills: a traceback, where the run's one-line
    disk-full error reads ENOSPC; the half-written .tmp file stayed in the inputs folder."""
    import errno

    import compress.calib_store as store
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    def cut_short(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    teacher = load_teacher(str(folders["pixart"] / "transformer"))
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], heldout=1, prompts_per_call=2,
                              sample_steps=2, timesteps=2)
    source = PipelineSource("pixart", calib, teacher, str(folders["pixart"]))
    source.cache_dir = tmp_path / "inputs"
    monkeypatch.setattr(store.torch, "save", cut_short)
    monkeypatch.setattr(store, "disk_is_full", lambda folder: True)
    with pytest.raises(OSError) as caught:
        source.calibration()
    assert caught.value.errno == errno.ENOSPC and ".tmp-" in caught.value.filename
    assert list((tmp_path / "inputs").iterdir()) == []


def test_the_call_files_are_those_sampling_writes_and_those_of_other_prompts_are_not(tmp_path, folders):
    """The Ctrl-C note counted every call file in the inputs folder as kept for a rerun, also those of
    prompts an earlier run read, which the rerun does not read: call_files names this source's calls."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    teacher = load_teacher(str(folders["pixart"] / "transformer"))

    def source(prompts):
        calib = CalibrationConfig(source="pipeline", prompts=prompts, heldout=1, prompts_per_call=2,
                                  sample_steps=2, timesteps=2)
        s = PipelineSource("pixart", calib, teacher, str(folders["pixart"]))
        s.cache_dir = tmp_path / "inputs"
        return s

    first = source(["a cat", "a dog", "a cow", "a fox"])
    assert not any(p.is_file() for p in first.call_files())
    first.calibration(), first.heldout()
    written = set((tmp_path / "inputs").glob("*.pt"))
    assert set(first.call_files()) == written and len(written) == 3  # 3 calibration prompts in 2 calls, 1 held out
    edited = source(["a cat", "a dog", "a hen", "a fox"])
    kept = first.call_files()  # [a cat, a dog], [a cow], held out [a fox]
    assert set(edited.call_files()) & written == {kept[0], kept[2]}  # [a cow] became [a hen]: sampled anew
