"""svd_compensate: the prediction gradient, the measured line search, and the pass with and without it."""

import pytest
import torch
from torch import nn

from compress.arch import get_adapter
from compress.arch.base import LinearInfo
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.base import predictions, relative_error
from compress.passes.svd_compensate import STEPS, line_search
from compress.passes.svd_fisher import prediction_gradients
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.test_svd import _ctx

MAKERS = {"pixart": tiny_pixart, "flux": tiny_flux}
pytestmark = pytest.mark.usefixtures("one_thread")


def test_prediction_gradient_is_the_weight_gradient_of_the_prediction_error():
    model, other = tiny_pixart(), tiny_pixart(seed=1)
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=i) for i in range(2)]
    refs = predictions(other, adapter, batches)  # any reference the prediction differs from
    names = ["transformer_blocks.1.ff.net.0.proj", "transformer_blocks.1.ff.net.2"]  # chained
    got = prediction_gradients(model, adapter, batches, refs, names)
    model.zero_grad()
    for b, r in zip(batches, refs):
        (0.5 * (adapter.predict(model, b).double() - r.double()).square().sum()).backward()
    for name in names:
        moment, rows = got[name]
        weight = model.get_submodule(name).weight
        assert rows == 2 * 2 * 16  # batches x batch x tokens
        torch.testing.assert_close(moment, weight.grad.double(), rtol=1e-4, atol=1e-6)


def _info(name):
    return LinearInfo(name, "mlp", "in", "blocks", 0, 4, 4, name)


def test_line_search_keeps_the_best_step_and_restores_the_rest():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    pairs = [(_info("0"), None), (_info("1"), None)]
    steps = {"0": torch.ones(4, 4, dtype=torch.float64)}  # layer "1" has no step
    # one error per candidate: the 9 of STEPS, then the best (STEPS[2]) doubled and halved
    errors = iter([0.5, 0.4, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 0.25, 0.1])
    seen = []

    def factorize(info, stats, step):
        seen.append((info.name, None if step is None else float(step[0, 0])))
        model.set_submodule(info.name, nn.Identity())  # stands for a factorized layer
        model.get_submodule(info.name).tag = (info.name, len(seen))
        return {"name": info.name, "candidate": len(seen)}

    originals = [model[0], model[1]]
    records, search = line_search(model, pairs, steps, factorize, lambda: next(errors))
    assert len(STEPS) == 9 and STEPS[0] == 0.0 and STEPS[-1] == 1 / 16
    assert search == {"step": STEPS[2] / 2, "calibration_error": 0.1, "uncompensated_error": 0.5,
                      "candidates": 11}
    assert records == {"0": {"name": "0", "candidate": 21}, "1": {"name": "1", "candidate": 22}}
    assert model[0].tag == ("0", 21) and model[1].tag == ("1", 22)  # the last candidate's modules
    assert seen[:2] == [("0", None), ("1", None)]  # β = 0 is the plain factorization
    tried = [s for n, s in seen if n == "0"][1:]
    assert tried == pytest.approx(list(STEPS[1:]) + [STEPS[2] * 2, STEPS[2] / 2])
    assert all(s is None for n, s in seen if n == "1")
    assert originals[0] is not model[0]


def test_line_search_without_a_better_step_keeps_the_plain_factors():
    model = nn.Sequential(nn.Linear(4, 4))
    errors = iter([0.1] + [0.2] * 8)

    def factorize(info, stats, step):
        model.set_submodule(info.name, nn.Identity())
        return {"step": step}

    records, search = line_search(model, [(_info("0"), None)], {"0": torch.ones(4, 4)}, factorize,
                                  lambda: next(errors))
    assert search["step"] == 0.0 and search["candidates"] == 9 and records["0"]["step"] is None
    assert isinstance(model[0], nn.Identity)


def _compress(family, tmp_path, **cfg):
    model = MAKERS[family]()
    ctx = _ctx(model, tmp_path)
    batches = ctx.calibration_inputs()
    refs = predictions(model, ctx.adapter, batches)
    SVDPass(SVDConfig(multiple=2, modulation_grid=4, progress=False, **cfg)).run(model, ctx)
    return ctx.report["svd"], relative_error(model, refs, ctx.adapter, batches)


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_compensation_never_makes_a_block_worse_and_helps_overall(family, tmp_path):
    report, error = _compress(family, tmp_path / "on")
    plain, plain_error = _compress(family, tmp_path / "off", compensate=False)
    blocks = report["compensation"]
    first = "blocks 0" if family == "pixart" else "double 0"
    assert blocks and first not in blocks  # nothing upstream of the first block to undo
    for name, search in blocks.items():
        assert search["step"] in set(STEPS) | {2 * b for b in STEPS} | {b / 2 for b in STEPS}
        assert search["calibration_error"] <= search["uncompensated_error"], name
    stepped = [r for r in report["layers"].values() if r.get("compensation_step")]
    assert stepped and all(r["loss_ratio"] <= 1.001 for r in report["layers"].values() if "loss_ratio" in r)
    assert plain["compensation"] == {}
    assert not any(r.get("compensation_step") for r in plain["layers"].values())
    assert error < plain_error  # the calibration prediction error of the whole student


def test_compensation_toward_the_teacher_also_undoes_earlier_passes(tmp_path):
    teacher = tiny_pixart()
    adapter = get_adapter(teacher)
    batches = [model_inputs(teacher, seed=i) for i in range(2)]
    refs = predictions(teacher, adapter, batches)
    results = {}
    for toward in ("teacher", "input"):
        model = tiny_pixart()
        adapter.remove_blocks(model, {"blocks": [1]})  # an earlier pass left an error
        ctx = _ctx(model, tmp_path / toward)
        ctx.teacher = teacher
        SVDPass(SVDConfig(multiple=2, progress=False, compensate_toward=toward)).run(model, ctx)
        results[toward] = (ctx.report["svd"]["compensation"], relative_error(model, refs, adapter, batches))
    (toward_teacher, err_teacher), (toward_input, err_input) = results["teacher"], results["input"]
    assert "blocks 0" in toward_teacher and "blocks 0" not in toward_input  # the removal is undone from block 0
    assert err_teacher < err_input


def test_compensation_on_a_subset_of_the_batches(tmp_path):
    report, _ = _compress("flux", tmp_path, compensate_batches=1)
    assert report["compensation"]
    assert all(s["calibration_error"] <= s["uncompensated_error"] for s in report["compensation"].values())


def test_compensation_needs_the_output_fisher(tmp_path):
    report, _ = _compress("pixart", tmp_path, fisher="none")
    assert report["compensation"] == {}
    report, _ = _compress("pixart", tmp_path / "svd", method="svd")
    assert report["compensation"] == {}
