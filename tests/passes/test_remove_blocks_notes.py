"""compress.passes.remove_blocks: what a removal warns of: a budget that removes nothing (a count of none,
a fraction that rounds down, for some of the counts earlier removals may leave, explicit blocks of none),
buckets that change no choice, a removal's scan that says nothing of empty timestep buckets."""

import pytest

from compress.arch import get_adapter
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
from tests.conftest import tiny_flux, tiny_pixart
from tests.passes.test_remove_blocks import context, no_calibration, run


@pytest.mark.parametrize("criterion", ["proxy", "scan"])
def test_a_removal_s_scan_says_nothing_of_empty_timestep_buckets(criterion, tmp_path, capsys):
    """A removal's scan noted 'importance: 1 of the 3 timestep buckets hold no calibration input ...;
    their columns stay empty' in a recipe with no importance pass: its choice reads the scores over
    all inputs, and no column of it is shown, so there is nothing to say."""
    model = tiny_pixart()
    ctx = context(model, tmp_path)
    run(model, ctx, count=1, criterion=criterion, buckets=10)  # most of 10 buckets hold no input
    assert "buckets hold no" not in "".join(capsys.readouterr())
    assert len(ctx.report["remove_blocks"]["removed"]["blocks"]) == 1


@pytest.mark.parametrize("config, key, said", [
    (dict(fraction=0.1), "fraction", "remove_blocks.fraction 0.1 of {n} blocks rounds down to no block, so this "
                                     "pass changes nothing; the smallest fraction that removes one block is {f}"),
    (dict(count=0), "count", "remove_blocks.count removes no block, so this pass changes nothing"),
    (dict(fraction=0.0, iterative=True), "fraction", "remove_blocks.fraction removes no block, so this pass "
                                                     "changes nothing"),
])
def test_a_budget_that_removes_nothing_is_warned_and_scans_nothing(tmp_path, config, key, said):
    """fraction 0.1 of 6 blocks: plan showed budget 0, the run scanned and wrote a 100% copy, no word."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    n = sum(adapter.block_counts(model).values())
    step = RemoveBlocksPass(RemoveBlocksConfig(**config))
    step.check(model, adapter)
    f = {2: "0.5", 3: "0.34", 4: "0.25", 5: "0.2", 6: "0.17"}.get(n)
    assert step.notes(model, adapter) == [(key, said.format(n=n, f=f), ())]  # its value alone read
    ctx = context(model, tmp_path)
    ctx.calibration_inputs = no_calibration
    step.run(model, ctx)
    assert ctx.report["remove_blocks"]["removed"] == {g: [] for g in adapter.block_counts(model)}


def test_a_group_fraction_that_rounds_down_names_its_group_key(tmp_path):
    model = tiny_flux()
    counts = get_adapter(model).block_counts(model)
    step = RemoveBlocksPass(RemoveBlocksConfig(fraction={g: 0.01 for g in counts}))
    notes = step.notes(model, get_adapter(model))
    assert [k for k, *_ in notes] == [f"fraction.{g}" for g in counts] + ["fraction"], notes
    g = next(iter(counts))
    assert notes[0][1].startswith(f"remove_blocks.fraction.{g} 0.01 of {counts[g]} blocks of group '{g}' rounds "
                                  "down to no block"), notes
    some = RemoveBlocksPass(RemoveBlocksConfig(fraction={g: 0.01, **{h: 0.6 for h in counts if h != g}}))
    assert [k for k, *_ in some.notes(model, get_adapter(model))] == [f"fraction.{g}"]


SPREAD_2 = [{"double": 2, "single": 2}, {"double": 1, "single": 3}]  # after a bare count of 2 (double 2, single 4)


@pytest.mark.parametrize("fraction, possible, said", [
    ({"double": 0.4}, SPREAD_2, "fraction.double 0.4 of the 1–2 blocks of group 'double' that earlier removals may "
                                "leave (they pick theirs at run time) rounds down to no block however they go, so "
                                "this pass changes nothing"),
    ({"single": 0.4}, SPREAD_2, "fraction.single 0.4 of the 2–3 blocks of group 'single' that earlier removals may "
                                "leave (they pick theirs at run time) rounds down to no block where it has 2; the "
                                "smallest fraction that removes one block is 0.5"),
    (0.2, [{"double": 2, "single": 2}, {"double": 2, "single": 3}],
     "fraction 0.2 of the 4–5 blocks that earlier removals may leave (they pick theirs at run time) rounds down to "
     "no block where they are 4; the smallest fraction that removes one block is 0.25"),
])
def test_a_fraction_that_rounds_down_for_some_counts_the_run_may_find_says_which(fraction, possible, said):
    """toy Flux (double 2, single 4) less a bare count of 2, groups picked at run time: 'double' has 1
    or 2 blocks by then, 'single' 2 or 3. The warning took the fraction of every block (0.4 of 4
    'single' blocks is 1: no word, though the run takes none of 2); now of each count the run may
    find (`possible`: removed_blocks.possible_counts), saying for which it rounds down to none."""
    from compress.passes.remove_blocks_budget import removes_nothing

    config = RemoveBlocksConfig(fraction=fraction)
    assert [m for _, m, _ in removes_nothing(config, {"double": 2, "single": 4}, possible)] == [f"remove_blocks.{said}"]
    assert removes_nothing(config, possible[0], possible[:1]) == removes_nothing(config, possible[0])  # as before


def test_explicit_blocks_that_remove_nothing_are_warned_as_a_count_of_none_is(tmp_path):
    """blocks: {blocks: []} removed nothing with no word, while count: 0 warns (blocks: {}, which
    names no group, is refused: test_remove_blocks_config)."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    step = RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": []}))
    step.check(model, adapter)
    assert step.notes(model, adapter) == [("blocks", "remove_blocks.blocks removes no block, so this pass "
                                                     "changes nothing", ())]
    assert RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [0]})).notes(model, adapter) == []


