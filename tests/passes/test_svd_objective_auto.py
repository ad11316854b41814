"""svd.objective auto (the default; compress.passes.svd_objective.resolve): guided_compensation where a distill
pass follows the svd pass, its calibration holds both CFG branches of each input and it compensates by the
prediction's Fisher unstreamed, else branches, with the reason; never a refusal."""

import pytest

from compress.passes.svd_config import SVDConfig
from compress.passes.svd_decisions import streaming_refusals
from compress.passes.svd_objective import objective_of, pass_guidance, resolve, set_resolved
from compress.passes.svd_summary import summary
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.svd_helpers import two_branches


def test_auto_is_the_default_and_a_choice():
    assert SVDConfig().objective == "auto"
    SVDConfig(objective="auto").validate()
    SVDConfig(objective="auto", fisher="none").validate()  # explicit guided ones refuse fisher: none; auto not


def _resolve(distill=12, unpaired=None, stream=False, saved=False, **keys):
    return resolve(SVDConfig(**keys), distill, unpaired, stream, saved)


def test_auto_runs_as_guided_compensation_where_a_distill_follows_and_the_branches_pair():
    objective, why = _resolve()
    assert objective == "guided_compensation"
    assert why.startswith("the distill pass at line 12 follows it and its calibration holds both "
                          "classifier-free-guidance branches of each input; after distillation it measured 0.94-0.99x")
    assert _resolve(fisher="modulation")[0] == "guided_compensation"


@pytest.mark.parametrize("given, why", [
    (dict(distill=None), "no distill pass follows it; right after the svd passes guided_compensation measured "
                         "1.15-1.47x branches' conditional error on the toy recipes"),
    (dict(unpaired="calibration.cfg_branches is false (the inputs hold the prompt's branch alone)"),
     "calibration.cfg_branches is false (the inputs hold the prompt's branch alone)"),
    (dict(stream=True), "stream: true (the prediction's Fisher needs the whole model)"),
    (dict(fisher="none"), "no compensation with fisher: none (compensation needs the prediction's Fisher: all or "
                          "modulation)"),
    (dict(fisher="block"), "no compensation with fisher: block (compensation needs the prediction's Fisher: all or "
                           "modulation)"),
    (dict(compensate=False), "no compensation with compensate: false"),
    (dict(method="asvd"), "no compensation with method: asvd (compensation needs whitened)"),
    (dict(saved=True), "a saved recipe written before svd.objective existed (it has no objective key), whose run "
                       "weighed by branches"),
])
def test_auto_runs_as_branches_otherwise_and_says_why(given, why):
    assert _resolve(**given) == ("branches", why)


@pytest.mark.parametrize("objective", ["branches", "guided", "guided_fisher", "guided_compensation"])
def test_an_explicit_objective_is_itself_whatever_follows(objective):
    assert _resolve(objective=objective) == (objective, "")
    assert _resolve(objective=objective, distill=None) == (objective, "")


def test_objective_of_reads_the_resolution_and_an_unresolved_auto_is_branches():
    c = SVDConfig()
    assert objective_of(c) == "branches"  # a pass made outside plan and run: the objective before auto
    set_resolved(c, "guided_compensation", "why")
    assert objective_of(c) == "guided_compensation" and c.objective == "auto"
    assert objective_of(SVDConfig(objective="guided")) == "guided"


def test_streaming_refuses_an_explicit_guided_objective_not_auto():
    assert [r.key for r in streaming_refusals(SVDConfig(fisher="block"))] == []
    assert [r.key for r in streaming_refusals(SVDConfig(fisher="block", objective="guided"))] == ["objective"]


def test_the_summary_records_what_the_pass_ran_as_and_what_was_given():
    c = SVDConfig()
    set_resolved(c, "guided_compensation", "why")
    record = {"params_dense": 10, "kept_params": 5, "rank": 2}
    got = summary({"a": record}, c)
    assert (got["objective"], got["objective_given"]) == ("guided_compensation", "auto")
    got = summary({"a": record}, SVDConfig(objective="guided"))
    assert (got["objective"], got["objective_given"]) == ("guided", "guided")


def test_auto_where_only_the_sampled_inputs_tell_runs_as_branches_with_one_note(capsys):
    """A pipeline source whose calls hold one branch each: an explicit guided_compensation is refused when the
    pass starts; under auto the pass runs as branches, says so once and records it."""
    from compress.errors import UserError

    model = tiny_pixart()
    batches = [model_inputs(model, batch=4, seed=0)]  # four inputs, one branch each
    c = SVDConfig()
    set_resolved(c, "guided_compensation", "a distill follows")
    assert pass_guidance(c, lambda: None, batches, 4.5, "pipeline") is None
    assert objective_of(c) == "branches"
    err = capsys.readouterr().err
    assert err.count("svd.objective auto runs as branches, not guided_compensation: calibration batch 1 (4 rows, "
                     "whole calls of the calibration pipeline to its transformer) does not hold each input's "
                     "empty-prompt and prompt branches") == 1, err
    with pytest.raises(UserError, match="^svd.objective guided_compensation needs both"):
        pass_guidance(SVDConfig(objective="guided_compensation"), lambda: None, batches, 4.5, "pipeline")
    c = SVDConfig()
    set_resolved(c, "guided_compensation", "a distill follows")
    paired = [two_branches(model, seed=0)]
    assert pass_guidance(c, lambda: None, paired, 4.5, "pipeline").scale == 4.5
    assert objective_of(c) == "guided_compensation"
