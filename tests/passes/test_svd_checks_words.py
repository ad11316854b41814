"""compress.passes.svd_checks: what the svd summary in report.json says its numbers are measured in
(the Fisher's estimate, what max_loss_ratio is against) and the energy allocation's warning words."""

from compress.passes.svd import SVDConfig


def _record(**extra):
    return {"method": "whitened", "params_dense": 10, "kept_params": 5, "rank": 2, "loss_ratio": 1.0, **extra}


def _merged(report: dict, records: dict, c: SVDConfig) -> dict:
    from compress.passes.svd_checks import merge_report, summary

    this = dict(summary(records, c), compensation={}, cache_hits=[], fused_gelu=[])
    merge_report(report, this, records, c)
    return report


def test_the_summary_records_the_fishers_estimate_and_what_max_loss_ratio_is_against():
    """max_loss_ratio (1.000000) held against the Fisher estimated from fisher_probes random probes,
    not the exact Fisher (1.10x median, 1.37x worst there on toy PixArt at 4 probes), and report.json
    recorded neither the probe count nor what the ratio is against. Now both, each pass's where they differ."""
    report = _merged({}, {"a": _record(objective="output-weighted")}, SVDConfig(fisher_probes=64))
    assert report["fisher_probes"] == 64 and report["fisher_damping"] == 1e-3
    assert report["max_loss_ratio_of"] == ("the optimum of each layer's objective with its output Fisher estimated "
                                           "from 64 random probes (svd.fisher_probes) and damped "
                                           "(svd.fisher_damping), not of the exact Fisher")
    _merged(report, {"b": _record(objective="output-weighted")}, SVDConfig(targets=["modulation"]))
    assert report["fisher_probes"] == [64, 4]
    assert "estimated from 64, 4 random probes (svd.fisher_probes of each svd pass) and" in report["max_loss_ratio_of"]
    plain = _merged({}, {"a": _record(objective="calibration output")}, SVDConfig(fisher="none"))
    assert plain["fisher_probes"] is None and plain["fisher_damping"] is None
    assert plain["max_loss_ratio_of"] == "the exact optimum of each layer's calibration output error"


def test_an_energy_allocation_left_dense_names_the_energy_it_measured():
    """'keeping svd.energy 1.0 of each one's calibration output energy' was said under fisher: all too,
    where the energy is the Fisher-weighted one of the objective."""
    from compress.passes.svd_checks import allocated_note

    dense = {"a": {"rank": "dense"}}
    note = allocated_note(SVDConfig(allocation="energy", energy=1.0), dense)
    assert "keeping svd.energy 1.0 of each one's output energy in its objective (Fisher-weighted) takes" in note
    note = allocated_note(SVDConfig(allocation="energy", energy=1.0, fisher="none"), dense)
    assert "keeping svd.energy 1.0 of each one's calibration output energy takes" in note
