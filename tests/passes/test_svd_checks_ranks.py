"""compress.passes.svd_checks and svd_notes on ranks: hints for ranks keys YAML read wrong, the note of a
pass whose ranks save nothing, and targets an earlier (budgeted) svd pass factorizes or may."""

import re

import pytest
import yaml

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from compress.passes.svd import SVDConfig, SVDPass
from tests.conftest import tiny_flux
from tests.passes.svd_helpers import context

pytestmark = pytest.mark.usefixtures("one_thread")


def _unchanged(**cfg):
    from compress.arch.base import LinearInfo
    from compress.passes.svd_notes import unchanged_note

    targets = [LinearInfo(f"blocks.0.{p}", "attention", p, "double", 0, 64, 64, "x") for p in ("q", "k")]
    return unchanged_note(SVDConfig(**cfg), targets)


def test_ratio_one_is_named_the_cause_of_an_svd_pass_that_changes_nothing_not_rounding():
    """ratio 1.0, multiple 1: said 'ranks rounded up to a multiple of 1 save no parameters'."""
    key, said, reads = _unchanged(ratio=1.0, multiple=1)
    assert key == "ratio" and "rounded" not in said, said
    assert reads == ("targets", "ignore", "allocation", "ratio", "ranks")  # not multiple: a --set of it is not named
    assert said == ("svd.ratio 1.0 keeps every parameter, so every one of its 2 targets stays dense and "
                    "this pass changes nothing; lower svd.ratio")
    assert _unchanged(ratio=1.0, multiple=16)[0] == "ratio"  # rounding is not why either


def test_rounding_is_named_the_cause_only_where_unrounded_ranks_would_save():
    key, said, reads = _unchanged(ratio=0.9, multiple=64)
    assert key == "multiple" and "rounded up to a multiple of 64 save no parameters" in said, said
    assert "ratio" in reads and said.endswith("; lower svd.multiple or svd.ratio")
    key, said, reads = _unchanged(allocation="per_role", ratios={"attention": 0.9}, multiple=64)
    assert key == "multiple" and said.endswith("; lower svd.multiple or svd.ratios"), said  # it said svd.ratio,
    assert "ratios" in reads and "ratio" not in reads  # which per_role does not read
    key, said, reads = _unchanged(ranks={"re:.*": 40}, multiple=1)
    assert key == "ranks" and "svd.ranks are at or above" in said, said
    assert reads == ("targets", "ignore")  # every target's rank explicit: not ratio, allocation nor multiple


def test_an_explicit_rank_past_break_even_is_said_in_a_pass_that_changes_nothing():
    """ranks {x: 13} at a 16×64 layer (break-even 12.8) with every other target dense by rounding said only
    'every one of its 6 targets stays dense (ranks rounded up ...)': the break-even note, said where another
    target was factorized, was dropped. Now both, in one line at the first one's key."""
    key, said, reads = _unchanged(ratio=0.9, multiple=64, ranks={"blocks.0.q": 40})
    assert key == "multiple" and said.startswith("svd: every one of its 2 targets stays dense (ranks rounded"), said
    assert said.endswith("; lower svd.multiple or svd.ratio; svd.ranks: rank 40 for 'blocks.0.q' is at or above the "
                         "break-even rank m·n/(m+n) of its target (64×64: 32), where the factors hold as many "
                         "parameters as the weight, so it stays dense; give a rank below 32 to factorize it"), said
    assert "multiple" in reads and "ranks" in reads
    key, said, _ = _unchanged(ranks={"re:.*": 40}, multiple=1)  # svd.ranks named the cause already: said once
    assert key == "ranks" and "break-even" not in said, said


def test_the_rank_the_break_even_note_advises_factorizes_at_any_multiple(tmp_path):
    """'give a rank below 13' (a 16x64 target, break-even 12.8) holds at multiple 16 too: explicit ranks are
    taken as written, never rounded to svd.multiple (RECIPES.md), so rank 12 factorizes at rank 12."""
    from compress.passes.svd_notes import dense_ranks_note
    from tests.passes.svd_helpers import run_svd

    name = "transformer_blocks.1.ff.net.2"  # tiny Flux: 16x64
    model = tiny_flux()
    targets = get_adapter(model).linears(model)
    _, said, _ = dense_ranks_note(SVDConfig(multiple=16, ranks={name: 13}), targets)
    assert said.endswith("(16×64: 12.8), where the factors hold as many parameters as the weight, so it stays dense; "
                         "give a rank below 13 to factorize it"), said
    model, _, _ = run_svd("flux", tmp_path, multiple=16, ratio=0.9, ranks={name: 12})
    assert isinstance(model.get_submodule(name), LowRankLinear) and model.get_submodule(name).rank == 12


