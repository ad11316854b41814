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
    from compress.passes.svd_notes import allocated_note

    dense = {"a": {"rank": "dense"}}
    note = allocated_note(SVDConfig(allocation="energy", energy=1.0), dense)
    assert "keeping svd.energy 1.0 of each one's output energy in its objective (Fisher-weighted) takes" in note
    note = allocated_note(SVDConfig(allocation="energy", energy=1.0, fisher="none"), dense)
    assert "keeping svd.energy 1.0 of each one's calibration output energy takes" in note


def _recipe_error(rank: str) -> str:
    import pytest

    from compress.errors import UserError
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {{attention: {rank}}}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    return str(e.value)


def test_a_bad_explicit_rank_is_shown_as_yaml_writes_it():
    """'svd.ranks: rank None' / 'rank True' showed Python's reprs of YAML's null and true."""
    assert _recipe_error("null") == "r.yaml:5: svd.ranks: rank null for 'attention' must be an integer ≥ 1"
    assert _recipe_error("true") == "r.yaml:5: svd.ranks: rank true for 'attention' must be an integer ≥ 1"
    assert _recipe_error("1_000").endswith("rank '1_000' for 'attention' must be an integer ≥ 1 (write 1000: "
                                           "a YAML 1.2 number has no '_' or ',')")
    assert _recipe_error("8.0").endswith("(an integer is written without a dot or exponent: 8)")


def test_explicit_ranks_at_the_break_even_rank_are_warned_to_leave_layers_dense():
    """ranks.attention: 64 on 128x128 layers made them dense without a word (plan: 'dense x24'),
    though ranks are taken as written and ratio: 1 is warned of. Tiny PixArt: 16x16 attention
    (break-even 8), 64x16 / 16x64 MLP (break-even 12.8)."""
    from compress.arch import get_adapter
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart

    model = tiny_pixart()
    adapter = get_adapter(model)
    p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, ranks={"attention": 8, "mlp": 4}))
    p.check(model, adapter)
    (key, said), = p.notes(model, adapter)
    assert key == "ranks.attention"
    assert said == ("svd.ranks: rank 8 for 'attention' is at or above the break-even rank m·n/(m+n) of its 12 "
                    "targets (16×16: 8), where the factors hold as many parameters as the weight, so they stay "
                    "dense; give a rank below 8 to factorize them")
    p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, ranks={"re:ff": 13}))
    p.check(model, adapter)
    (key, said), = p.notes(model, adapter)
    assert key == "ranks.re:ff" and "of its 6 targets (64×16: 12.8; 16×64: 12.8)" in said, said
    p = SVDPass(SVDConfig(targets=["attention"], ratio=0.5, multiple=2,
                          ranks={"transformer_blocks.0.attn1.to_q": 9}))
    p.check(model, adapter)
    (key, said), = p.notes(model, adapter)
    assert "of its target (16×16: 8), where the factors hold as many parameters as the weight, so it stays " \
           "dense; give a rank below 8 to factorize it" in said, said
    quiet = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, ranks={"attention": 7}))
    quiet.check(model, adapter)
    assert quiet.notes(model, adapter) == []
    for allocation in ("global", "energy"):  # a budgeted pass takes its explicit ranks as written too
        p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, allocation=allocation,
                              ranks={"attention": 8}))
        p.check(model, adapter)
        assert [k for k, _ in p.notes(model, adapter)] == ["ranks.attention"], allocation


def test_a_pass_whose_grams_are_mostly_clamped_is_warned_once():
    from compress.passes.svd_checks import clamped_words

    def rec(clamped, shape=(16, 16), data_rank=4):
        return {"clamped": clamped, "shape": list(shape), "data_rank": data_rank}

    assert clamped_words({"a": rec(True), "b": rec(False)}) is None  # half: not most
    # a modulation linear's rows are the modulation grid's timesteps: more prompts would not help
    assert clamped_words({"adaln_single.linear": {**rec(True), "role": "modulation"}}) is None
    said = clamped_words({"a": rec(True), "b": rec(True, (64, 16), 5), "c": rec(False)})
    assert said.startswith("svd: 2 of this pass's 3 targets had calibration data spanning fewer directions than "
                           "the layer is wide (the widest, b 64×16, 5 of 16): too few calibration rows"), said


def test_the_sequential_and_asymmetric_refusals_share_one_wording_by_target_kind():
    """svd_checks' sequential refusal and svd.py's asymmetric one were two copies of a three-way reason
    (conditioning, top level, other) and of the message around it; one helper, refused_on_all, words
    both: each kind's reason once, sorted, at the key, reading the pass's targets and ignore."""
    from compress.arch.base import LinearInfo
    from compress.passes.svd_checks import refused_on_all, target_kind

    def info(name, role, group):
        return LinearInfo(name, role, "x", group, None if group is None else 0, 4, 4, name)

    mod, top, kv = (info("norm.linear", "modulation", "blocks"), info("proj_out", "output", None),
                    info("blocks.0.attn2.to_k", "attention", "blocks"))
    assert [target_kind(i) for i in (mod, top, kv)] == ["conditioning", "top level", "block"]
    caption = LinearInfo("blocks.0.attn2.to_k", "attention", "x", "blocks", 0, 4, 4, "encoder_hidden_states")
    assert target_kind(caption) == "caption"  # an input shared by all blocks
    reasons = {"conditioning": "c", "top level": "a", "block": "b"}
    e = refused_on_all("sequential", [kv, mod, top, kv], "can X", reasons)
    assert (e.key, e.reads) == ("sequential", ("targets", "ignore"))
    assert str(e) == ("svd.sequential: true, but none of this pass's 4 targets can X: a; b; c; leave "
                      "svd.sequential out (auto), or target block linears (attention, mlp)")
