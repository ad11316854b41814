"""svd's notes on `ranks` patterns an earlier one shadows, where a --set gave a pattern: a --set
pattern the recipe lacks goes before the file's on purpose (docs/COMMANDS.md), so the file's it covers is
not warned about; a warning about a --set pattern names it and does not advise a reorder a --set
cannot make."""

import re
from pathlib import Path

import pytest

from compress.arch import get_adapter
from compress.recipe import load_recipe, parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux

FLUX = """\
model: flux
teacher: toy:flux
calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}
passes:
  - svd:
      fisher: none
      multiple: 1
      targets: [modulation]
      ranks: {ranks}
"""
SVD = "passes.0.svd.ranks"
BLOCK0 = "transformer_blocks.0.norm1.linear"


def _warnings(capsys, overrides, ranks="{modulation: 8}") -> list[str]:
    """The warnings the passes' checks print for FLUX with the file's `ranks` and `overrides`."""
    recipe = parse_recipe(FLUX.replace("{ranks}", ranks), "r.yaml", list(overrides))
    teacher = tiny_flux()
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    said = " ".join(capsys.readouterr().err.split()) + " " + " ".join(capsys.readouterr().out.split())
    found = [w.strip() for w in re.findall(r"warning: .*?(?= warning: |$)", said.strip())]
    return [w for w in found if " is not used " not in w]  # svd.multiple where ranks cover every target (unused_notes)


def test_a_set_pattern_that_overrides_the_files_on_purpose_is_not_warned_about(capsys):
    """--set ranks.re:norm=4 goes first and covers every layer of the file's pattern: meant."""
    assert _warnings(capsys, [f"{SVD}.re:norm=4"]) == []
    assert _warnings(capsys, [f"{SVD}.modulation=4"]) == []  # the file's pattern, replaced where it is


def test_the_readme_ranks_example_plans_without_a_warning(capsys):
    from compress.plan import make_plan

    recipe = Path(__file__).parents[2] / "recipes" / "toy-pixart.yaml"
    make_plan(load_recipe(recipe, ["passes.3.svd.ranks.adaln_single.linear=16"]))
    said = capsys.readouterr()
    assert "gives no layer its rank" not in said.out + said.err, said


def test_a_set_pattern_a_file_pattern_shadows_is_named_without_reorder_advice(capsys):
    """The file has modulation before the block's layer; the --set replaces the block's pattern where it is."""
    said = _warnings(capsys, [f"{SVD}.{BLOCK0}=4"], f"{{modulation: 8, {BLOCK0}: 16}}")
    assert said == [f"warning: r.yaml (--set {SVD}.{BLOCK0}=4): svd.ranks: pattern '{BLOCK0}' gives no layer "
                    f"its rank: 'modulation', earlier, matches every layer it does (the first matching pattern "
                    f"wins; the --set replaced the recipe's '{BLOCK0}' where the file has it, after 'modulation')"]


def test_two_set_patterns_one_shadowing_the_other_are_named_with_the_set_order(capsys):
    said = _warnings(capsys, [f"{SVD}.{BLOCK0}=4", f"{SVD}.re:transformer_blocks.0.norm1=12"])
    assert said == [f"warning: r.yaml (--set {SVD}.{BLOCK0}=4, with --set {SVD}.re:transformer_blocks.0.norm1=12): "
                    f"svd.ranks: pattern '{BLOCK0}' gives no layer its rank: 're:transformer_blocks.0.norm1', "
                    "earlier, matches every layer it does (the first matching pattern wins; both were set on the "
                    "command line: a --set pattern new to the recipe goes before the others (the last one first), "
                    "one the recipe has stays where it is)"]


@pytest.mark.parametrize("overrides, where", [
    ([], "r.yaml:9"),  # the file's own order
    ([f"{SVD}={{modulation: 8, {BLOCK0}: 16}}"], f"r.yaml (--set {SVD}={{modulation: 8, {BLOCK0}: 16}})"),
])
def test_patterns_of_one_place_in_the_wrong_order_are_advised_to_be_reordered(capsys, overrides, where):
    said = _warnings(capsys, overrides, f"{{modulation: 8, {BLOCK0}: 16}}")
    assert said == [f"warning: {where}: svd.ranks: pattern '{BLOCK0}' gives no layer its rank: 'modulation', "
                    "earlier, matches every layer it does (the first matching pattern wins); put it before "
                    "'modulation' to give those layers its rank, or remove it"]


def test_a_set_that_only_changes_a_file_patterns_value_keeps_the_files_warning(capsys):
    """--set of a pattern the file already has (its value changed where it stands) hid the file's own
    ordering warning: the file's 're:norm' is still shadowed by its 'modulation'."""
    ranks = "{modulation: 8, 're:norm': 4}"
    plain = _warnings(capsys, [], ranks)
    assert len(plain) == 1 and "put it before 'modulation'" in plain[0]
    said = _warnings(capsys, [f"{SVD}.modulation=4"], ranks)
    assert len(said) == 1 and "pattern 're:norm' gives no layer its rank" in said[0] \
        and "put it before 'modulation'" in said[0]


