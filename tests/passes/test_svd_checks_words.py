"""compress.passes.svd_checks' and svd_notes' words: the energy allocation's dense note, explicit ranks shown
as YAML writes them, the refusals worded by target kind."""

from compress.passes.svd import SVDConfig


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
    # (errors.as_yaml, as a recipe's other values: svd_values' own said 'rank a list')
    assert _recipe_error("[8, 16]") == "r.yaml:5: svd.ranks: rank [8, 16] for 'attention' must be an integer ≥ 1"


def test_explicit_ranks_at_the_break_even_rank_are_warned_to_leave_layers_dense():
    """ranks.attention: 64 on 128x128 layers made them dense without a word (plan: 'dense x24'),
    though ranks are taken as written and ratio: 1 is warned of. Tiny PixArt: 16x16 attention
    (break-even 8), 64x16 / 16x64 MLP (break-even 12.8)."""
    from compress.arch import get_adapter
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart

    model = tiny_pixart()
    adapter = get_adapter(model)
    p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, ranks={"attention": 8, "mlp": 4}))
    p.check(model, adapter)
    (key, said, reads), = p.notes(model, adapter)
    assert key == "ranks.attention" and reads == ("targets", "ignore", "ranks")  # not ratio, multiple
    assert said == ("svd.ranks: rank 8 for 'attention' is at or above the break-even rank m·n/(m+n) of its 12 "
                    "targets (16×16: 8), where the factors hold as many parameters as the weight, so they stay "
                    "dense; give a rank below 8 to factorize them")
    p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, ranks={"re:ff": 13}))
    p.check(model, adapter)
    (key, said, _), = p.notes(model, adapter)
    assert key == "ranks.re:ff" and "of its 6 targets (64×16: 12.8; 16×64: 12.8)" in said, said
    p = SVDPass(SVDConfig(targets=["attention"], ratio=0.5, multiple=2,
                          ranks={"transformer_blocks.0.attn1.to_q": 9}))
    p.check(model, adapter)
    (key, said, _), = p.notes(model, adapter)
    assert "of its target (16×16: 8), where the factors hold as many parameters as the weight, so it stays " \
           "dense; give a rank below 8 to factorize it" in said, said
    quiet = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, ranks={"attention": 7}))
    quiet.check(model, adapter)
    assert quiet.notes(model, adapter) == []
    for allocation in ("global", "energy"):  # a budgeted pass takes its explicit ranks as written too
        p = SVDPass(SVDConfig(targets=["attention", "mlp"], ratio=0.5, multiple=2, allocation=allocation,
                              ranks={"attention": 8}))
        p.check(model, adapter)
        assert [k for k, *_ in p.notes(model, adapter)] == ["ranks.attention"], allocation


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
