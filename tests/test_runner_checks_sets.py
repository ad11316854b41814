"""compress.runner_checks: an error or note of a pass's check, at a line of the file, names the --sets
of the keys that check read (errors.BadValue.reads), not every --set of the pass: a --set of another
key did not cause it."""

import pytest

from compress.errors import UserError
from tests.test_runner_checks import _check  # a tiny Flux checked as plan and run check it

RANKS = "  - svd:\n      targets: [attention, mlp]\n      ratio: 0.5\n      ranks: {attention: 500}\n"  # line 8
WARMUP = "  - distill:\n      steps: 5\n      lr: 0.0005\n"  # the pass at line 5, steps at 6


@pytest.mark.parametrize("sets, where", [
    (["passes.0.svd.ratio=0.3"], "r.yaml:8: "),  # it said 'r.yaml:8 (with --set passes.0.svd.ratio=0.3)'
    (["passes.0.svd.multiple=4"], "r.yaml:8: "),
    (["passes.0.svd.targets=[attention]"], "r.yaml:8 (with --set passes.0.svd.targets=[attention]): "),
    (["passes.0.svd.ignore=[mlp]", "passes.0.svd.ratio=0.3"], "r.yaml:8 (with --set passes.0.svd.ignore=[mlp]): "),
])
def test_a_rank_out_of_range_names_the_sets_of_the_layers_it_names_alone(sets, where):
    """svd.ranks' range check reads which targets the pattern names (targets, ignore), not ratio nor multiple."""
    with pytest.raises(UserError) as e:
        _check(RANKS, sets)
    assert str(e.value).startswith(where + "svd.ranks: rank 500 for 'attention' is outside 1..16"), str(e.value)


@pytest.mark.parametrize("sets, where", [
    (["passes.0.distill.lr=0.001"], "r.yaml:5: "),  # it said 'r.yaml:5 (with --set passes.0.distill.lr=0.001)'
    (["passes.0.distill.steps=3"], "r.yaml:5 (with --set passes.0.distill.steps=3): "),
    (["passes.0.distill.warmup_steps=30", "passes.0.distill.lr=0.001"], "r.yaml (--set passes.0.distill.warmup_steps=30): "),
])
def test_the_warmup_note_names_the_sets_of_steps_and_warmup_steps_alone(capsys, sets, where):
    """The note that warmup_steps is not below steps reads those two keys: a --set of lr is not named."""
    _check(WARMUP, sets)
    said = " ".join(capsys.readouterr().err.split())
    assert f"warning: {where}distill.warmup_steps (" in said, said



# the svd pass's own notes (svd_notes, Pass.notes' third item) and remove_blocks': a --set of a key the
# note did not read is not named at its line (each was before), a --set of one it read still is
UNCHANGED = "  - svd:\n      targets: [attention]\n      ratio: 1.0\n"  # ratio at line 7
DENSE_RANKS = "  - svd:\n      targets: [attention, mlp]\n      multiple: 1\n      ranks: {attention: 8}\n"  # line 8
BUCKETS = "  - remove_blocks:\n      count: 1\n      criterion: proxy\n      buckets: 5\n"  # buckets at line 8
KEEPS = "svd.ratio 1.0 keeps every parameter, so every one of its 25 targets stays dense"
AT_OR_ABOVE = "svd.ranks: rank 8 for 'attention' is at or above the break-even rank"


@pytest.mark.parametrize("text, sets, where, said", [
    (UNCHANGED, ["passes.0.svd.multiple=8"], "r.yaml:7: ", KEEPS),  # 'r.yaml:7 (with --set passes.0.svd.multiple=8)'
    (UNCHANGED, ["passes.0.svd.fisher=none"], "r.yaml:7: ", KEEPS),
    (UNCHANGED, ["passes.0.svd.allocation=uniform", "passes.0.svd.fisher=none"],
     "r.yaml:7 (with --set passes.0.svd.allocation=uniform): ", KEEPS),
    (DENSE_RANKS, ["passes.0.svd.ratio=0.3"], "r.yaml:8: ", AT_OR_ABOVE),
    (DENSE_RANKS, ["passes.0.svd.ignore=[mlp]", "passes.0.svd.ratio=0.3"],  # every target's rank explicit
     "r.yaml:8 (with --set passes.0.svd.ignore=[mlp]): ", "svd.ranks are at or above the rank where"),
    (BUCKETS, ["passes.0.remove_blocks.iterative=true"], "r.yaml:8: ", "remove_blocks.buckets 5 changes nothing"),
])
def test_a_pass_note_names_the_sets_of_the_keys_it_read_alone(capsys, text, sets, where, said):
    """The ratio note (every target dense) reads targets, ignore, allocation, ratio and ranks, not
    multiple (unrounded ranks keep every parameter too) nor fisher; the break-even notes read which
    layers each pattern names, not ratio; idle buckets read buckets alone. Each named every --set of
    its pass."""
    _check(text, sets)
    warned = " ".join(capsys.readouterr().err.split())
    assert f"warning: {where}{said}" in warned, warned
