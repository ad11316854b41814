"""Pipeline folders checked before they load (compress.pipeline_folder): a part model_index.json lists
that the folder lacks, a model_index.json of another class or none, by plan as by run and by
load_pipeline's base; a calibration.pipeline not there or of another family; a cached Hub pipeline whose
main moved on (the cache's snapshots: tests/test_pipeline_cache.py); failures of the calibration pipeline
outside the transformer; and the tiny pipelines of tests/pipelines.py themselves (their tokenizers tell
prompts apart)."""

import re
import shutil

import pytest
import torch

from compress import load_pipeline, save_compressed
from compress.cli import main
from compress.errors import UserError
from compress.io import load_teacher
from tests.pipelines import RECIPE, SIZE, pipeline_folders

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def _copy(folders, family: str, tmp_path, drop: str = ""):
    """A copy of the tiny `family` pipeline folder without its part `drop`."""
    folder = tmp_path / f"{family}-copy"
    shutil.copytree(folders[family], folder)
    if drop:
        shutil.rmtree(folder / drop)
    return folder


def _recipe(tmp_path, family: str, teacher) -> str:
    text = RECIPE.replace("{teacher}", str(teacher)).replace("{family}", family).replace("{size}", SIZE[family])
    path = tmp_path / "r.yaml"
    path.write_text(text.format(stream="false"))
    return str(path)


def _run(recipe: str, tmp_path) -> list[str]:
    return ["run", recipe, "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]


def _one_error(capsys) -> str:
    """The one error line, its command left out ('dit-compress plan: error: X' as 'dit-compress: error: X'): plan's
    and run's are the same but for it."""
    lines = [re.sub(r"^dit-compress \w+: ", "dit-compress: ", s) for s in capsys.readouterr().err.splitlines()
             if re.match(r"dit-compress \w+: error: ", s)]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(("family", "part", "cls"), [("pixart", "tokenizer", "T5Tokenizer"),
                                                      ("flux", "tokenizer", "CLIPTokenizer"),
                                                      ("flux", "text_encoder_2", "T5EncoderModel")])
def test_a_part_the_pipeline_folder_lacks_is_one_line_by_plan_and_run_before_sampling(
        tmp_path, folders, family, part, cls, monkeypatch, capsys):
    """A pipeline folder whose model_index.json lists a part it lacks loaded anyway: diffusers and
    transformers built a tokenizer without a vocabulary (PixArt calibrated on meaningless ids, Flux's
    CLIP tokenizer failed with an OverflowError traceback). Plan and run say so in one line at the
    recipe's teacher:, before any sampling."""
    import compress.calib_pipeline as calib_pipeline

    folder = _copy(folders, family, tmp_path, drop=part)
    recipe = _recipe(tmp_path, family, folder)
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: pytest.fail("sampled"))
    for command in (["plan", recipe], _run(recipe, tmp_path)):
        assert main(command) == 2
        error = _one_error(capsys)
        assert error.startswith(f"dit-compress: error: {recipe}:2: cannot load calibration pipeline '{folder}': "
                                f"its model_index.json lists {part} (transformers {cls}), but the folder has no "
                                f"{part}/ with files in it"), error
    assert not (tmp_path / "out").exists()


def test_load_pipeline_refuses_a_base_folder_lacking_a_part(tmp_path, folders):
    """load_pipeline(out, base=FOLDER) loaded a base folder without its tokenizer, the tokenizer
    diffusers built having no vocabulary."""
    out = save_compressed(load_teacher(str(folders["pixart"])), tmp_path / "out", extra={"teacher": "x"})
    folder = _copy(folders, "pixart", tmp_path, drop="tokenizer")
    with pytest.raises(UserError, match=f"^cannot load base pipeline '{folder}': its model_index.json lists "
                                        "tokenizer \\(transformers T5Tokenizer\\), but the folder has no "
                                        "tokenizer/ with files in it"):
        load_pipeline(out, base=str(folder))
    (folder / "tokenizer").mkdir()  # empty: lacking all the same
    with pytest.raises(UserError, match="no tokenizer/ with files in it"):
        load_pipeline(out, base=str(folder))
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(folders["pixart"] / "tokenizer", folder / "tokenizer")
    assert type(load_pipeline(out, base=str(folder))).__name__ == "PixArtSigmaPipeline"


