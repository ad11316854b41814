"""Which inputs a run calibrates on (compress.inputs): the calibration source's kind for a teacher."""

import pytest
import torch

from compress.errors import UserError
from compress.inputs import ToySource, input_source, source_kind
from compress.recipe import CalibrationConfig
from tests.teacher_chain_helpers import chained_outputs


def test_an_output_compressed_from_a_toy_is_calibrated_on_that_toys_inputs(tmp_path):
    """An output (or an output made from one) whose recorded teacher is toy:flux became the pipeline
    source under auto (asking for prompts) and was refused by source: toy; it is calibrated as
    toy:flux is, on the same inputs. An output of a teacher that is no toy stays the pipeline's."""
    a, d = chained_outputs(tmp_path, "toy:flux")
    for teacher in ("toy:flux", str(a), str(d)):
        for source in ("auto", "toy"):
            assert source_kind(CalibrationConfig(source=source), teacher) == "toy", (teacher, source)
    calib = CalibrationConfig(num_prompts=2, timesteps=2, batch_size=8)
    src = input_source("flux", str(d), calib, None)
    assert isinstance(src, ToySource)
    want = ToySource("flux", calib).calibration()
    assert all(torch.equal(got["hidden_states"], w["hidden_states"]) for got, w in zip(src.calibration(), want))

    (tmp_path / "bare").mkdir()  # a transformer folder: no toy at the end of the chain
    _, real = chained_outputs(tmp_path / "real", str(tmp_path / "bare"))
    assert source_kind(CalibrationConfig(), str(real)) == "pipeline"
    with pytest.raises(UserError, match=r"calibration.source 'toy' needs a toy teacher .*or an output compressed "
                                        r"from one\), not .*real"):
        source_kind(CalibrationConfig(source="toy"), str(real))


def _recipe(tmp_path, teacher: str, calibration: str = "", overrides=()):
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: {teacher}\n{calibration}passes:\n  - svd: {{}}\n"
    return parse_recipe(text, str(tmp_path / "c.yaml"), overrides)


def test_a_chain_of_teachers_broken_by_a_teacher_moved_away_says_so_at_the_recipes_teacher(tmp_path):
    """With out/a moved away, a recipe whose teacher out/b records out/a said calibration.source
    'pipeline' (auto: pipeline for a teacher that is not toy:) needed prompts: the broken chain was
    taken for a real teacher. Under auto (and under toy) it says the chain is broken, at the
    recipe's `teacher:` line, as load_pipeline does; a calibration.pipeline to sample in is taken."""
    from compress.io_source_recipe import checked_sources

    a, d = chained_outputs(tmp_path, "toy:flux")
    a.rename(tmp_path / "moved")
    recipe = _recipe(tmp_path, str(d))
    want = (f"{tmp_path / 'c.yaml'}:2: the teacher {d} records the teacher {a.resolve()}, which is not there: "
            "calibration.source auto takes a toy's inputs for an output compressed from a toy and samples in a "
            "pipeline otherwise, and whether the chain of teachers starts at a toy cannot be told; put it back "
            "where it was, or set calibration.pipeline (and prompts) to the pipeline to sample in")
    with pytest.raises(UserError) as e:
        source_kind(recipe.calibration, str(d))
    assert str(e.value) == want
    with pytest.raises(UserError) as e:
        checked_sources(recipe)  # what run and plan check first
    assert str(e.value) == want
    toy = _recipe(tmp_path, str(d), "calibration: {source: toy}\n")
    with pytest.raises(UserError, match=r"c.yaml:2: the teacher .*, which is not there: calibration.source 'toy' "
                                        r"needs a toy teacher, and whether"):
        source_kind(toy.calibration, str(d))
    with pytest.raises(UserError, match=r"^the teacher .*d records"):  # --teacher: no line of the recipe's
        source_kind(_recipe(tmp_path, "toy:flux").calibration, str(d))
    sampled = _recipe(tmp_path, str(d), "calibration: {pipeline: toy:flux, prompts: [a 3]}\n")
    assert source_kind(sampled.calibration, str(d)) == "pipeline"
    (tmp_path / "moved").rename(a)
    assert source_kind(recipe.calibration, str(d)) == "toy"


def test_calibration_source_toy_for_a_real_teacher_names_its_line(tmp_path):
    """calibration.source 'toy' for a teacher that is no toy named no line of the recipe."""
    (tmp_path / "bare").mkdir()  # a transformer folder
    recipe = _recipe(tmp_path, str(tmp_path / "bare"), "calibration:\n  seed: 1\n  source: toy\n")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'c.yaml'}:5: calibration.source 'toy' needs a toy teacher"):
        source_kind(recipe.calibration, str(tmp_path / "bare"))


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_toy_calibration_batches_hold_both_cfg_branches(family):
    """The toy source's rows were [every empty-prompt row; every prompt row], so the first batches,
    all that global's sensitivity (sensitivity_batches: 2) and compensation's subset read, held no
    prompt at all; each batch now holds both branches of its latents, as a pipeline's calls do, and
    the rows are the same rows."""
    from compress.toy.data import model_inputs

    calib = CalibrationConfig(num_prompts=4, timesteps=2, batch_size=4, seed=3)
    batches = ToySource(family, calib).calibration()
    empty = model_inputs(family, 1, seed=0, cfg=True)["encoder_hidden_states"][0]  # (L, D) the empty prompt
    for batch in batches:
        text = batch["encoder_hidden_states"]  # (4, L, D)
        assert [torch.equal(row, empty) for row in text] == [True, False, True, False]
        assert torch.equal(batch["hidden_states"][0], batch["hidden_states"][1])  # one latent, two branches
        assert torch.equal(batch["timestep"][0::2], batch["timestep"][1::2])
    whole = model_inputs(family, 8, seed=3, split="train", cfg=True)
    got = torch.cat([b["hidden_states"] for b in batches])
    assert torch.equal(got[0::2], whole["hidden_states"][:8]) and torch.equal(got[1::2], whole["hidden_states"][8:])
    assert torch.equal(torch.cat([b["encoder_hidden_states"] for b in batches])[1::2],
                       whole["encoder_hidden_states"][8:])
    one_branch = ToySource(family, CalibrationConfig(num_prompts=4, timesteps=2, batch_size=4, seed=3,
                                                     cfg_branches=False)).calibration()
    assert torch.equal(torch.cat([b["hidden_states"] for b in one_branch]),
                       model_inputs(family, 8, seed=3, split="train")["hidden_states"])
