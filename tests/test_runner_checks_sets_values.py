"""compress.runner_checks and the recipe loader: an error of a pass's value checks, or a calibration
note, at a line of the file names the --sets of the keys its check read alone (errors.BadValue.reads,
a note's third item), as tests/test_runner_checks_sets.py's checks do: a --set of another key of the
pass did not cause it. Each of these named every --set of its pass before; a key the check read (or
the key itself, where it reads no other) is still named."""

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux
from tests.test_runner_checks import FLUX, _check  # a tiny Flux (double 2, single 3 blocks), as plan checks it

S, R, D, IMP = "passes.0.svd.", "passes.0.remove_blocks.", "passes.0.distill.", "passes.0.importance."
GLOBAL = "  - svd:\n      targets: [attention]\n      allocation: global\n      ratio: 0.05\n"  # ratio at line 8
BELOW = "svd.ratio 0.05 is below what global allocation can keep"
PAST = "  - svd:\n      targets: [single_transformer_blocks.5.proj_out]\n      ratio: 0.5\n"  # targets at line 6
REMOVED = ("  - remove_blocks: {blocks: {single: [2]}}\n"
           "  - svd:\n      targets: [single_transformer_blocks.2.proj_out]\n")  # targets at line 7
UNIFORM_RATIOS = ("  - svd:\n      targets: [attention, mlp]\n      allocation: uniform\n"
                  "      ratios: {attention: 0.5}\n")  # ratios at line 8
NO_LAYER = "svd.targets: pattern 'single_transformer_blocks.{}.proj_out' matches no linear layer"


def _refused(text: str, sets: list[str]) -> str:
    """The error `_check` raises for the passes `text` with `sets` (--set KEY=VALUE)."""
    with pytest.raises(UserError) as e:
        _check(text, sets)
    return str(e.value)


@pytest.mark.parametrize("text, sets, said", [
    # global's budget reads which layers are targets, ranks, multiple, trust_region: not fisher
    (GLOBAL, [S + "fisher=none"], f"r.yaml:8: {BELOW}"),  # it said 'r.yaml:5 (with --set ...fisher=none)'
    (GLOBAL, [S + "multiple=4", S + "fisher=none"], f"r.yaml:8 (with --set {S}multiple=4): {BELOW}"),
    # a pattern naming a block past the last (or one a removal took) reads the model alone
    (PAST, [S + "ratio=0.3"], "r.yaml:6: " + NO_LAYER.format(5)),
    # per_role's ratios against the targeted roles read targets, ignore and the allocation: not multiple
    (UNIFORM_RATIOS, [S + "allocation=per_role", S + "multiple=8"],
     f"r.yaml:8 (with --set {S}allocation=per_role): svd.ratios has no ratio for targeted role(s) mlp"),
    (REMOVED, ["passes.1.svd.ratio=0.3"], "r.yaml:7: " + NO_LAYER.format(2) + " of the model: teacher block 2"),
    (REMOVED, ["passes.1.svd.targets=[single_transformer_blocks.2.proj_out]", "passes.1.svd.ratio=0.3"],
     "r.yaml (--set passes.1.svd.targets=[single_transformer_blocks.2.proj_out]): " + NO_LAYER.format(2)),
])
def test_an_svd_check_names_the_sets_of_the_keys_it_read_alone(text, sets, said):
    refused = _refused(text, sets)
    assert refused.startswith(said), refused


LEARNED = "  - remove_blocks:\n      count: 1\n      criterion: learned\n"  # criterion at line 7
WINDOW = "  - remove_blocks:\n      count: {double: 1, single: 2}\n      criterion: learned\n      window: 1\n"
BOTH = "  - remove_blocks:\n      count: 1\n      fraction: 0.5\n      criterion: proxy\n"  # fraction at line 7
PER_GROUP = "remove_blocks.criterion: learned takes a budget per group"
LOSE_ALL = "remove_blocks: criterion learned, group 'double': the window of blocks 0..0 would lose all 1"
ONE_OF = "remove_blocks: give exactly one of blocks, count, fraction"


@pytest.mark.parametrize("text, sets, said", [
    # a count or index against the model's blocks reads that value alone
    ("  - remove_blocks:\n      count: {double: 2}\n      criterion: proxy\n", [R + "iterative=true"],
     "r.yaml:6: remove_blocks: removing 2 of 2 blocks would leave group 'double' empty"),
    ("  - remove_blocks:\n      count: {triple: 1}\n      criterion: proxy\n", [R + "iterative=true"],
     "r.yaml:6: flux has no block group 'triple'"),
    ("  - remove_blocks:\n      count: 4\n      criterion: proxy\n", [R + "iterative=true"],
     "r.yaml:6: remove_blocks: removing 4 of 5 blocks would leave a group empty"),
    ("  - remove_blocks:\n      blocks: {double: [0, 5]}\n", [R + "iterative=false"],
     "r.yaml:6: remove_blocks: block index 5 out of range for group 'double'"),
    # criterion learned's budget per group reads count or fraction, its windows those and window: not learn_*
    (LEARNED, [R + "learn_steps=5"], f"r.yaml:7: {PER_GROUP}"),
    (LEARNED, [R + "count=2", R + "learn_steps=5"], f"r.yaml:7 (with --set {R}count=2): {PER_GROUP}"),
    (WINDOW, [R + "learn_lr=0.001"], f"r.yaml:8: {LOSE_ALL}"),
    (WINDOW, [R + "count={double: 1}", R + "learn_lr=0.001"],
     f"r.yaml:8 (with --set {R}count={{double: 1}}): {LOSE_ALL}"),
    # exactly one of blocks, count, fraction: at the last given (it was the pass's line), with their --sets
    (BOTH, [R + "iterative=true"], f"r.yaml:7: {ONE_OF} (got count, fraction)"),
    (LEARNED.replace("learned", "proxy"), [R + "fraction=0.5", R + "iterative=true"],
     f"r.yaml (--set {R}fraction=0.5): {ONE_OF} (got count, fraction)"),
])
def test_a_removal_check_names_the_sets_of_the_keys_it_read_alone(text, sets, said):
    refused = _refused(text, sets)
    assert refused.startswith(said), refused


