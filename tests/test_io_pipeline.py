"""load_pipeline's base (compress.io_pipeline): the teacher an output records, followed through
outputs compressed from outputs. Other load_pipeline tests: test_io.py, test_io_output_paths.py."""

import pytest

from compress import load_pipeline, save_compressed
from compress.errors import UserError
from tests.conftest import factorize
from tests.teacher_chain_helpers import output_config


def _toy_output(folder, teacher: str):
    from compress.toy import load_toy_teacher

    model = factorize(load_toy_teacher("flux"), ["transformer_blocks.0.ff.net.2"], rank=8)
    return save_compressed(model, folder, extra={"teacher": teacher})


def test_an_output_made_from_an_output_takes_the_base_its_chain_records(tmp_path):
    """load_pipeline(d), d compressed from the output a, which was compressed from toy:flux, said a
    is not a pipeline folder and asked for base=: the chain leads to toy:flux. A loop or a missing
    link is one line naming the chain."""
    a = _toy_output(tmp_path / "a", "toy:flux")
    d = _toy_output(tmp_path / "d", str(a.resolve()))
    assert type(load_pipeline(d)).__name__ == "ToyFluxPipeline"

    output_config(a, str(d.resolve()))
    with pytest.raises(UserError) as e:
        load_pipeline(d)
    assert str(e.value) == (f"{d} records the teacher {a.resolve()}, which records {d.resolve()}, which records "
                            f"{a.resolve()}, which it named before (a loop); pass base= (a pipeline folder, a "
                            "Hugging Face id or toy:NAME)")
    output_config(a, str(tmp_path / "gone"))
    with pytest.raises(UserError, match=f"^{d} records the teacher {a.resolve()}, which records {tmp_path}/gone, "
                                        "which is not there; pass base="):
        load_pipeline(d)


def test_an_output_of_a_transformer_folder_suggests_the_pipeline_its_recipe_calibrated_in(tmp_path):
    """load_pipeline(out) of an output whose teacher was a transformer folder said only 'pass base=',
    though the output's recipe.yaml names the pipeline it calibrated in (calibration.pipeline): that
    one is suggested, for an output of an output too, and where the output records no teacher."""
    from tests.conftest import tiny_pixart

    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher")
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "out",
                          extra={"teacher": str(tmp_path / "teacher")})
    (out / "recipe.yaml").write_text("model: pixart\nteacher: t\ncalibration: {source: pipeline, pipeline: acme/pix}\n"
                                     "passes: [{svd: {targets: [mlp], rank: 2}}]\n")
    said = (f"; pass base='acme/pix', the pipeline the recipe.yaml of {out} calibrated in (or another pipeline "
            "folder, Hugging Face id or toy:NAME)")
    with pytest.raises(UserError) as e:
        load_pipeline(out)
    assert str(e.value) == (f"{out} records the teacher {tmp_path / 'teacher'}, which is not a pipeline folder "
                            f"(no model_index.json there){said}")
    d = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.0.proj"], 2), tmp_path / "d",
                        extra={"teacher": str(out.resolve())})
    with pytest.raises(UserError) as e:
        load_pipeline(d)
    assert str(e.value).endswith(said.replace(str(out), str(out.resolve()))), e.value
    e_out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "e")
    (e_out / "recipe.yaml").write_text((out / "recipe.yaml").read_text())
    with pytest.raises(UserError) as e:
        load_pipeline(e_out)
    assert str(e.value) == (f"{e_out} records no teacher to take the pipeline's other parts from"
                            f"{said.replace(str(out), str(e_out))}")


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_local_base_that_is_a_transformer_alone_is_refused_saying_a_base_is_a_pipeline(tmp_path, kind):
    """load_pipeline(out, base=a transformer folder: config.json and weights, no model_index.json) ended in
    diffusers' "Error no file named model_index.json found in directory …", base=its safetensors file in
    "… is neither a valid local path nor a valid repo id"; said as a cached Hub transformer repo is
    (test_pipeline_cache), in check_pipeline_source's words for what it is."""
    from tests.conftest import tiny_pixart

    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher")
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "out",
                          extra={"teacher": "x"})
    base = tmp_path / "teacher" / ("diffusion_pytorch_model.safetensors" if kind == "file" else "")
    what = "a single file" if kind == "file" else "a folder without model_index.json"
    with pytest.raises(UserError) as e:
        load_pipeline(out, base=str(base))
    assert str(e.value) == (
        f"cannot load base pipeline '{base}': a base is a whole pipeline (model_index.json and its parts), and "
        f"{base} is {what}; pass base= the pipeline of its teacher's family (a Hugging Face id such as "
        "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, a pipeline folder, or toy:NAME)")


