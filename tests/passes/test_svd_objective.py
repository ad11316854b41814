"""svd.objective (compress.passes.svd_objective): the guided prediction of each calibration input's two CFG
rows as what the output Fishers and compensation weigh errors by, refused where the inputs hold no pairs."""

import re

import pytest

from compress.errors import BadValue, UserError
from compress.guided import CalibrationGuidance, HeldOutGuidance, calibration_pairs
from compress.passes.base import RunContext, predictions, relative_error
from compress.passes.svd import SVDConfig, SVDPass
from compress.runner_kept import fisher_folder
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.svd_helpers import two_branches

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, batches, objective, source=None, model=None):
    from compress.arch import get_adapter

    model = model if model is not None else tiny_pixart()
    ctx = RunContext(adapter=get_adapter(model), family="pixart", teacher=tiny_pixart(), run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint=objective,
                     heldout_guidance=lambda: HeldOutGuidance(3.0), source_kind=source)
    SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, progress=False,
                      objective=objective)).run(model, ctx)
    return model, ctx


@pytest.mark.parametrize("objective", ["branches", "guided", "guided_compensation"])
def test_compensation_measures_the_objectives_calibration_error(tmp_path, objective):
    """Each compensated stage's line search keeps the β of the least calibration error of the objective's
    prediction: after the last stage, the student's guided error (guided) or each row's (branches)."""
    model = tiny_pixart()
    batches = [two_branches(model, seed=s) for s in range(2)]
    student, ctx = _run(tmp_path, batches, objective)
    last = list(ctx.report["svd"]["compensation"].values())[-1]
    guide = CalibrationGuidance(3.0, [calibration_pairs(b) for b in batches])
    refs = predictions(ctx.teacher, ctx.adapter, batches)
    measured = relative_error(student, refs, ctx.adapter, batches, guide=None if objective == "branches" else guide)
    assert last["calibration_error"] == pytest.approx(measured, rel=1e-9)


def test_a_guided_objective_without_both_branches_of_each_input_is_refused(tmp_path):
    model = tiny_pixart()
    with pytest.raises(UserError, match=r"^svd.objective guided needs calibration inputs holding both "
                                        r"classifier-free-guidance branches .*; set svd.objective: branches$"):
        _run(tmp_path, [model_inputs(model, seed=0)], "guided")


def test_the_guided_fishers_are_kept_apart_from_each_rows_and_a_wrong_objective_is_refused():
    assert fisher_folder(SVDConfig(objective="guided")) == "fisher-guided-4probes"
    assert fisher_folder(SVDConfig(objective="guided_fisher")) == "fisher-guided-4probes"
    assert fisher_folder(SVDConfig(objective="guided_compensation")) == "fisher-4probes"
    assert fisher_folder(SVDConfig()) == "fisher-4probes"
    with pytest.raises(BadValue, match="objective"):
        SVDConfig(objective="guide").validate()


@pytest.mark.parametrize("keys, words", [
    ({"objective": "guided", "fisher": "block"}, "svd.objective: guided needs the prediction's Fisher "
                                                 "(fisher: all or modulation); this pass has fisher: block"),
    ({"objective": "guided_compensation", "compensate": False}, "svd.objective: guided_compensation needs "
                                                                "compensation (method: whitened, compensate not false)"),
])
def test_a_guided_objective_where_it_would_do_nothing_is_refused(keys, words):
    with pytest.raises(BadValue, match=f"^{re.escape(words)}.*where it would do nothing: set .*, or svd.objective: "
                                       "branches$"):
        SVDConfig(**keys).validate()
    SVDConfig(objective="guided_fisher", compensate=False).validate()  # the Fisher is still guided


def test_the_guidance_scale_is_the_held_out_guidances_or_before_it_is_read_the_pipelines():
    from compress.passes.svd_objective import calibration_guidance

    batches = [two_branches(tiny_pixart(), seed=0)]
    assert calibration_guidance("branches", lambda: None, batches) is None
    assert calibration_guidance("guided", lambda: HeldOutGuidance(3.0), batches, 4.5).scale == 3.0
    got = calibration_guidance("guided_compensation", lambda: None, batches, 4.5)  # a pipeline's, held out later
    assert got.scale == 4.5 and got.pairs[0][0].tolist() == [0, 2]
    with pytest.raises(UserError, match="needs calibration inputs holding both"):
        calibration_guidance("guided", lambda: None, batches)  # no scale known: no guided prediction