@pytest.mark.parametrize("text, sets, said", [
    # train: factors reads the passes before it, no other key of its own
    ("  - distill:\n      train: factors\n      lr: 0.0005\n", [D + "lr=0.001"],
     "r.yaml:6: distill.train: factors, but"),
    # buckets' range (importance and remove_blocks, checked as the recipe loads) reads buckets alone
    ("  - importance:\n      buckets: 0\n", [IMP + "proxy_only=true"],
     "r.yaml:6: importance.buckets must be an integer ≥ 1, got 0"),
    ("  - remove_blocks:\n      count: 1\n      buckets: 0\n", [R + "iterative=true"],
     "r.yaml:7: remove_blocks.buckets must be an integer ≥ 1, got 0"),
])
def test_a_distill_or_buckets_check_names_no_set_of_another_key(text, sets, said):
    refused = _refused(text, sets)
    assert refused.startswith(said), refused


def _check_with(text: str, sets: list[str], inputs: str) -> None:
    """`_check`, with the recipe's calibration and a source of kind `inputs` (its notes and data check)."""
    recipe = parse_recipe(FLUX.format(passes=text), "r.yaml", sets)
    teacher = tiny_flux()
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), inputs, recipe.calibration)


BUCKETS = "  - importance:\n      buckets: 9\n      proxy_only: true\n"  # buckets at line 6; 4 × 2 inputs
MORE = "importance.buckets 9 is more than the"
TOY = "  - distill:\n      steps: 30\n      lr: 0.0005\n"  # data (toy) left out: the pass's line, 5


@pytest.mark.parametrize("sets, said", [
    ([IMP + "proxy_only=false"], f"r.yaml:6: {MORE} 8 noise levels"),  # 'r.yaml:6 (with --set ...proxy_only=false)'
    (["calibration.timesteps=1", IMP + "proxy_only=false"], f"r.yaml:6 (with --set calibration.timesteps=1): {MORE} 4"),
])
def test_the_buckets_note_names_the_sets_of_the_calibration_keys_it_read(capsys, sets, said):
    """More buckets than noise levels reads buckets and the calibration's num_prompts and timesteps
    (a synthetic source), not proxy_only."""
    _check_with(BUCKETS, sets, "synthetic")
    warned = " ".join(capsys.readouterr().err.split())
    assert f"warning: {said}" in warned, warned


def test_data_toy_on_another_source_names_the_sets_of_data_and_the_source_alone(capsys):
    """data: toy on a synthetic source (warned) or a pipeline's (refused) reads data and
    calibration.source: a --set of lr is not named, one of the source is."""
    _check_with(TOY, [D + "lr=0.001"], "synthetic")
    warned = " ".join(capsys.readouterr().err.split())
    assert "warning: r.yaml:5: distill.data: toy with calibration.source synthetic" in warned, warned
    with pytest.raises(UserError) as e:
        _check_with(TOY, [D + "lr=0.001"], "pipeline")
    assert str(e.value).startswith("r.yaml:5: distill.data: toy trains on the toy data"), str(e.value)
    _check_with(TOY, [D + "data=toy", D + "lr=0.001"], "synthetic")
    warned = " ".join(capsys.readouterr().err.split())
    assert f"warning: r.yaml (--set {D}data=toy): distill.data: toy with" in warned, warned
    _check_with(TOY, ["calibration.source=synthetic", D + "lr=0.001"], "synthetic")
    warned = " ".join(capsys.readouterr().err.split())
    assert "warning: r.yaml:5 (with --set calibration.source=synthetic): distill.data: toy with" in warned, warned
    with pytest.raises(UserError) as e:
        _check_with(TOY, ["calibration.source=synthetic", D + "lr=0.001"], "pipeline")  # as a pipeline's kind
    assert str(e.value).startswith("r.yaml:5 (with --set calibration.source=synthetic): distill.data: toy trains")


def test_dit_compress_importance_names_no_set_of_another_key_at_buckets(tmp_path):
    """`dit-compress importance RECIPE --set ...`: the recipe's buckets refused at their line alone."""
    from compress.commands_importance import _importance_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(FLUX.format(passes="  - importance:\n      buckets: 0\n"))
    with pytest.raises(UserError) as e:
        _importance_recipe(str(recipe), [IMP + "proxy_only=true"])
    assert str(e.value).startswith(f"{recipe}:6: importance.buckets must be an integer ≥ 1"), str(e.value)