def test_buckets_change_no_choice_and_are_warned_at_their_line(tmp_path, capsys):
    """remove_blocks' buckets were read only to split the scan's scores by timestep, and the choice reads
    each block's score over all inputs: 1 or 7 buckets removed the same blocks and wrote the same record,
    without a word. A value other than the default is warned at its line (plan and run: `notes`), and
    --resume lets it change (`result_free`), as nothing the pass writes depends on it."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner_resume import recipe_changes

    records = []
    for buckets in (1, 7):
        model = tiny_pixart()
        ctx = context(model, tmp_path)
        run(model, ctx, count=2, criterion="scan", iterative=True, buckets=buckets)
        records.append(ctx.report["remove_blocks"])
    assert records[0] == records[1]
    model, adapter = tiny_pixart(), get_adapter(tiny_pixart())
    said = {k: m for k, m, _ in RemoveBlocksPass(RemoveBlocksConfig(count=1, buckets=7)).notes(model, adapter)}
    assert said["buckets"].startswith("remove_blocks.buckets 7 changes nothing: the blocks are chosen by each "
                                      "block's score over all calibration inputs")
    for quiet in (dict(count=1), dict(count=1, buckets=3), dict(blocks={"blocks": [1]})):
        assert "buckets" not in [k for k, *_ in RemoveBlocksPass(RemoveBlocksConfig(**quiet)).notes(model, adapter)]
    text = ("model: pixart\nteacher: toy:pixart\ncalibration: {source: synthetic, num_prompts: 4, timesteps: 2, "
            "batch_size: 4, heldout: 4}\npasses:\n  - remove_blocks:\n      count: 1\n      buckets: B\n")
    capsys.readouterr()
    make_plan(parse_recipe(text.replace("B", "7"), "r.yaml"))
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning: r.yaml:7: remove_blocks.buckets 7 changes nothing") == 1, err
    make_plan(parse_recipe(text.replace("B", "3"), "r.yaml"))
    assert "buckets" not in capsys.readouterr().err
    before, now = (parse_recipe(text.replace("B", b), "r.yaml") for b in "73")
    assert recipe_changes(before.raw, now.raw, [RemoveBlocksPass(now.passes[0].config)]) == []


def test_a_fraction_per_group_after_a_spread_removal_is_warned_of_the_blocks_the_run_may_find(capsys):
    """toy Flux (double 2, single 4): remove_blocks {count: 2} leaves 'double' 1 or 2 blocks and
    'single' 2 or 3. {fraction: {single: 0.4}} was taken of all 4 'single' blocks (1: no warning),
    though the run takes none where 'single' has 2; 0.4 of 'double' was said to round down 'of 2'."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    head = "model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n"
    make_plan(parse_recipe(head + "  - remove_blocks: {fraction: {single: 0.4, double: 0.4}}\n", "r.yaml"))
    said = " ".join(capsys.readouterr().err.split())
    assert ("warning: r.yaml:5: remove_blocks.fraction.single 0.4 of the 2–3 blocks of group 'single' that earlier "
            "removals may leave (they pick theirs at run time) rounds down to no block where it has 2") in said, said
    assert "fraction.double 0.4 of the 1–2 blocks of group 'double'" in said and "of 2 blocks" not in said, said