def test_pass_time_words_say_an_odd_batch_split_the_pairs():
    """Batches cut from the interleaved rows at an odd size: the pass told the user to set
    calibration.cfg_branches: true, which was set. Now it says the batch size split the pairs."""
    import torch

    from compress.passes.svd_objective import calibration_guidance

    both = two_branches(tiny_pixart(), inputs=3, seed=0)  # 6 rows u0, c0, u1, c1, u2, c2
    rows = both["hidden_states"].shape[0]
    cut = lambda a, b: {k: (v[a:b] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows  # noqa: E731
                            and k not in ("img_ids", "txt_ids") else v) for k, v in both.items()}
    with pytest.raises(UserError) as e:
        calibration_guidance("guided", lambda: HeldOutGuidance(3.0), [cut(0, 5), cut(5, 6)])
    assert str(e.value) == ("svd.objective guided needs both classifier-free-guidance branches of each input in one "
                            "calibration batch, and calibration batch 1 holds 5 rows (an odd calibration.batch_size "
                            "splits an input's two branches across batches); set an even calibration.batch_size, or "
                            "svd.objective: branches")
    assert calibration_guidance("guided", lambda: HeldOutGuidance(3.0), [cut(0, 4), cut(4, 6)]).scale == 3.0


def _calls_of_one_branch(inputs: int = 3) -> list[dict]:
    """The records of a pipeline that calls its transformer once per CFG branch: one row each (u0, c0, u1, …)."""
    import torch

    both = two_branches(tiny_pixart(), inputs=inputs, seed=0)
    rows = both["hidden_states"].shape[0]
    row = lambda i: {k: (v[i:i + 1] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows  # noqa: E731
                         and k not in ("img_ids", "txt_ids") else v) for k, v in both.items()}
    return [row(i) for i in range(rows)]


@pytest.mark.parametrize("batch_size, what", [(3, "an odd number of rows"),
                                              (2, "rows that are not each input's two branches")])
def test_a_pipeline_whose_calls_hold_one_branch_each_is_told_so_not_to_change_its_batch_size(batch_size, what):
    """A pipeline source's batches are whole transformer calls (calib_pipeline.rebatch): one whose pipeline runs
    each CFG branch in a call of its own, 3 calls a batch, was told 'an odd calibration.batch_size splits an
    input's two branches across batches; set an even calibration.batch_size', and at an even size that it needs
    calibration.cfg_branches: true, which it had: neither helps. Now the words say the pipeline's calls do not
    hold both branches."""
    from compress.calib_pipeline import rebatch
    from compress.passes.svd_objective import calibration_guidance

    batches = rebatch(_calls_of_one_branch(), batch_size, seed=0)
    with pytest.raises(UserError) as e:
        calibration_guidance("guided", lambda: None, batches, 4.5, "pipeline")
    words = str(e.value)
    assert re.fullmatch(r"svd.objective guided needs both classifier-free-guidance branches of each input in one "
                        rf"calibration batch, and calibration batch \d \({batch_size} rows, whole calls of the "
                        rf"calibration pipeline to its transformer\) holds {re.escape(what)}: the pipeline does not "
                        r"run each input's empty-prompt and prompt branches in one transformer call \(it runs them "
                        r"in calls of their own, or one branch alone\); calibrate through a pipeline that batches "
                        r"both \(as diffusers' PixArtSigmaPipeline does\), or set svd.objective: branches",
                        words), words
    assert "batch_size" not in words and "cfg_branches" not in words


def test_the_svd_pass_words_its_refusal_for_the_runs_source(tmp_path):
    """The pass passes its run's source kind (RunContext.source_kind) to the refusal: a pipeline's words."""
    from compress.calib_pipeline import rebatch

    with pytest.raises(UserError, match=r"\(3 rows, whole calls of the calibration pipeline to its transformer\)"):
        _run(tmp_path, rebatch(_calls_of_one_branch(), 3, seed=0), "guided", source="pipeline")


def _guide_of(fn, a, k):
    """The `guide` argument a call of `fn` got (positional or keyword), None where left out."""
    import inspect

    return inspect.signature(fn).bind(*a, **k).arguments.get("guide")