def test_a_dumped_recipe_whose_set_pattern_went_first_says_so_and_its_rerun_advice_allows_keeping_it(capsys):
    """An output's recipe.yaml holds a --set pattern first; rerun, the file's pattern it shadows is
    warned about, and the advice must not only be the reorder that would change the ranks."""
    from compress.recipe_dump import dump_recipe

    recipe = parse_recipe(FLUX.replace("{ranks}", f"{{{BLOCK0}: 16}}"), "r.yaml", [f"{SVD}.modulation=4"])
    dumped = dump_recipe(recipe)
    assert f"#   --set {SVD}.modulation=4" in dumped and "comes first" in dumped
    again = parse_recipe(dumped, "out/recipe.yaml")
    assert list(again.passes[0].config.ranks) == ["modulation", BLOCK0]  # as run: the --set pattern first
    teacher = tiny_flux()
    check_passes(build_passes(again), again.passes, teacher, get_adapter(teacher))
    said = " ".join(capsys.readouterr().err.split())
    assert f"pattern '{BLOCK0}' gives no layer its rank" in said and "or remove it" in said


PIXART = """\
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 4, timesteps: 2, batch_size: 16, heldout: 8}
passes:
  - svd:
      targets: [attention, mlp]
      ratio: 0.5
      multiple: 8
"""


def _pixart_warnings(capsys, overrides, text=PIXART, **model) -> list[str]:
    """The warnings the run's (and plan's) pass checks print for `text` with `overrides` on a tiny
    PixArt (its config's `model` keys replaced)."""
    from tests.conftest import tiny_pixart

    recipe = parse_recipe(text, "p1.yaml", list(overrides))
    teacher = tiny_pixart(**model)
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    said = " ".join(capsys.readouterr().err.split())
    return [w.strip() for w in re.findall(r"warning: .*?(?= warning: |$)", said.strip())]


def test_a_ratio_whose_ranks_are_floored_at_multiple_says_what_the_pass_keeps(capsys):
    """--set ratio=0.001 kept 9.9% of the targets' parameters (every rank floored at multiple 8)
    with no word; the warning names the --set that asked for less."""
    said = _pixart_warnings(capsys, ["passes.0.svd.ratio=0.001"])
    assert len(said) == 1 and said[0].startswith(
        "warning: p1.yaml (--set passes.0.svd.ratio=0.001): svd: ranks are floored at svd.multiple (8): for all "), said
    kept = re.search(r"keeps (\d+\.\d)% of its targets' parameters instead of the 0\.1% that svd\.ratio 0\.001 asks",
                     said[0])
    assert kept and float(kept.group(1)) > 1, said
    assert _pixart_warnings(capsys, []) == []  # ratio 0.5: no rank floored
    per_role = PIXART.replace("ratio: 0.5", "allocation: per_role\n      ratios: {attention: 0.001, mlp: 0.5}")
    said = _pixart_warnings(capsys, [], per_role)
    assert len(said) == 1 and said[0].startswith("warning: p1.yaml:8: svd: ranks are floored") \
        and "that svd.ratios ask" in said[0], said


def test_a_ratio_below_what_the_least_ranks_keep_says_it_cannot_be_reached(capsys):
    """Stop 54's review: ratio 0.01 at multiple 1 kept 1.9% of the toy's targets' parameters with no word: no rank
    is asked below multiple / 2 (attention 0.64, mlp 1.02 round to 1), yet rank 1, the least, keeps more than
    asked. Here (width 16: attention asks 0.8, the MLP 1.28 at ratio 0.1) the pass keeps 13.4%, said once;
    at multiple 1 the advice is no lower multiple, and a ratio the ranks can reach is not warned of."""
    said = _pixart_warnings(capsys, ["passes.0.svd.ratio=0.1", "passes.0.svd.multiple=1"])
    assert len(said) == 1 and said[0].startswith("warning: p1.yaml (--set passes.0.svd.ratio=0.1, with "), said
    assert "svd.ratio 0.1 asks 10.0% of its targets' parameters, but this pass keeps 13.4%" in said[0], said
    assert "rank 1 is the least a factorization has" in said[0], said
    assert "lower svd.multiple" not in said[0], said
    assert _pixart_warnings(capsys, ["passes.0.svd.ratio=0.2", "passes.0.svd.multiple=1"]) == []  # ranks 2, 3
    said = _pixart_warnings(capsys, ["passes.0.svd.ratio=0.4"])  # multiple 8: asks 3.2 and 5.1, gets 8 and 8
    assert len(said) == 1 and "lower svd.multiple for smaller ranks" in said[0], said


WIDTH_28 = dict(attention_head_dim=14, cross_attention_dim=28)