RATIO_ONE = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 1.0}\n"


def test_ratio_one_plans_every_target_dense_and_says_so(capsys):
    """'- svd: {ratio: 1.0}' on the toy PixArt (multiple 16) planned 'ranks: 96 ×12, dense ×24' with no
    warning: its 512x128 MLPs' ratio-1 rank, 102.4, rounded to 96, below break-even (94% kept)."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    step = make_plan(parse_recipe(RATIO_ONE, "r.yaml"))["passes"][0]
    assert set(step["ranks"].values()) == {"dense"} and step["params_after"] == step["params_before"], step
    assert "r.yaml:4: svd.ratio 1.0 keeps every parameter" in capsys.readouterr().err


def test_ratio_one_runs_every_target_dense(tmp_path):
    """As plan: the tiny PixArt's 64x16 MLPs (break-even 12.8) ran at rank 12 under ratio 1.0 (multiple 2)."""
    from tests.passes.svd_helpers import run_svd

    model, report, _ = run_svd("pixart", tmp_path, ratio=1.0)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert {r["rank"] for r in report["layers"].values()} == {"dense"}, report["layers"]


@pytest.mark.parametrize("cfg", [{"ratio": 1.0}, {"multiple": 200},
                                 {"allocation": "per_role", "ratios": {"attention": 1.0, "mlp": 1.0},
                                  "targets": ["attention", "mlp"]}])
def test_a_pass_whose_known_ranks_keep_every_target_dense_skips_calibration(tmp_path, monkeypatch, capsys, cfg):
    """T3: ratio 1 (or multiple 200) on the toy calibrated every block (86 s) to write the teacher back. Ranks
    known before calibration all dense: no calibration input read, no block calibrated; every record dense,
    with no loss (none measured), the teacher's weights untouched."""
    import torch

    from compress.calib import BlockCalibration
    from tests.passes.svd_helpers import MAKERS, context

    monkeypatch.setattr(BlockCalibration, "__init__", lambda *a, **k: pytest.fail("calibrated"))
    model = MAKERS["pixart"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = context(model, tmp_path)
    ctx.calibration_inputs = lambda: pytest.fail("calibration inputs read")
    SVDPass(SVDConfig(**{"multiple": 2, "modulation_grid": 4, "progress": False, **cfg})).run(model, ctx)
    report = ctx.report["svd"]
    assert "calibration skipped" in capsys.readouterr().err
    assert {r["rank"] for r in report["layers"].values()} == {"dense"}, report["layers"]
    assert not any("loss" in r for r in report["layers"].values()), report["layers"]
    assert report["params_after"] == report["params_before"] and report["kept_ratio"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("ranks, hinted", [("{modulation:8}", True), ("{'re:norm:8': 0}", False),
                                           ("{modulation: null}", False)])
def test_a_ranks_flow_map_without_a_space_after_the_colon_is_hinted(ranks, hinted):
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    said = str(e.value)
    if hinted:  # refused as the YAML is read (recipe_yaml, 33e2dda), before the svd keys are checked
        assert said == ("r.yaml:5: malformed YAML (no space after ':' in 'modulation:8', which YAML reads as the key "
                        "'modulation:8' without a value; write 'modulation: 8')"), said
    else:
        assert "must be an integer" in said and "with a space" not in said, said


@pytest.mark.parametrize("ranks, sets", [("{'modulation:8'}", ()), ("{modulation:8: null}", ()),
                                         ("\n        modulation:8: ~", ()),
                                         ("{modulation: 8}", ("passes.0.svd.ranks={'modulation:8'}",))])
def test_a_ranks_key_with_a_colon_past_the_yaml_check_is_still_hinted(ranks, sets):
    """recipe_yaml refuses only a plain key with nothing after it ({modulation:8}); a quoted key, an
    explicit null (block or flow) or a --set of either reaches svd_checks, whose hint names the space."""
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(sets))
    where = f"r.yaml (--set {sets[0]})" if sets else f"r.yaml:{5 + ranks.count(chr(10))}"
    assert str(e.value) == (f"{where}: svd.ranks: rank null for 'modulation:8' must be an integer ≥ 1 (YAML reads "
                            "'modulation:8' as one key without a value: write 'modulation: 8', with a space)")


@pytest.mark.parametrize("ranks, sets, hint", [
    ("{'re:norm:8'}", (), "quote the pattern alone, then its rank: 're:norm': 8"),
    ("{'re:[ab]:8'}", (), "quote the pattern alone, then its rank: 're:[ab]': 8"),
    ("{re:linear:8: null}", (), "quote the pattern alone, then its rank: 're:linear': 8"),
    ("{'modulation: 8'}", (), "quote the pattern alone, then its rank: 'modulation': 8"),
    ("{modulation: 8}", ("passes.0.svd.ranks={'re:(?:attn1|attn2):8'}",),
     "quote the pattern alone, then its rank: 're:(?:attn1|attn2)': 8"),
    ("{'re:8'}", (), None),
])
def test_a_quoted_or_regex_ranks_key_is_hinted_to_quote_the_pattern_alone(ranks, sets, hint):
    """'re:[ab]:8' was told to write 're:[ab]: 8' (one key again where quoted, a YAML error in a flow
    mapping unquoted), 'modulation: 8' to write 'modulation: 8' (what it wrote), 're:8' to write 're: 8'
    ('re' is no pattern: the key is the regex 8, without a rank)."""
    from compress.recipe import parse_recipe

    text = f"model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      ranks: {ranks}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml", list(sets))
    pattern = yaml.safe_load(sets[0].partition("=")[2] if sets else ranks).popitem()[0]
    said = f"svd.ranks: rank null for '{pattern}' must be an integer ≥ 1"
    assert str(e.value).endswith(said + (f" (YAML reads '{pattern}' as one key without a value: {hint})" if hint else ""))