@pytest.mark.parametrize("objective", ["branches", "guided", "guided_fisher", "guided_compensation"])
def test_the_pass_guides_the_parts_its_objective_names(tmp_path, monkeypatch, objective):
    """The Fisher sweeps and compensation's gradients are handed the guide exactly where PARTS[objective]
    names their part (R1 stop 50: handing either None passed every test on 462ba24, the line search's
    guided error alone checked)."""
    import compress.passes.svd_compensate as comp
    import compress.passes.svd_fisher as fisher
    import compress.passes.svd_fisher_measure as measure
    from compress.passes.svd_objective import PARTS

    seen = {"fisher": [], "compensation": []}
    sweeps, output_fisher, gradients = measure.sweeps, fisher.output_fisher, comp.prediction_gradients

    def spy_sweeps(*a, **k):
        seen["fisher"].append(_guide_of(sweeps, a, k))
        return sweeps(*a, **k)

    def spy_output_fisher(*a, **k):  # the call sweeps' guide must reach (R1 stop 51: guide=None there passed)
        seen["fisher"].append(_guide_of(output_fisher, a, k))
        return output_fisher(*a, **k)

    def spy_gradients(*a, **k):
        seen["compensation"].append(_guide_of(gradients, a, k))
        return gradients(*a, **k)
    monkeypatch.setattr(measure, "sweeps", spy_sweeps)
    monkeypatch.setattr(fisher, "output_fisher", spy_output_fisher)
    monkeypatch.setattr(comp, "prediction_gradients", spy_gradients)
    _run(tmp_path, [two_branches(tiny_pixart(), seed=s) for s in range(2)], objective)
    for part, guides in seen.items():
        assert guides, part
        assert all((g is not None) == (part in PARTS[objective]) for g in guides), (part, guides)


def test_guided_prediction_gradients_are_the_guided_losss_weight_gradient():
    """prediction_gradients(guide=...) is the gradient of ½ Σ ||guided(pred) − guided(ref)||² with respect to
    each linear's weight (R1 stop 50: dropping its guide.of line passed every test on 462ba24)."""
    import torch

    from compress.arch import get_adapter
    from compress.passes.svd_fisher import prediction_gradients

    teacher, model = tiny_pixart(), tiny_pixart()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapter = get_adapter(model)
    batches = [two_branches(teacher, seed=s) for s in range(2)]
    refs = predictions(teacher, adapter, batches)
    guide = CalibrationGuidance(3.0, [calibration_pairs(b) for b in batches])
    names = [i.name for i in adapter.linears(model)][:3]
    got = prediction_gradients(model, adapter, batches, refs, names, guide=guide)
    weights = [model.get_submodule(n).weight for n in names]
    loss = sum(0.5 * (guide.of(adapter.predict(model, b), k).double() - guide.of(r, k).double()).square().sum()
               for k, (b, r) in enumerate(zip(batches, refs)))
    for n, g in zip(names, torch.autograd.grad(loss, weights)):
        torch.testing.assert_close(got[n][0], g.double(), rtol=1e-3, atol=1e-4 * float(g.abs().max()))


@pytest.mark.parametrize("objective, words", [("guided_fisher", "the guided prediction does not change"),
                                              ("guided_compensation", "the prediction does not change")])
def test_a_zero_fisher_under_the_objective_says_which_prediction_it_probed(tmp_path, capsys, objective, words):
    """389db8e's zero-Fisher words say 'the guided prediction' where the objective guides the Fisher sweeps;
    that the pass hands Roots that flag was tested at the Roots level alone (F11 stop 51: the pass's
    `measured=(c.fisher, False)` passed every test). A teacher whose proj_out is zero: no target moves
    its prediction, guided or not."""
    import torch

    model = tiny_pixart()
    with torch.no_grad():
        model.proj_out.weight.zero_()
    _run(tmp_path, [two_branches(model, seed=s) for s in range(2)], objective, model=model)
    warned = [line for line in capsys.readouterr().err.splitlines() if "zero output Fisher" in line]
    assert len(warned) == 1 and words in warned[0], warned
    assert objective == "guided_fisher" or "guided prediction" not in warned[0]