def test_a_pass_left_dense_by_a_set_ratio_is_warned_at_that_set(capsys):
    """--set ratio=1 was warned at the file's `multiple: 8` line (rounding named the cause: at width
    28 the MLP's unrounded ratio-1 rank, 22, saved; a ratio of 1 now keeps every layer dense, so the
    ratio is the cause), though the --set made every target dense; a --set multiple is named as
    before, and so is the file's multiple without a --set where rounding is the cause (ratio 0.99)."""
    mlp = PIXART.replace("[attention, mlp]", "[mlp]")
    said = _pixart_warnings(capsys, ["passes.0.svd.ratio=1"], mlp, **WIDTH_28)
    assert said == ["warning: p1.yaml (--set passes.0.svd.ratio=1): svd.ratio 1.0 keeps every parameter, "
                    "so every one of its 6 targets stays dense and this pass changes nothing; lower svd.ratio"], said
    said = _pixart_warnings(capsys, ["passes.0.svd.multiple=256"], mlp, **WIDTH_28)
    assert said[0].startswith("warning: p1.yaml (--set passes.0.svd.multiple=256): svd: every one of"), said
    said = _pixart_warnings(capsys, [], mlp.replace("ratio: 0.5", "ratio: 0.99"), **WIDTH_28)  # 22.2 -> 24 at 8
    assert said[0].startswith("warning: p1.yaml:8: svd: every one of its 6 targets stays dense (ranks rounded"), said


@pytest.mark.parametrize("allocation, key", [("global", "ratio"), ("energy", "energy")])
def test_a_budgeted_pass_asked_to_keep_everything_is_warned_before_it_runs(capsys, tmp_path,
                                                                         allocation, key):
    """global at ratio 1 (a budget of every parameter) and energy 1 planned without a word, where uniform's
    ratio 1 is warned; the run said it only after calibrating ('the global allocation left every one of its
    30 targets dense'). Plan's checks (the run's too) now say it at the line; after allocating, the run
    says what came of it, as before; a ratio below 1 is not warned of."""
    from tests.passes.svd_helpers import run_svd

    text = PIXART.replace("ratio: 0.5", f"allocation: {allocation}")
    said = _pixart_warnings(capsys, [f"passes.0.svd.{key}=1"], text)
    asked = ("gives the global allocation a budget of every parameter" if key == "ratio"
             else "keeps all of each target's energy in its objective")
    assert said == [f"warning: p1.yaml (--set passes.0.svd.{key}=1): svd.{key} 1.0 {asked}, so it leaves its "
                    "18 targets dense except where the calibration spans so few of a target's directions that a "
                    "factorization keeps all of them with fewer parameters: this pass changes little or nothing; "
                    f"lower svd.{key}"], said
    assert _pixart_warnings(capsys, [f"passes.0.svd.{key}=0.9"], text) == []
    _, report, _ = run_svd("pixart", tmp_path, targets=["attention", "mlp"], allocation=allocation, **{key: 1.0},
                           compensate=False)
    assert {r["rank"] for r in report["layers"].values()} == {"dense"}
    err = " ".join(capsys.readouterr().err.split())  # after it allocates, the run says which: nothing
    assert err.count("warning: ") == 1 and "allocation left every one of its 18 targets dense" in err, err


def test_a_budget_of_every_parameter_factorizes_only_what_the_calibration_spans_in_fewer_directions(tmp_path):
    """What the warning says 'except where': one caption token per row lets cross-attention's k/v read
    4 directions of 16, and global at ratio 1 (energy 1 alike) factorizes them at rank 4 with no loss."""
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDConfig, SVDPass
    from tests.conftest import tiny_pixart
    from tests.passes.test_svd_global import one_token_captions

    model = tiny_pixart()
    batches = one_token_captions(model)
    ctx = RunContext(adapter=get_adapter(model), family="pixart", teacher=model, run_dir=tmp_path,
                     calibration_inputs=lambda: batches, fingerprint="fp")
    SVDPass(SVDConfig(targets=["cross_attention"], allocation="global", ratio=1.0, multiple=2, compensate=False,
                      progress=False)).run(model, ctx)
    ranks = {n: r["rank"] for n, r in ctx.report["svd"]["layers"].items()}
    assert ranks["transformer_blocks.0.attn2.to_k"] == 4 and ranks["transformer_blocks.0.attn2.to_q"] == "dense"


def test_an_ignore_pattern_naming_none_of_the_targets_is_warned_of_at_its_line(capsys):
    """`ignore: [modulation]` with `targets: [attention, mlp]` left nothing out and was accepted silently (T3),
    while an ignore pattern naming no layer of the model is an error: now a warning at its line; an ignore
    pattern naming some target (re:to_q) is not warned of."""
    text = FLUX.replace("targets: [modulation]", "targets: [attention, mlp]\n      ignore: [re:to_q, modulation]")
    recipe = parse_recipe(text.replace("{ranks}", "{}"), "r.yaml", [])
    teacher = tiny_flux()
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    said = " ".join((capsys.readouterr().err + capsys.readouterr().out).split())
    warned = [w.strip() for w in re.findall(r"warning: .*?(?= warning: |$)", said.strip())]
    assert [w for w in warned if "svd.ignore" in w] == [
        "warning: r.yaml:9: svd.ignore: pattern 'modulation' names transformer_blocks.0.norm1.linear, "
        "transformer_blocks.0.norm1_context.linear, transformer_blocks.1.norm1.linear …, none of which "
        "svd.targets targets, so it leaves nothing out; remove it, or add its layers to svd.targets"], warned