MODULATION = {"targets": ["modulation"], "ignore": ["norm_out.linear"], "multiple": 1, "modulation_grid": 4,
              "progress": False}  # norm_out.linear's trust range stops below its break-even rank


def _planned_then_checked(first: dict, second: dict | None = None):
    """A budgeted svd pass `first` planned on a meta tiny Flux (its ranks decided after calibration:
    left dense there), then pass `second` (default: the same targets again) checked -> its notes."""
    meta = tiny_flux()
    adapter = get_adapter(meta)
    SVDPass(SVDConfig(**{**MODULATION, **first})).apply_planned(meta, adapter)
    later = SVDPass(SVDConfig(**{**MODULATION, **(second or {})}))
    later.check(meta, adapter)
    return later.notes(meta, adapter)


@pytest.mark.parametrize("first, words", [
    # the trust range (ceil(r0/1.5)..floor(1.5·r0)) stops below the break-even rank: factorized
    ({"allocation": "global", "ratio": 0.5, "trust_region": 1.5},
     r"are already factorized \(by an earlier svd pass: its global allocation gives them ranks that save "
     r"parameters whatever calibration finds\); leave them out with svd\.ignore"),
    # each may go dense, but a budget of half their parameters cannot keep them all dense
    ({"allocation": "global", "ratio": 0.5},
     r"are already factorized, some of them at least \(by an earlier svd pass: its global allocation, keeping "
     r"0\.5 of its targets' parameters, cannot leave them all dense; which it factorizes, it decides after "
     r"calibration\)"),
    ({"allocation": "global", "ratio": 0.5, "trust_region": None}, "some of them at least"),
])
def test_targets_an_earlier_global_pass_surely_factorizes_are_refused_before_compute(first, words):
    """Only the ranks of fixed allocations were placed on plan's meta model: a second pass over the
    targets of a global one passed every check, and the run stopped when it started, after hours of
    the first pass's calibration and Fisher sweeps on Flux."""
    with pytest.raises(UserError, match=r"^svd: transformer_blocks\.0\.norm1\.linear, .* " + words):
        _planned_then_checked(first)


