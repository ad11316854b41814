"""compress.passes.svd_summary: what the svd summary in report.json says (kept parameters, the worst loss /
optimum by method, each pass's setting where several differ, what the ratios are measured against) and the
warning for a pass whose Grams were mostly clamped."""

from compress.passes.svd import SVDConfig


def _record(**extra):
    return {"method": "whitened", "params_dense": 10, "kept_params": 5, "rank": 2, "loss_ratio": 1.0, **extra}


def _merged(report: dict, records: dict, c: SVDConfig) -> dict:
    from compress.passes.svd_summary import merge_report, summary

    this = dict(summary(records, c), compensation={}, cache_hits=[], fused_gelu=[])
    merge_report(report, this, records, c)
    return report


def test_the_summary_records_the_fishers_estimate_and_what_max_loss_ratio_is_against():
    """max_loss_ratio (1.000000) held against the Fisher estimated from fisher_probes random probes,
    not the exact Fisher (1.10x median, 1.37x worst there on toy PixArt at 4 probes), and report.json
    recorded neither the probe count nor what the ratio is against. Now both, each pass's where they differ."""
    report = _merged({}, {"a": _record(weighting="output-weighted")}, SVDConfig(fisher_probes=64))
    assert report["fisher_probes"] == 64 and report["fisher_damping"] == 1e-3
    assert report["max_loss_ratio_of"] == ("the optimum of each layer's objective with its output Fisher estimated "
                                           "from 64 random probes (svd.fisher_probes) and damped "
                                           "(svd.fisher_damping), not of the exact Fisher")
    _merged(report, {"b": _record(weighting="output-weighted")}, SVDConfig(targets=["modulation"]))
    assert report["fisher_probes"] == [64, 4]
    assert "estimated from 64, 4 random probes (svd.fisher_probes of each svd pass) and" in report["max_loss_ratio_of"]
    plain = _merged({}, {"a": _record(weighting="calibration output")}, SVDConfig(fisher="none"))
    assert plain["fisher_probes"] is None and plain["fisher_damping"] is None
    assert plain["max_loss_ratio_of"] == "the exact optimum of each layer's calibration output error"


def test_a_pass_whose_grams_are_mostly_clamped_is_warned_once():
    from compress.passes.svd_summary import clamped_words

    def rec(clamped, shape=(16, 16), data_rank=4):
        return {"clamped": clamped, "shape": list(shape), "data_rank": data_rank}

    assert clamped_words({"a": rec(True), "b": rec(False)}) is None  # half: not most
    # a modulation linear's rows are the modulation grid's timesteps: more prompts would not help
    assert clamped_words({"adaln_single.linear": {**rec(True), "role": "modulation"}}) is None
    said = clamped_words({"a": rec(True), "b": rec(True, (64, 16), 5), "c": rec(False)})
    assert said.startswith("svd: 2 of this pass's 3 targets had calibration data spanning fewer directions than "
                           "the layer is wide (the widest, b 64×16, 5 of 16): too few calibration rows"), said


def test_targets_whose_data_rank_is_below_their_rank_are_warned_of_and_recorded(capsys):
    """A zero Gram (data_rank 0) or a rank-1 one under rank 6, in 1 of 18 targets: report.json held
    data_rank: 0 and clamped: true and nothing said it (the clamped warning needs most targets). Now a
    warning naming them, fewest directions first, and the summary's rank_deficient_grams; a pass that is
    mostly clamped keeps its one warning."""
    from compress.passes.svd_summary import deficient_words

    records = {"b.ff": _record(rank=6, data_rank=1), "a.ff": _record(rank=6, data_rank=0),
               "c": _record(rank=4, data_rank=16), "d": _record(rank="dense"),
               "adaln": _record(rank=6, data_rank=2, role="modulation")}  # the grid's timesteps: not said
    assert deficient_words(records) == (
        "svd: 2 targets saw a zero or rank-deficient calibration Gram (its data rank under half its rank: a.ff 0 < 6, "
        "b.ff 1 < 6): the factors past the directions the data spans come from the weight alone, unmeasured (a "
        "loss of 0 there says nothing); a data rank of 0 is a layer whose calibration inputs are all zero (check "
        "the teacher), else raise calibration.num_prompts")
    assert deficient_words({"c": records["c"], "d": records["d"]}) is None
    # the toy PixArt's caption k/v: 14 directions of rank 24, all its 10 captions give; listed, not said
    records["e.to_k"] = _record(rank=24, data_rank=14)
    assert deficient_words({"e.to_k": records["e.to_k"]}) is None
    report = _merged({}, records, SVDConfig())
    assert report["rank_deficient_grams"] == ["a.ff", "adaln", "b.ff", "e.to_k"]
    assert "warning: svd: 2 targets saw a zero or rank-deficient calibration Gram" in capsys.readouterr().err
    clamped = {n: {**r, "clamped": True, "shape": [16, 16]} for n, r in records.items()}
    _merged({}, clamped, SVDConfig())
    err = capsys.readouterr().err
    assert "of this pass's 5 targets had calibration data spanning fewer" in err and "rank-deficient" not in err


