"""PipelineSource.heldout_guidance: the held-out records of a pipeline that samples both CFG branches
pair each input's empty-prompt row with its prompt's row, batched as rebatch joins them; a pipeline that
samples one branch (Flux.1-dev; calibration.cfg_branches false) gives none."""

import json

import pytest
import torch

from compress.io import load_teacher
from tests.pipelines import pipeline_folders
from tests.runner_helpers import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


def _source(folders, family: str, **kw):
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    size = {"height": 32, "width": 32} if family == "flux" else {}
    keys = dict(source="pipeline", prompts=["a cat", "a dog", "a fox", "a car", "a red horse"], sample_steps=3,
                timesteps=3, batch_size=8, prompts_per_call=2, heldout=18, guidance_scale=4.0, **size)
    calib = CalibrationConfig(**{**keys, **kw})
    return PipelineSource(family, calib, load_teacher(str(folders[family])), str(folders[family]))


def test_pixart_held_out_rows_pair_each_inputs_two_branches(folders):
    """PixArt-Σ samples [negative × k; prompt × k] per call (here calls of 2 prompts and of 1, joined two
    calls a batch): every pair holds one input (latents, timestep) with the empty prompt's embedding on the
    first row and its prompt's on the second, and every row is in one pair; the scale is the recipe's."""
    source = _source(folders, "pixart")
    batches = source.heldout()
    guidance = source.heldout_guidance()
    assert guidance.scale == 4.0 and guidance.unconditional is None and len(guidance.pairs) == len(batches)
    empty = None
    for batch, (uncond, cond) in zip(batches, guidance.pairs):
        assert sorted(uncond.tolist() + cond.tolist()) == list(range(batch["hidden_states"].shape[0]))
        assert torch.equal(batch["hidden_states"][uncond], batch["hidden_states"][cond])
        text = batch["encoder_hidden_states"]
        empty = text[uncond[0]] if empty is None else empty
        assert all(torch.equal(text[u], empty) for u in uncond)  # the negative (empty) prompt's rows
        assert not any(torch.equal(text[c], empty) for c in cond)
    assert sum(b["hidden_states"].shape[0] for b in batches) == 18  # 3 prompts x 3 steps x 2 branches


@pytest.mark.parametrize("family, kw", [("flux", {}), ("pixart", {"cfg_branches": False}),
                                        ("pixart", {"guidance_scale": 1.0})])
def test_a_pipeline_sampling_one_branch_gives_no_guidance(folders, family, kw):
    """Flux (guidance distilled: one branch, guidance an input), or PixArt-Σ without CFG branches or at
    guidance 1: the held-out predictions are already the ones it samples with."""
    source = _source(folders, family, heldout=None, **kw)  # (one prompt held out: 3 rows)
    source.heldout()
    assert source.heldout_guidance() is None


def test_a_run_calibrated_through_a_pipeline_records_the_guided_error(tmp_path):
    """A run whose inputs are sampled by the toy pipeline with both branches records each stage's
    guided error (no forwards of its own: the held-out records hold both branches) beside its error."""
    text = ("model: pixart\nteacher: toy:pixart\n"
            "calibration: {source: pipeline, pipeline: 'toy:pixart', prompts: [a 1, a 2, a 3], sample_steps: 2, "
            "timesteps: 2, batch_size: 4, heldout: 4}\n"
            "passes:\n  - svd: {targets: [mlp], ratio: 0.5, multiple: 8, fisher: none}\n")
    out = run_recipe(tmp_path, text, "r")
    stage = json.loads((out / "report.json").read_text())["stages"][-1]
    assert 0 < stage["guided_error"] != pytest.approx(stage["relative_error"], rel=1e-3)