@pytest.mark.parametrize("first", [
    {"allocation": "energy"},  # each target's rank follows its spectrum
    {"allocation": "global", "ratio": 1.0},  # a budget of every parameter may keep them all dense
])
def test_targets_an_earlier_budgeted_pass_may_factorize_are_warned(first):
    notes = _planned_then_checked(first)
    assert [key for key, *_ in notes] == ["targets"] and notes[0][2] == ("ignore",)
    assert re.match(rf"svd: transformer_blocks\.0\.norm1\.linear, .* are factorized by an earlier svd pass if "
                    rf"its {first['allocation']} allocation, decided after calibration, gives them ranks that save "
                    r"parameters; then the run stops when this pass starts", notes[0][1]), notes


def test_a_second_pass_over_some_of_a_global_pass_s_targets_is_warned_not_refused():
    """The budget factorizes some of the first pass's targets, not necessarily the one named again."""
    notes = _planned_then_checked({"allocation": "global", "ratio": 0.5},
                                  {"targets": ["transformer_blocks.0.norm1.linear"], "ignore": []})
    assert len(notes) == 1 and notes[0][1].startswith("svd: transformer_blocks.0.norm1.linear is factorized by")


@pytest.mark.parametrize("first", [
    {"allocation": "global", "ratio": 0.5, "multiple": 16},  # no rank in multiples of 16 saves: dense
    {"allocation": "energy", "multiple": 16},
    {"allocation": "global", "ratio": 0.5, "targets": ["attention"], "ignore": []},  # other targets
])
def test_targets_an_earlier_budgeted_pass_leaves_dense_are_allowed(first):
    assert _planned_then_checked(first) == []


def test_what_the_check_says_a_global_pass_surely_factorizes_it_does(tmp_path):
    """The check's reading of the allocation against a run of it on the tiny Flux: every target
    `sure` is factorized; of `some`, at least one."""
    from compress.passes.svd_planned import PLANNED_BY

    for first in ({"allocation": "global", "ratio": 0.5, "trust_region": 1.5},
                  {"allocation": "global", "ratio": 0.5}):
        meta, model = tiny_flux(), tiny_flux()
        adapter = get_adapter(model)
        config = SVDConfig(**{**MODULATION, **first, "fisher": "none"})
        SVDPass(config).apply_planned(meta, adapter)
        marks = {i.name: getattr(meta.get_submodule(i.name), PLANNED_BY) for i in adapter.linears(meta)
                 if hasattr(meta.get_submodule(i.name), PLANNED_BY)}
        SVDPass(config).run(model, context(model, tmp_path))
        factorized = {n for n in marks if isinstance(model.get_submodule(n), LowRankLinear)}
        sure = {n for n, (_, is_sure) in marks.items() if is_sure}
        assert sure <= factorized and factorized, (first, sure, factorized)
        assert sure or next(iter(marks.values()))[0].some


@pytest.mark.parametrize("allocation", ["energy", "global"])  # global below ratio 1: refused (too small a budget)
def test_a_budgeted_pass_no_rank_of_whose_multiple_saves_is_warned_before_compute(allocation, tmp_path, capsys):
    """No rank in multiples of 16 saves parameters on the tiny Flux's modulation linears: whatever the
    allocation finds, the pass changes nothing, which plan can say (and the run says once)."""
    cfg = {**MODULATION, "allocation": allocation, "multiple": 16, "fisher": "none",
           **({"ratio": 1.0, "sensitivity": False} if allocation == "global" else {})}
    meta = tiny_flux()
    svd = SVDPass(SVDConfig(**cfg))
    svd.check(meta, get_adapter(meta))
    notes = svd.notes(meta, get_adapter(meta))
    assert notes == [("multiple", f"svd: every one of its {len(svd.resolved.targets(meta, get_adapter(meta))[1])} "
                                  "targets stays dense (ranks in multiples of 16 save no parameters at these widths, "
                                  f"whatever the {allocation} allocation finds), so this pass changes nothing; lower "
                                  "svd.multiple", ("targets", "ignore", "allocation", "ranks"))]
    model = tiny_flux()
    SVDPass(SVDConfig(**cfg)).run(model, context(model, tmp_path))
    assert "warning" not in capsys.readouterr().err  # the plan's note said it
    rest = SVDPass(SVDConfig(**{**cfg, "multiple": 1})).notes(meta, get_adapter(meta))
    assert [key for key, *_ in rest] == (["ratio"] if allocation == "global" else [])  # ratio 1: a budget of all
