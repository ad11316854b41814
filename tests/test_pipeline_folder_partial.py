"""A partial pipeline folder (compress.pipeline_folder.parts_problem): a hand-written (or trimmed)
model_index.json that lists the transformer alone beside transformer/, said as what it is, by plan and
run as a teacher whose pipeline samples the calibration inputs, and by load_pipeline's base; its
transformer loads as a teacher where nothing samples in it."""

import json
import re

import pytest

from compress import load_pipeline, save_compressed
from compress.cli import main
from compress.errors import UserError
from compress.io import load_teacher
from tests.conftest import tiny_flux, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

PIPELINES = {"pixart": ("PixArtSigmaPipeline", tiny_pixart, "scheduler, vae"),
             "flux": ("FluxPipeline", tiny_flux, "scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae")}
RECIPE = """model: {family}
teacher: {teacher}
calibration: {{source: {source}, prompts: [a 3, a 7], sample_steps: 2, timesteps: 2, batch_size: 4, heldout: 2}}
passes:
  - svd: {{targets: [attention], ratio: 0.5, multiple: 2, progress: false}}
"""


def _partial(tmp_path, family: str):
    """A folder of the tiny `family` transformer in transformer/ and a model_index.json listing it alone."""
    cls, tiny, _ = PIPELINES[family]
    folder = tmp_path / "partial"
    model = tiny()
    model.save_pretrained(folder / "transformer")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": cls, "_diffusers_version": "0.42.1", "transformer": ["diffusers", type(model).__name__]}))
    return folder


def _one_error(capsys) -> str:
    """The one error line, its command left out ('dit-compress plan: error: X' as 'dit-compress: error: X'): plan's
    and run's are the same but for it."""
    lines = [re.sub(r"^dit-compress \w+: ", "dit-compress: ", s) for s in capsys.readouterr().err.splitlines()
             if re.match(r"dit-compress \w+: error: ", s)]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_teacher_folder_listing_its_transformer_alone_is_said_to_be_a_partial_pipeline(tmp_path, family, capsys):
    """plan and run --teacher of a folder whose hand-written model_index.json lists transformer alone (as a
    calibration pipeline: source auto or pipeline) said 'its model_index.json names PixArtSigmaPipeline, which
    needs scheduler, vae, and lists transformer (a pipeline of another class, or a _class_name edited?)': the
    class was right, the folder partial. Now it says so, with the ways out (the parts, another pipeline to
    sample in, or a synthetic source); under a synthetic source the transformer loads from it."""
    folder = _partial(tmp_path, family)
    cls, _, needs = PIPELINES[family]
    recipe = tmp_path / "r.yaml"
    for source in ("auto", "pipeline"):
        recipe.write_text(RECIPE.format(family=family, teacher=f"toy:{family}", source=source))
        for command in (["plan", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "out")]):
            assert main([*command, "--teacher", str(folder)]) == 2
            assert _one_error(capsys) == (
                f"dit-compress: error: cannot load calibration pipeline '{folder}': its model_index.json lists "
                f"transformer alone, and a {cls} also needs {needs} to sample (a partial pipeline folder): copy them "
                "from the pipeline the folder came from, with their model_index.json entries; or set "
                "calibration.pipeline to a whole pipeline of the teacher's family, or calibration.source: synthetic "
                "(the teacher's transformer/ loads from this folder either way)")
    assert not (tmp_path / "out").exists()
    recipe.write_text(RECIPE.format(family=family, teacher=folder, source="synthetic"))
    assert main(["plan", str(recipe)]) == 0
    assert type(load_teacher(str(folder))).__name__ == f"{'PixArt' if family == 'pixart' else 'Flux'}Transformer2DModel"


def test_a_partial_base_pipeline_is_said_to_be_partial(tmp_path):
    """load_pipeline(out, base=FOLDER) of such a folder: the same words, without a recipe's ways out."""
    folder = _partial(tmp_path, "pixart")
    out = save_compressed(tiny_pixart(), tmp_path / "out", extra={"teacher": "x"})
    with pytest.raises(UserError) as e:
        load_pipeline(out, base=str(folder))
    assert str(e.value) == (f"cannot load base pipeline '{folder}': its model_index.json lists transformer alone, and a "
                            "PixArtSigmaPipeline also needs scheduler, vae to sample (a partial pipeline folder): copy "
                            "them from the pipeline the folder came from, with their model_index.json entries")