def test_a_base_that_is_an_output_names_the_base_pipeline_it_records(tmp_path):
    """load_pipeline(d, base=a), a a dit-compress output (a transformer), was refused as a folder without
    model_index.json asking for 'base= the pipeline of its teacher's family (a Hugging Face id such as …)',
    though a records its base, as calibration.pipeline's refusal says (pipeline_folder_paths._base_words): that
    base is named, a toy alone, a Hub id with the other kinds of base."""
    a = _toy_output(tmp_path / "a", "toy:flux")
    d = _toy_output(tmp_path / "d", "toy:flux")
    head = (f"cannot load base pipeline '{a}': a base is a whole pipeline (model_index.json and its parts), and {a} "
            "is a folder without model_index.json (a dit-compress output: a compressed transformer); ")
    with pytest.raises(UserError) as e:
        load_pipeline(d, base=str(a))
    assert str(e.value) == f"{head}pass base='toy:flux', the base pipeline {a} records"
    output_config(a, "acme/flux-pipe")
    with pytest.raises(UserError) as e:
        load_pipeline(d, base=str(a))
    assert str(e.value) == (f"{head}pass base='acme/flux-pipe', the base pipeline {a} records (or another pipeline "
                            "of its teacher's family: a Hugging Face id such as black-forest-labs/FLUX.1-dev, a "
                            "pipeline folder, or toy:NAME)")


@pytest.mark.parametrize("offline", [False, True])
def test_a_base_or_calibration_pipeline_path_not_there_is_said_so_not_read_as_a_hub_id(
        tmp_path, monkeypatch, caplog, offline):
    """A path not there, by the rule a teacher's is told by (pipeline_folder_paths.missing_pipeline): './nonexist'
    was huggingface_hub's "Repo id must use alphanumeric chars …", '../x/y' and 'a/b/c' diffusers' "… is
    neither a valid local path nor a valid repo id", and 'nonexist' (no owner) asked the Hub: offline or
    unreachable diffusers' "Couldn't connect to the Hub … Will try to load from local cache." then "… the
    model is not fully cached locally … Please check out the root cause in the stacktrace above."."""
    import logging

    from huggingface_hub import constants

    from compress.calib_pipeline_load import load_pipeline_for
    from compress.io_output import load_transformer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    out = _toy_output(tmp_path / "out", "toy:flux")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipes").mkdir()
    said = {"./nonexist": f"{tmp_path}/nonexist", "nonexist": f"{tmp_path}/nonexist (a Hugging Face id is OWNER/NAME)",
            "../x/y": f"{tmp_path.parent}/x/y", "pipes/nope": f"{tmp_path}/pipes/nope",
            "a/b/c": f"{tmp_path}/a/b/c, and it is not a Hugging Face id: a Hugging Face id is OWNER/NAME, with one '/'"}
    for base, words in said.items():
        for what, load in (("base pipeline", lambda: load_pipeline(out, base=base)),
                           ("calibration pipeline", lambda: load_pipeline_for(load_transformer(out), base))):
            with caplog.at_level(logging.WARNING, logger="diffusers"), pytest.raises(UserError) as e:
                load()
            assert str(e.value) == f"cannot load {what} '{base}': no such folder: {words}"
    assert not [r for r in caplog.records if "connect" in r.getMessage()], caplog.records
