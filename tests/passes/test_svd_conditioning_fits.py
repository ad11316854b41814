"""Targets whose stats come from the conditioning (the modulation linears, svd_walk.from_conditioning)
have no reference stream to be fitted to: plan, the memory estimate, the run's calibration and its
report agree that they are not fitted, and `asymmetric: true` on a pass of them alone is refused."""

import pytest

import compress.passes.svd as svd_module
from compress.arch import get_adapter
from compress.calib_footprint import asymmetric_streams, block_copies, describe, footprint
from compress.errors import UserError
from compress.passes.svd import SVDConfig, SVDPass
from compress.recipe import parse_recipe
from tests.conftest import tiny_flux, tiny_pixart
from tests.passes.svd_helpers import context

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(multiple=2, modulation_grid=4, progress=False)


def _planned_and_run(tmp_path, monkeypatch, model=None, **cfg):
    """(plan's dict, the run's pass report, whether its calibration ran a reference stream) of one
    svd pass on a tiny Flux (or `model`)."""
    model = model if model is not None else tiny_flux()
    adapter = get_adapter(model)
    planned = SVDPass(SVDConfig(**BASE, **cfg)).plan(model, adapter)
    streams = []
    real = svd_module.BlockCalibration

    def spy(*args, **kwargs):
        cal = real(*args, **kwargs)
        streams.append(cal.asymmetric)
        return cal

    monkeypatch.setattr(svd_module, "BlockCalibration", spy)
    ctx = context(model, tmp_path)
    SVDPass(SVDConfig(**BASE, **cfg)).run(model, ctx)
    return planned, ctx.report["svd"]["passes"][0], streams == [True]


@pytest.mark.parametrize("cfg", [
    dict(targets=["modulation"], fisher="block", ranks={"modulation": 4}),
    dict(targets=["modulation"], fisher="none", ranks={"modulation": 4}),
    dict(targets=["modulation", "attention"], fisher="block", ranks={"modulation": 4}),
])
def test_plan_and_run_agree_on_what_is_fitted_to_the_reference(tmp_path, monkeypatch, cfg):
    """The per-block modulation linears were counted as fitted (plan: fitted_to_reference, sequential:
    true; a reference stream calibrated beside the student's) and the run fitted none of them."""
    planned, report, reference = _planned_and_run(tmp_path, monkeypatch, **cfg)
    fitted = report["asymmetric"]
    assert planned.get("fitted_to_reference", 0) == len(fitted)
    assert planned.get("sequential", False) is report["sequential"]
    assert reference is bool(fitted)
    assert not any(".norm" in name for name in fitted)  # no modulation linear is ever fitted
    if "attention" in cfg["targets"]:
        assert fitted and report["sequential"] is True  # the block linears still are


def test_the_memory_estimate_counts_no_reference_stream_for_modulation_targets(tmp_path):
    """calib_footprint counted a reference stream and a dense block copy for a fisher: block pass
    whose only targets are modulation linears; it follows the pass's own decisions."""
    text = ("model: flux\nteacher: toy:flux\nstream: true\npasses:\n  - svd: {targets: [modulation], "
            "fisher: block, ranks: {modulation: 8}}\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    assert (asymmetric_streams(recipe), block_copies(recipe)) == (1, 1)
    f = footprint(recipe, "toy:flux", tiny_flux().config, 0, toy=False)
    assert (f["streams"], f["block_copies"], f["probe_bytes"]) == (1, 1, 0)
    assert "reference stream" not in describe(f)
    both = parse_recipe(text.replace("[modulation]", "[modulation, mlp]"), str(tmp_path / "r.yaml"))
    assert (asymmetric_streams(both), block_copies(both)) == (2, 2)


def test_asymmetric_true_on_targets_that_cannot_be_fitted_is_refused(tmp_path):
    """`asymmetric: true` on a modulation-only pass gave the run of `auto`, without a word."""
    model = tiny_flux()
    adapter = get_adapter(model)
    asked = SVDPass(SVDConfig(**BASE, targets=["modulation"], fisher="block", asymmetric=True))
    with pytest.raises(UserError, match=r"svd\.asymmetric: true, but none of this pass's \d+ targets can be "
                                        r"fitted to the reference: the modulation linears read the conditioning"):
        asked.check(model, adapter)
    SVDPass(SVDConfig(**BASE, targets=["modulation", "mlp"], fisher="block", asymmetric=True)).check(model, adapter)


def test_the_refusal_names_the_asymmetric_key_line(tmp_path):
    from compress.plan import make_plan

    text = ("model: flux\nteacher: toy:flux\ncalibration: {num_prompts: 2, timesteps: 1}\npasses:\n"
            "  - svd:\n      targets: [modulation]\n      fisher: block\n      asymmetric: true\n")
    with pytest.raises(UserError, match=r"r\.yaml:8: svd\.asymmetric: true, but none"):
        make_plan(parse_recipe(text, str(tmp_path / "r.yaml")))


@pytest.mark.parametrize("targets", [[r"re:attn2\.to_[kv]$"], [r"re:attn2\."]])
def test_plan_and_run_agree_that_the_caption_keys_and_values_are_not_fitted(tmp_path, monkeypatch, targets):
    """PixArt's cross-attention keys and values read the caption, the same on both streams: plan
    counted them fitted to the reference (16 for attn2 where the run fitted 8), and `asymmetric:
    true` on them alone ran, fitting none."""
    cfg = dict(targets=targets, fisher="none", ratio=0.5)
    planned, report, reference = _planned_and_run(tmp_path, monkeypatch, model=tiny_pixart(), **cfg)
    fitted = report["asymmetric"]
    assert planned.get("fitted_to_reference", 0) == len(fitted)
    assert not any(".to_k" in n or ".to_v" in n for n in fitted)
    assert reference is bool(fitted)


def test_asymmetric_true_on_the_caption_keys_and_values_alone_is_refused():
    model = tiny_pixart()
    adapter = get_adapter(model)
    asked = SVDPass(SVDConfig(**BASE, targets=[r"re:attn2\.to_[kv]$"], fisher="none", asymmetric=True))
    with pytest.raises(UserError, match=r"svd\.asymmetric: true, but none of this pass's \d+ targets can be "
                                        r"fitted to the reference: the cross-attention keys and values read"):
        asked.check(model, adapter)