def test_plan_says_what_run_says_of_a_teacher_pipeline_of_another_class(tmp_path, folders, capsys):
    """A teacher folder whose model_index.json names another pipeline class (or none diffusers has)
    passed plan; run refused it in one line as the pipeline loaded, after the teacher had loaded."""
    import json

    other = tmp_path / "other"
    shutil.copytree(folders["pixart"], other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    recipe = _recipe(tmp_path, "pixart", other)
    for command in (["plan", recipe], _run(recipe, tmp_path)):
        assert main(command) == 2
        assert _one_error(capsys) == (f"dit-compress: error: {recipe}:2: cannot load calibration pipeline "
                                      f"'{other}': its model_index.json names FluxPipeline, which needs "
                                      "text_encoder_2, tokenizer_2, and lists scheduler, text_encoder, tokenizer, "
                                      "transformer, vae (a pipeline of another class, or a _class_name edited?)")
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    assert main(["plan", recipe]) == 2
    assert "its model_index.json names 'NoSuchPipeline', which is no pipeline class of diffusers" in \
        _one_error(capsys)


def test_a_pipeline_failure_outside_the_transformer_names_the_pipeline(folders):
    """An error inside diffusers' encode_prompt (Flux's CLIP tokenizer without a vocabulary: an
    OverflowError) escaped as a traceback; one inside the transformer stays as it is."""
    from compress.calib_pipeline import capture, load_pipeline_for

    teacher = load_teacher(str(folders["flux"]))
    pipe = load_pipeline_for(teacher, str(folders["flux"]))

    def broken(*args, **kwargs):
        raise OverflowError("int too big to convert")

    pipe._get_clip_prompt_embeds = broken  # as its CLIP tokenizer without a vocabulary failed
    with pytest.raises(UserError, match=f"^the calibration pipeline {folders['flux']} \\(FluxPipeline\\) failed "
                                        "outside the transformer while sampling \\['a cat'\\]: OverflowError: int "
                                        "too big to convert; check its tokenizers"):
        capture(pipe, teacher, ["a cat"], steps=2, keep=1, guidance=3.5, seed=0, size={"height": 32, "width": 32},
                source=str(folders["flux"]))

    def failing(module, args, kwargs):
        raise RuntimeError("inside the transformer")

    del pipe._get_clip_prompt_embeds
    handle = teacher.transformer_blocks[0].register_forward_pre_hook(failing, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="^inside the transformer$"):
            capture(pipe, teacher, ["a cat"], steps=2, keep=1, guidance=3.5, seed=0,
                    size={"height": 32, "width": 32}, source=str(folders["flux"]))
    finally:
        handle.remove()


@pytest.mark.parametrize(("family", "part"), [("pixart", "tokenizer"), ("flux", "tokenizer"), ("flux", "tokenizer_2")])
def test_the_tiny_pipelines_tokenizers_tell_prompts_apart(folders, family, part):
    """tests/pipelines.py's T5 tokenizers had 4 tokens under transformers 5 (vocab_file ignored): every
    word was [3, 2], prompts differed only in length. Saved and read back, as the pipelines load them,
    two prompts of as many words are different ids, and no word is the unknown id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders[family] / part)
    cat, car = (tokenizer(p).input_ids for p in ("a photo of a cat", "a red car on a"))
    assert cat != car and len(set(cat)) > 4
    assert tokenizer.unk_token_id not in cat[:-1] + car[:-1]  # (the last: the end of text, CLIP's unknown too)


def test_the_tiny_flux_pipeline_decodes_images(folders):
    """Its VAE had no shift_factor: FluxPipeline(output_type='np') failed decoding."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folders["flux"])
    image = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_a_core_install_plans_a_local_pipeline_folder(tmp_path, folders, monkeypatch, capsys):
    """Without transformers diffusers holds PixArtSigmaPipeline as a placeholder (DummyObject): its
    parts cannot be checked, and plan (which a core install runs) says nothing of its class."""
    import importlib.util

    import diffusers
    from diffusers.utils import dummy_torch_and_transformers_objects as dummies

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    monkeypatch.setattr(diffusers, "PixArtSigmaPipeline", dummies.PixArtSigmaPipeline)
    assert main(["plan", _recipe(tmp_path, "pixart", folders["pixart"])]) == 0
    assert "total parameters" in capsys.readouterr().out


BARE = """\
model: pixart
teacher: {teacher}
{calibration}passes:
  - svd: {{targets: [mlp], ratio: 0.5, progress: false}}
"""


AUTO = " (source auto is pipeline for a teacher that is not toy:)"
OUT_WAYS = ("set calibration.pipeline to the base pipeline (a Hugging Face id such as "
            "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, or a pipeline folder), or calibration.source: synthetic")


PROMPTS = "calibration: {prompts: [a cat, a dog]}\n"


@pytest.mark.parametrize(("calibration", "flag"), [(PROMPTS, False), (PROMPTS, True),
                                                   ("calibration: {source: pipeline, prompts: [a cat, a dog]}\n", False)])
def test_plan_refuses_a_bare_transformer_teacher_under_source_auto_as_run_does(tmp_path, capsys, calibration,
                                                                              flag):
    """A teacher folder without model_index.json under calibration.source auto (pipeline for a
    real teacher) passed plan; run refused it (no pipeline to sample real prompts in). Both say the
    same line at the recipe's teacher:, run before the teacher loads; source synthetic plans. The
    line said 'calibration.source pipeline' under source auto too, offered calibration.pipeline
    alone, and did not say a --teacher gave the teacher: now it says auto as calib_prompts does,
    offers the synthetic source, and names --teacher as the model-mismatch error does."""
    from tests.conftest import tiny_pixart

    folder = tmp_path / "bare"
    tiny_pixart().save_pretrained(folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BARE.format(teacher="toy:pixart" if flag else folder, calibration=calibration))
    given = ["--teacher", str(folder)] if flag else []
    errors = []
    for command in (["plan", str(recipe)], _run(str(recipe), tmp_path)):
        assert main(command + given) == 2
        errors.append(_one_error(capsys))
    where, auto = ("", AUTO) if flag else (f"{recipe}:2: ", "" if "pipeline" in calibration else AUTO)
    assert errors[0] == errors[1] == (
        f"dit-compress: error: {where}calibration.source 'pipeline'{auto} samples in a diffusers pipeline, and the "
        f"teacher {folder}{' (--teacher)' if flag else ''} is a folder without model_index.json; {OUT_WAYS}")
    assert not (tmp_path / "out").exists()
    recipe.write_text(BARE.format(teacher=folder, calibration="calibration: {source: synthetic}\n"))
    assert main(["plan", str(recipe)]) == 0
    assert "total parameters" in capsys.readouterr().out


def _cached_offline(tmp_path, monkeypatch, folder, repo_id: str = "acme/pix"):
    """`folder` as the Hugging Face cache's snapshot of `repo_id`, HF_HUB_OFFLINE set."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    hub_cache(tmp_path / "hub", repo_id, folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)


@pytest.mark.parametrize(("drop", "aside"), [
    (["scheduler"], "diffusers would stop loading it on a file it reads"),
    (["tokenizer"], "diffusers would build it from nothing: a tokenizer without its vocabulary"),
    (["scheduler", "tokenizer"], "diffusers would build tokenizer from nothing: a tokenizer without its vocabulary, "
                                 "and stop loading scheduler on a file it reads")])
def test_the_aside_on_a_lacking_part_fits_the_part(tmp_path, folders, drop, aside):
    """An empty scheduler/ was said with the tokenizer's aside '(diffusers would build it from nothing: a
    tokenizer without its vocabulary)': diffusers builds only a tokenizer from nothing; a scheduler's
    load stops on its scheduler_config.json."""
    from compress.pipeline_folder import folder_index, index_problem

    folder = _copy(folders, "pixart", tmp_path)
    for part in drop:
        shutil.rmtree(folder / part)
        (folder / part).mkdir()
    assert f"with files in it ({aside}); copy " in index_problem(str(folder), folder_index(str(folder)))


PIPELINE_RECIPE = """\
model: {family}
teacher: {teacher}
calibration:
  source: pipeline
  pipeline: {pipeline}
  prompts: [a photo of a cat, a red car, a horse, a fox, a dog]
  sample_steps: 3
  timesteps: 2
  batch_size: 4
  heldout: 4
passes:
  - svd: {{targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 2, progress: false}}
"""


def _pipeline_recipe(folder, family: str, teacher, pipeline) -> str:
    path = folder / "r.yaml"
    path.write_text(PIPELINE_RECIPE.format(family=family, teacher=teacher, pipeline=pipeline))
    return str(path)


def _refused_before_the_teacher_loads(recipe: str, tmp_path, capsys, monkeypatch) -> str:
    """The one error line plan and run give for `recipe` (the same), the teacher not loaded."""
    import compress.runner_setup as runner_setup

    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    lines = []
    for command in (["plan", recipe], _run(recipe, tmp_path / "r")):
        assert main(command) == 2
        lines.append(_one_error(capsys))
    assert lines[0] == lines[1]
    assert not (tmp_path / "r" / "out").exists()
    return lines[0]


@pytest.mark.parametrize("given", ["absolute", "dot", "folder-here", "no-id"])
def test_a_calibration_pipeline_path_not_there_is_refused_at_its_line_before_the_teacher_loads(
        tmp_path, folders, capsys, monkeypatch, given):
    """calibration.pipeline naming a local path that is not there passed plan; run loaded the teacher,
    then printed diffusers' '... is neither a valid local path nor a valid repo id', no file:line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipes").mkdir()  # pipes/nope: its first part a folder here, so a path, not a Hub id
    pipeline = {"absolute": str(tmp_path / "nope"), "dot": "./nope", "folder-here": "pipes/nope", "no-id": "a/b/c"}[given]
    teacher = folders["pixart"] / "transformer"
    recipe = _pipeline_recipe(tmp_path, "pixart", teacher, pipeline)
    rule = "" if given == "absolute" else (" (a relative calibration.pipeline is taken from the current folder, "
                                           "as teacher: is)")
    looked = tmp_path / ("pipes/nope" if given == "folder-here" else "nope")
    if given == "no-id":  # a/b/c: no Hugging Face id either (was: passed plan, diffusers' "… nor a valid repo id")
        looked = f"{tmp_path / 'a/b/c'}, and it is not a Hugging Face id: a Hugging Face id is OWNER/NAME, with one '/'"
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: calibration.pipeline {pipeline} not found: {looked}{rule}")


def test_a_relative_calibration_pipeline_beside_the_recipe_is_named_when_the_current_folder_lacks_it(
        tmp_path, folders, capsys, monkeypatch):
    """A relative calibration.pipeline is taken from the current folder (as teacher: is), not the
    recipe's as prompt_file is: where the recipe's folder holds it, the error names that path."""
    recipes = tmp_path / "recipes"
    shutil.copytree(folders["pixart"], recipes / "pipe")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = _pipeline_recipe(recipes, "pixart", folders["pixart"] / "transformer", "./pipe")
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: calibration.pipeline ./pipe not found: {elsewhere / 'pipe'} (a relative "
        f"calibration.pipeline is taken from the current folder, as teacher: is, not the recipe's; there is "
        f"{recipes / 'pipe'}: give that path)")
    monkeypatch.chdir(recipes)  # from the recipe's folder it is there
    assert main(["plan", recipe]) == 0


def test_a_calibration_pipeline_of_another_family_is_refused_naming_both_before_the_teacher_loads(
        tmp_path, folders, capsys, monkeypatch):
    """--teacher pipes/pixart/pipe/transformer with calibration.pipeline=pipes/flux/pipe failed while
    sampling, inside diffusers ('FrozenDict' object has no attribute 'guidance_embeds'; check its
    tokenizers): plan and run now refuse it at the key's line, naming both classes; load_pipeline_for
    (the teacher loaded) too, before any sampling."""
    from compress.calib_pipeline_load import load_pipeline_for

    recipe = _pipeline_recipe(tmp_path, "pixart", folders["pixart"] / "transformer", folders["flux"])
    assert _refused_before_the_teacher_loads(recipe, tmp_path, capsys, monkeypatch) == (
        f"dit-compress: error: {recipe}:5: cannot load calibration pipeline '{folders['flux']}': its model_index.json's "
        f"transformer is a FluxTransformer2DModel, and the teacher {folders['pixart'] / 'transformer'} is a "
        "PixArtTransformer2DModel (pixart); set calibration.pipeline to a pipeline of the teacher's family")
    with pytest.raises(UserError) as e:
        load_pipeline_for(load_teacher(str(folders["pixart"] / "transformer")), str(folders["flux"]))
    assert str(e.value) == (f"cannot load calibration pipeline '{folders['flux']}': its model_index.json's transformer "
                            "is a FluxTransformer2DModel, and the teacher is a PixArtTransformer2DModel; set "
                            "calibration.pipeline to a pipeline of the teacher's family")


@pytest.mark.parametrize("empty_snapshot", [False, True])
def test_a_cached_hub_pipeline_whose_main_moved_on_is_refused_by_plan_and_run_before_the_teacher_loads(
        tmp_path, folders, monkeypatch, capsys, empty_snapshot):
    """refs/main naming a commit the cache holds no snapshot of (the Hub answered that main moved on)
    passed plan and the pre-run check (cached_problem took the missing snapshot for no copy at all),
    and run refused it only once the teacher had loaded, without the recipe's line. Plan and run now
    say io_hub_pipeline's moved-main line (io_hub_cache.moved_main) at calibration.pipeline's line first."""
    import compress.calib_pipeline as calib_pipeline
    import compress.runner_setup as runner_setup

    snapshot = _cached_offline(tmp_path, monkeypatch, _copy(folders, "pixart", tmp_path))
    newer = "1" * 40
    (snapshot.parent.parent / "refs" / "main").write_text(newer)
    if empty_snapshot:  # hf_hub_download's HEAD made it before its GET failed
        (snapshot.parent / newer / "transformer").mkdir(parents=True)
    recipe = _recipe(tmp_path, "pixart", snapshot)
    text = open(recipe).read().replace("{source: pipeline,", "{source: pipeline, pipeline: acme/pix,")
    open(recipe, "w").write(text)
    monkeypatch.setattr(calib_pipeline, "capture", lambda *a, **k: pytest.fail("sampled"))
    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    line = (f"dit-compress: error: {recipe}:4: cannot load calibration pipeline 'acme/pix': offline (HF_HUB_OFFLINE), "
            f"the Hugging Face cache {tmp_path / 'hub'} (HF_HUB_CACHE, else HF_HOME/hub) holds no snapshot of main's "
            f"commit {newer}, which its refs/main names, only the snapshot {snapshot} (pass a snapshot folder as "
            "calibration.pipeline); offline (HF_HUB_OFFLINE=1) reads refs/main's commit too, as huggingface_hub does; "
            "fetch it once online, or pass a local pipeline folder")
    for command in (["plan", recipe], _run(recipe, tmp_path / "r")):
        assert main(command) == 2
        assert _one_error(capsys) == line
    assert not (tmp_path / "r" / "out").exists()