def test_the_optimality_summary_covers_whitened_layers_and_labels_the_others_by_method():
    """An asvd pass's ratios (4..592 against the whitened optimum, None where that optimum is 0)
    were summarized as `max_loss_ratio`, the whitened ≤ 1.001 check, Infinity included; the model
    card said 'worst whitened loss / closed-form optimal loss: inf'."""
    import json

    from compress.passes.svd_summary import summary
    from compress.report_card import _svd_lines

    def rec(method, ratio):
        return {"method": method, "params_dense": 10, "kept_params": 5, "rank": 2, "loss_ratio": ratio}

    records = {"a": rec("whitened", 1.0000002), "b": rec("asvd", 591.7), "c": rec("asvd", None),
               "d": {"method": "asvd", "params_dense": 10, "kept_params": 10, "rank": "dense"}}
    said = summary(records, SVDConfig(method="asvd"))
    assert said["max_loss_ratio"] == 1.0000002  # whitened only
    assert said["max_loss_ratio_by_method"] == {"whitened": 1.0000002, "asvd": 591.7}
    assert said["undefined_loss_ratios"] == ["c"]
    json.dumps(said, allow_nan=False)
    only_asvd = summary({k: records[k] for k in "bcd"}, SVDConfig(method="asvd"))
    assert only_asvd["max_loss_ratio"] is None and only_asvd["max_loss_ratio_by_method"] == {"asvd": 591.7}
    card = " ".join(_svd_lines({"layers": {**records, "e": rec("asvd", float("inf"))}}))  # an older report's inf
    assert "Factorized layers: 4; worst whitened loss / closed-form optimal loss: 1.000000200; asvd (which does " \
           "not claim the whitened optimum): worst loss / whitened optimal loss 591.7; 2 without a ratio" in card, card
    assert "inf" not in card


def test_two_svd_passes_summary_names_each_passes_setting_where_they_differ():
    """The summary's counts cover both passes' layers; its allocation said only the last pass's
    ('uniform' for a student whose attention ranks a global pass chose)."""
    from types import SimpleNamespace

    from compress.passes.svd_summary import merge_report, summary

    def layer(kept):
        return {"params_dense": 100, "kept_params": kept, "rank": 8, "loss_ratio": 1.0, "method": "whitened"}

    def config(allocation):
        return SimpleNamespace(method="whitened", allocation=allocation, activations="student", fisher="all",
                               fisher_probes=4, fisher_damping=1e-3, objective="branches")

    report = {}
    for allocation, records in (("global", {"a": layer(40)}), ("uniform", {"m": layer(10)})):
        this = dict(summary(records, config(allocation)), compensation={}, cache_hits=[], fused_gelu=[])
        merge_report(report, this, records, config(allocation))
    assert report["allocation"] == ["global", "uniform"]
    assert report["method"] == "whitened" and report["fisher"] == "all"  # the same in both
    assert (report["params_before"], report["params_after"]) == (200, 50)




def test_a_pass_whose_compensation_refused_a_step_is_warned_in_one_line_naming_the_layers():
    """Compensation refused, for some layers, the step the calibration error chose (it left them above
    REFUSE_ABOVE: svd_compensate.line_search's `guard`): one line, the worst named first."""
    from compress.passes.svd_summary import guarded_words

    def rec(error, step=0.0625):
        return _record(guard={"step": step, "rel_output_error": error, "why": "..."})

    assert guarded_words({"a": _record(), "b": _record()}) is None
    said = guarded_words({"a": rec(2.5), "b": rec(350.7), "c": _record(), "d": rec(81.4, 0.25), "e": rec(3.0)})
    assert said.startswith("svd: compensation refused, for 4 layers, the step the calibration error chose: it left "
                           "their plain relative output error above 2 (a zero output's: 1; b 351x at step 0.0625, "
                           "d 81.4x at step 0.25, e 3x at step 0.0625 and 1 more)"), said
    assert "\n" not in said and "svd.layers.<name>.guard" in said


def test_the_summary_records_each_passes_svd_objective():
    """report.json never said which svd.objective a run used (branches, or guided, which weighs the errors by
    the guided prediction). Now the summary's `objective`, each pass's where they differ."""
    report = _merged({}, {"a": _record()}, SVDConfig(objective="guided"))
    assert report["objective"] == "guided" and report["passes"][0]["objective"] == "guided"
    _merged(report, {"b": _record()}, SVDConfig(targets=["modulation"]))
    assert report["objective"] == ["guided", "branches"]
